"""CLAM (Lu et al., Nature Biomedical Engineering 2021): attention MIL with instance-level clustering.

Follows ``mahmoodlab/CLAM`` ``models/model_clam.py`` (CLAM_SB, CLAM_MB) and ``utils/core_utils.py``
(``train_loop_clam``), the "small" size: Linear(d, 512)-ReLU-Dropout, gated attention with hidden 256
(dropout 0.25 on both branches when dropout is on), softmax of the attention within the bag, attention
pooling, a two-class bag head. Instance clustering: for the bag's true class c, the k most and the k least
attended instances (class c's attention branch for MB) get pseudo-labels 1 and 0 for class c's instance
classifier Linear(512, 2) (``inst_eval``); with ``subtyping`` the other classes' classifiers also learn
label 0 for their own top-k (``inst_eval_out``). Loss = bag_weight * CE(bag) + (1 - bag_weight) * instance
loss, the instance loss the smooth top-1 SVM of Berrada et al. 2018 (``topk.svm.SmoothTop1SVM``, what the
README's C16 command uses) or cross-entropy.

Binary head: the two-class logits ``l`` are kept (one classifier per class for MB) and the bag logit is
``l[:, 1] - l[:, 0]``; BCE-with-logits on that difference equals the two-class CE exactly.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsimil.models.abmil import GatedAttention
from wsimil.models.base import MILBatch, MILModel, MILOutput, register_method
from wsimil.models.layers import Dropout
from wsimil.models.ops import segment_softmax, segment_weighted_sum

INSTANCE_LOSSES = ("svm", "ce")


# --------------------------------------------------------------------------------------------------
# Smooth top-1 SVM (Berrada, Zisserman & Kumar, ICLR 2018; ``oval-group/smooth-topk`` ``topk/svm.py``,
# ``topk/functional.py``), the instance loss CLAM's README trains with.


def smooth_top1_svm(scores: Tensor, target: Tensor, *, alpha: float = 1.0, tau: float = 1.0,
                    thresh: float = 1e3) -> Tensor:
    """Mean smooth top-1 SVM loss of ``scores`` (n, C) against ``target`` (n,) long.

    Per sample: ``tau * log sum_j exp((s_j + alpha [j != y] - s_y) / tau)``. As ``SmoothTop1SVM`` does, a
    sample whose two largest scores are ``tau * log(thresh)`` apart or more takes the hard (non-smooth)
    value ``max_j (s_j + alpha [j != y]) - s_y`` instead. For two classes the smooth value is
    ``tau * softplus((alpha - margin) / tau)`` with ``margin = s_y - s_other``, the hard one ``max(0, alpha - margin)``.
    """
    if scores.dim() != 2 or scores.shape[1] < 2 or scores.shape[0] != target.shape[0]:
        raise ValueError(f"smooth_top1_svm: scores (n, C >= 2) and target (n,) expected, got {tuple(scores.shape)} "
                         f"and {tuple(target.shape)}")
    if scores.shape[0] == 0:
        return scores.sum() * 0.0
    target, scores = target.long(), scores.float()
    off_target = torch.ones_like(scores)
    off_target.scatter_(1, target[:, None], 0.0)  # [j != y]
    augmented = scores + alpha * off_target - scores.gather(1, target[:, None])  # (n, C), 0 at y
    smooth = tau * torch.logsumexp(augmented / tau, dim=1)
    hard = augmented.max(dim=1).values
    top2 = scores.detach().topk(2, dim=1).values
    use_hard = (top2[:, 0] - top2[:, 1]) >= tau * math.log(thresh)
    return torch.where(use_hard, hard, smooth).mean()


def top_bottom_pseudo_labels(attention: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """CLAM's ``inst_eval`` selection on one bag's attention scores (n,).

    Returns (indices (2k',), pseudo-labels (2k',) long): the k' most attended instances with label 1 then the
    k' least attended with label 0, k' = min(k, n // 2). CLAM takes k' = k, which raises in ``torch.topk`` for
    n < k and labels the same instances 1 and 0 for k <= n < 2k; the cap keeps the two sets disjoint.
    """
    n = attention.shape[0]
    kk = min(int(k), n // 2)
    top = torch.topk(attention, kk).indices
    bottom = torch.topk(-attention, kk).indices
    labels = torch.cat([torch.ones(kk, dtype=torch.long), torch.zeros(kk, dtype=torch.long)]).to(attention.device)
    return torch.cat([top, bottom]), labels


class _ClassAttention(GatedAttention):
    """CLAM-MB's gated attention with one score per class: (N, L) -> (N, n_classes) (``Attn_Net_Gated``
    with ``n_classes`` outputs: the tanh/sigmoid branches are shared, ``attention_c`` has one row per class)."""

    def __init__(self, in_dim: int, hidden: int, dropout: float, n_classes: int):
        super().__init__(in_dim, hidden, dropout)
        self.c = nn.Linear(hidden, n_classes)

    def forward(self, h: Tensor) -> Tensor:
        return self.c(self.a(h) * self.b(h))


class CLAM(MILModel):
    """CLAM for the binary task; subclasses ``CLAMSB`` (one attention branch) and ``CLAMMB`` (one per class).

    ``forward`` extras: ``features`` (N, 512) the instance embeddings h, ``attention_raw`` (N,) for SB or
    (N, 2) for MB (pre-softmax, CLAM's ``A_raw``), ``class_logits`` (B, 2). ``instance_scores`` is ``A_raw``
    (MB: the tumour-class branch), what CLAM's heatmaps show.
    """

    name = "clam"
    multi_branch: ClassVar[bool] = False

    def __init__(self, *, in_dim: int, hidden: int = 512, attention_hidden: int = 256,
                 dropout: float = 0.25, k_sample: int = 8, bag_weight: float = 0.7, instance_loss: str = "svm",
                 subtyping: bool = False, xavier_init: bool = True):
        super().__init__()
        if instance_loss not in INSTANCE_LOSSES:
            raise ValueError(f"CLAM instance_loss must be one of {INSTANCE_LOSSES}, got {instance_loss!r}")
        if not 0.0 <= bag_weight <= 1.0:
            raise ValueError(f"CLAM bag_weight must lie in [0, 1], got {bag_weight}")
        self.n_classes = 2
        self.k_sample, self.bag_weight = int(k_sample), float(bag_weight)
        self.instance_loss, self.subtyping = instance_loss, bool(subtyping)
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), Dropout(dropout))
        # model_clam.py: Attn_Net_Gated appends Dropout(0.25) to both branches whenever dropout is on.
        att_dropout = 0.25 if dropout > 0 else 0.0
        if self.multi_branch:
            self.attention = _ClassAttention(hidden, attention_hidden, att_dropout, self.n_classes)
            # CLAM_MB: an independent Linear(512, 1) per class on that class's pooled feature.
            self.classifiers = nn.ModuleList([nn.Linear(hidden, 1) for _ in range(self.n_classes)])
        else:
            self.attention = GatedAttention(hidden, attention_hidden, att_dropout)
            self.classifiers = nn.Linear(hidden, self.n_classes)
        self.instance_classifiers = nn.ModuleList([nn.Linear(hidden, 2) for _ in range(self.n_classes)])
        if xavier_init:  # utils.utils.initialize_weights, called by CLAM_SB/MB until April 2024
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.xavier_normal_(m.weight)
                    nn.init.zeros_(m.bias)

    def forward(self, batch: MILBatch) -> MILOutput:
        idx, nb = batch.bag_index, batch.n_bags
        h = self.fc(batch.x)  # (N, 512)
        a_raw = self.attention(h)  # SB (N,), MB (N, 2)
        if self.multi_branch:
            logits = []
            for c in range(self.n_classes):  # class c: its own softmax, pooled feature and classifier
                a_c = segment_softmax(a_raw[:, c], idx, nb)
                m_c = segment_weighted_sum(a_c, h, idx, nb)  # (B, 512)
                logits.append(self.classifiers[c](m_c).squeeze(-1))
            class_logits = torch.stack(logits, dim=1)  # (B, 2)
            scores = a_raw[:, 1]
        else:
            a = segment_softmax(a_raw, idx, nb)
            class_logits = self.classifiers(segment_weighted_sum(a, h, idx, nb))  # (B, 2)
            scores = a_raw
        return MILOutput(
            bag_logits=class_logits[:, 1] - class_logits[:, 0],
            instance_scores=scores,
            extras={"features": h, "attention_raw": a_raw, "class_logits": class_logits},
        )

    def _instance_criterion(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.instance_loss == "svm":
            return smooth_top1_svm(logits, target)
        return F.cross_entropy(logits, target)

    def _bag_instance_loss(self, h: Tensor, a_raw: Tensor, label: int) -> Tensor:
        """CLAM's ``total_inst_loss`` for one bag: h (n, 512), a_raw (n,) or (n, 2)."""
        total = h.new_zeros(())
        for c in range(self.n_classes):
            att = a_raw[:, c] if self.multi_branch else a_raw
            if c == label:  # inst_eval: top-k -> 1, bottom-k -> 0 for the true class's classifier
                sel, target = top_bottom_pseudo_labels(att, self.k_sample)
            elif self.subtyping:  # inst_eval_out: the other classes' top-k -> 0
                sel = torch.topk(att, min(self.k_sample, att.shape[0])).indices
                target = torch.zeros_like(sel)
            else:
                continue
            if sel.numel():
                total = total + self._instance_criterion(self.instance_classifiers[c](h[sel]), target)
        return total / self.n_classes if self.subtyping else total

    def loss(self, out: MILOutput, batch: MILBatch) -> dict[str, Tensor]:
        """Mean over the batch's bags of CLAM's per-slide loss bag_weight * CE + (1 - bag_weight) * instance.

        With one bag per step (the published setting) this is ``train_loop_clam``'s ``total_loss``. A bag of
        fewer than 2 instances has no top/bottom pair and contributes no instance term.
        """
        labels = batch.labels
        ce = F.binary_cross_entropy_with_logits(out.bag_logits, labels)  # = 2-class CE on class_logits
        h, a_raw = out.extras["features"], out.extras["attention_raw"]
        order = torch.argsort(batch.bag_index, stable=True)
        counts = torch.bincount(batch.bag_index, minlength=batch.n_bags).tolist()
        per_bag = []
        for b, rows in enumerate(torch.split(order, counts)):  # CLAM takes top-k per slide: loop the bags
            per_bag.append(self._bag_instance_loss(h[rows], a_raw[rows], int(labels[b].item())))
        inst = torch.stack(per_bag).mean() if per_bag else ce * 0.0
        total = self.bag_weight * ce + (1.0 - self.bag_weight) * inst
        return {"loss": total, "bce": ce, "instance": inst}


_CLAM_DEFAULTS = dict(
    # README (task_1_tumor_vs_normal): --drop_out 0.25 --early_stopping --lr 2e-4 --bag_loss ce --inst_loss svm;
    # main.py defaults: Adam, --reg 1e-5, --max_epochs 200, --bag_weight 0.7, --B 8; one slide per step.
    optimizer="adam", lr=2e-4, weight_decay=1e-5, momentum=0.0, nesterov=False, betas=(0.9, 0.999),
    lr_decay=0.0, epochs=200, bags_per_batch=1, grad_clip=None, scheduler=None,
    selection="val_auc",  # the project's common protocol; CLAM keeps the lowest-val-loss checkpoint
    # core_utils.EarlyStopping(patience=20, stop_epoch=50): stops once 20 epochs without a lower bag val loss
    # and epoch > 50 (0-based), i.e. after at least 52 epochs -> the loop's "epoch + 1 >= min_epochs".
    early_stopping={"monitor": "val_loss", "patience": 20, "min_epochs": 52},
)
_CLAM_MODEL = dict(hidden=512, attention_hidden=256, dropout=0.25, k_sample=8, bag_weight=0.7,
                   instance_loss="svm", subtyping=False, xavier_init=True)


class CLAMSB(CLAM):
    """CLAM_SB: one attention branch, classifier Linear(512, 2) on the pooled feature."""

    name = "clam_sb"
    multi_branch = False
    instance_score_name = "A_raw"


class CLAMMB(CLAM):
    """CLAM_MB: one attention branch and one Linear(512, 1) bag classifier per class."""

    name = "clam_mb"
    multi_branch = True
    instance_score_name = "A_raw, tumour class"

    def score_maps(self, out: MILOutput, batch: MILBatch) -> dict[str, Tensor]:
        """CLAM's create_heatmaps draws ``A_raw`` of the predicted class (per slide), not always the tumour's."""
        pred = out.extras["class_logits"].argmax(dim=1)  # (B,)
        a_raw = out.extras["attention_raw"]  # (N, 2)
        return {"A_raw, predicted class": a_raw.gather(1, pred[batch.bag_index].unsqueeze(1)).squeeze(1)}


register_method(
    "clam_sb",
    family="attention",
    defaults=dict(**_CLAM_DEFAULTS, model=dict(_CLAM_MODEL)),
    description="CLAM single-branch: gated attention MIL with top/bottom-8 instance clustering (smooth SVM).",
    source="Lu et al. Nat. Biomed. Eng. 2021, mahmoodlab/CLAM models/model_clam.py, utils/core_utils.py",
)(CLAMSB)

register_method(
    "clam_mb",
    family="attention",
    defaults=dict(**_CLAM_DEFAULTS, model=dict(_CLAM_MODEL)),
    description="CLAM multi-branch: one attention branch and bag classifier per class, instance clustering.",
    source="Lu et al. Nat. Biomed. Eng. 2021, mahmoodlab/CLAM models/model_clam.py, utils/core_utils.py",
)(CLAMMB)
