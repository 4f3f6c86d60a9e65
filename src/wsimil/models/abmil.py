"""Gated attention MIL (Ilse et al. 2018), built on WSI features as CLAM builds it.

``AMLab-Amsterdam/AttentionDeepMIL`` ``model.py`` (GatedAttention): a_k = softmax_k(w^T (tanh(V h_k) *
sigmoid(U h_k))), z = sum_k a_k h_k, linear classifier. On WSI features we follow CLAM
(``models/model_clam.py``): Linear(d, 512)-ReLU-Dropout, gated attention with hidden 256 and attention
dropout 0.25, Linear(512, 1).
"""

from __future__ import annotations

from torch import nn

from wsimil.models.base import MILBatch, MILModel, MILOutput, register_method
from wsimil.models.layers import Dropout
from wsimil.models.ops import segment_softmax, segment_weighted_sum


class GatedAttention(nn.Module):
    """Gated attention score per instance: (N, L) -> (N,) (pre-softmax, CLAM's ``A_raw``)."""

    def __init__(self, in_dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.a = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), Dropout(dropout))
        self.b = nn.Sequential(nn.Linear(in_dim, hidden), nn.Sigmoid(), Dropout(dropout))
        self.c = nn.Linear(hidden, 1)

    def forward(self, h):
        return self.c(self.a(h) * self.b(h)).squeeze(-1)


class ABMIL(MILModel):
    name = "abmil"
    instance_score_name = "attention score (pre-softmax)"

    def __init__(self, *, in_dim: int, hidden: int = 512, attention_hidden: int = 256, dropout: float = 0.25):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), Dropout(dropout))
        self.attention = GatedAttention(hidden, attention_hidden, dropout)
        self.classifier = nn.Linear(hidden, 1)

    def forward(self, batch: MILBatch) -> MILOutput:
        h = self.fc(batch.x)  # (N, 512)
        scores = self.attention(h)  # (N,) raw attention, the heatmap score
        a = segment_softmax(scores, batch.bag_index, batch.n_bags)  # (N,), sums to 1 per bag
        z = segment_weighted_sum(a, h, batch.bag_index, batch.n_bags)  # (B, 512) sum_k a_k h_k
        return MILOutput(bag_logits=self.classifier(z).squeeze(-1), instance_scores=scores, extras={"attention": a})


register_method(
    "abmil",
    family="attention",
    defaults=dict(
        # CLAM's training of its attention networks on WSI features (main.py: Adam --lr 2e-4, --reg 1e-5,
        # --max_epochs 200, dropout 0.25), one slide per step as every official attention-MIL loop.
        # AttentionDeepMIL's main.py (20 epochs, lr 5e-4, wd 1e-4) trains MNIST bags, not WSI features.
        optimizer="adam", lr=2e-4, weight_decay=1e-5, momentum=0.0, nesterov=False, betas=(0.9, 0.999),
        lr_decay=0.0, epochs=200, bags_per_batch=1, grad_clip=None, scheduler=None, selection="val_auc",
        model=dict(hidden=512, attention_hidden=256, dropout=0.25),
    ),
    description="Gated attention MIL (Ilse et al. 2018) in CLAM's WSI configuration.",
    source="Ilse et al. ICML 2018, AMLab-Amsterdam/AttentionDeepMIL model.py; mahmoodlab/CLAM model_clam.py",
)(ABMIL)
