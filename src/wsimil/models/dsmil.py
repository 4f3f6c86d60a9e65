"""DSMIL: dual-stream MIL (Li, Li & Eliceiri, CVPR 2021; repository ``binli123/dsmil-wsi``).

Followed: ``dsmil.py`` (FCLayer, BClassifier, MILNet) and ``train_tcga.py`` at the repository's HEAD (2024
pipeline, the code behind the README's "Expected performance" tables), binary Camelyon16 run as the README
says: ``--num_classes=1``. With C = 1 class and d-dimensional features h_n of one bag:

* stream 1, instance classifier: c_n = W_c h_n + b_c (``FCLayer``, Linear(d, 1)); its max over the bag is
  the max-pooling prediction, trained by its own BCE.
* critical instance m = argmax_n c_n (``BClassifier.forward``: ``torch.sort(c, 0, descending=True)``,
  first row); the selection carries no gradient into the instance classifier.
* queries q(h) = Tanh(Linear(128,128)(ReLU(Linear(d,128) h))) (``nonlinear=True``, HEAD's
  ``--non_linearity 1``); attention A_n = softmax_n(<q(h_n), q(h_m)> / sqrt(128)) over the bag's instances.
* values v(h) = h (``passing_v=False``: ``nn.Identity``; the ``dropout_v`` Dropout lives only in the
  ``passing_v=True`` branch, so the published run has no dropout at all).
* bag embedding b = sum_n A_n v(h_n) (d,), bag logit = ``Conv1d(C, C, kernel_size=d)`` over b. With C = 1
  that convolution is exactly an affine map w . b + w0: we hold it as ``nn.Linear(d, 1)`` (same weight
  values, viewed (1, d) instead of (1, 1, d)).
* loss = 0.5 BCE(bag logit) + 0.5 BCE(max_n c_n) (``train_tcga.py`` ``train``).
* initialisation: orthogonal weights and zero biases on every Linear / Conv1d (``train_tcga.py``
  ``apply_sparse_init``, the README's "stable model initialization" of 2024).

The slide score is sigmoid(bag logit) (HEAD ``--average`` defaults to False); ``average=True`` scores
0.5 sigmoid(bag) + 0.5 sigmoid(max instance) as the 2022 code did. The per-instance score is the instance
classifier logit c_n; the official colour maps draw the attention A instead, which is returned in
``extras["attention"]`` (it sums to 1 within a bag, so it is not comparable across slides).

The packed batch replaces the official per-slide loop: the critical instance per bag by ``segment_argmax``,
the softmax per bag by ``segment_softmax``, b per bag by ``segment_weighted_sum``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from wsimil.models.base import MILBatch, MILModel, MILOutput, register_method
from wsimil.models.layers import Dropout
from wsimil.models.ops import segment_argmax, segment_max, segment_softmax, segment_weighted_sum

VALUE_NETWORKS = ("identity", "linear_relu", "linear")
INITS = ("orthogonal", "pytorch")


class DSMIL(MILModel):
    """Dual-stream MIL for one positive class (binary task).

    Shapes: ``batch.x`` (N, d), ``batch.bag_index`` (N,) -> ``bag_logits`` (B,), ``instance_scores`` (N,)
    (instance-classifier logits); ``extras``: ``attention`` (N,) (sums to 1 per bag), ``bag_stream`` (B,)
    (the aggregator's logit), ``max_instance`` (B,) (max instance logit per bag), ``critical`` (B,) long
    (index into N of each bag's critical instance).
    """

    name = "dsmil"

    def __init__(
        self,
        *,
        in_dim: int,
        query_dim: int = 128,
        nonlinear: bool = True,
        values: str = "identity",
        dropout_v: float = 0.0,
        init: str = "orthogonal",
        average: bool = False,
    ):
        super().__init__()
        if values not in VALUE_NETWORKS:
            raise ValueError(f"dsmil: values must be one of {VALUE_NETWORKS}, got {values!r}")
        if init not in INITS:
            raise ValueError(f"dsmil: init must be one of {INITS}, got {init!r}")
        # dsmil.py FCLayer: the instance classifier, Linear(d, C) with C = 1.
        self.instance_classifier = nn.Linear(in_dim, 1)
        # dsmil.py BClassifier.__init__: q = Linear-ReLU-Linear-Tanh (nonlinear) or one Linear.
        if nonlinear:
            self.q = nn.Sequential(
                nn.Linear(in_dim, query_dim), nn.ReLU(), nn.Linear(query_dim, query_dim), nn.Tanh()
            )
        else:
            self.q = nn.Linear(in_dim, query_dim)
        # v: Identity (passing_v=False, HEAD default), Dropout-Linear-ReLU (passing_v=True), or
        # Dropout-Linear (the 2020-11 .. 2022-02 code, CVPR-era).
        if values == "identity":
            self.v: nn.Module = nn.Identity()
        elif values == "linear_relu":
            self.v = nn.Sequential(Dropout(dropout_v), nn.Linear(in_dim, in_dim), nn.ReLU())
        else:
            self.v = nn.Sequential(Dropout(dropout_v), nn.Linear(in_dim, in_dim))
        # BClassifier.fcc = Conv1d(C, C, kernel_size=d) over the (1, C, d) bag embedding; C = 1 -> affine map.
        self.fcc = nn.Linear(in_dim, 1)
        self.query_dim = query_dim
        self.average = average
        if init == "orthogonal":
            self.apply(_orthogonal_init)

    def forward(self, batch: MILBatch) -> MILOutput:
        h, idx, n_bags = batch.x, batch.bag_index, batch.n_bags
        c = self.instance_classifier(h).squeeze(-1)  # (N,) instance logits, stream 1
        m = segment_argmax(c, idx, n_bags)  # (B,) critical instance per bag (no gradient through the choice)
        q = self.q(h)  # (N, 128)
        # A_n = softmax_n(q_n . q_m / sqrt(128)) within each bag (BClassifier.forward; paper Eq. 4).
        sim = (q * q[m][idx]).sum(-1) / math.sqrt(self.query_dim)  # (N,)
        a = segment_softmax(sim, idx, n_bags)  # (N,)
        b = segment_weighted_sum(a, self.v(h), idx, n_bags)  # (B, d) = A^T V per bag
        bag = self.fcc(b).squeeze(-1)  # (B,) aggregator logit, stream 2
        max_c = segment_max(c, idx, n_bags)  # (B,) max-pooling logit
        if self.average:  # train_tcga.py test(): 0.5 sigmoid(max) + 0.5 sigmoid(bag) as the slide score
            p = 0.5 * torch.sigmoid(max_c) + 0.5 * torch.sigmoid(bag)
            slide = torch.logit(p, eps=1e-7)
        else:
            slide = bag
        extras = {"attention": a, "bag_stream": bag, "max_instance": max_c, "critical": m}
        return MILOutput(bag_logits=slide, instance_scores=c, extras=extras)

    instance_score_name = "instance logit"

    def score_maps(self, out: MILOutput, batch: MILBatch) -> dict[str, Tensor]:
        """dsmil-wsi's heatmaps colour the patches by the attention to the critical instance."""
        return {"attention": out.extras["attention"]}

    def loss(self, out: MILOutput, batch: MILBatch) -> dict[str, Tensor]:
        """0.5 BCE(aggregator logit) + 0.5 BCE(max instance logit) (``train_tcga.py`` ``train``).

        ``bce`` is the BCE of the slide score (``bag_logits``), the data term compared across methods.
        """
        bce = nn.functional.binary_cross_entropy_with_logits
        bag_bce = bce(out.extras["bag_stream"], batch.labels)
        max_bce = bce(out.extras["max_instance"], batch.labels)
        slide_bce = bag_bce if not self.average else bce(out.bag_logits, batch.labels)
        return {"loss": 0.5 * bag_bce + 0.5 * max_bce, "bce": slide_bce, "bag_bce": bag_bce, "max_bce": max_bce}


def _orthogonal_init(module: nn.Module) -> None:
    """``train_tcga.py`` ``apply_sparse_init``: orthogonal weights, zero biases (Linear, Conv1d).

    A (1, 1, d) Conv1d weight is flattened to (1, d) by ``orthogonal_``, so our ``fcc`` Linear(d, 1) gets the
    same distribution (a random unit vector).
    """
    if isinstance(module, (nn.Linear, nn.Conv1d)):
        nn.init.orthogonal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


register_method(
    "dsmil",
    family="attention",
    defaults=dict(
        # train_tcga.py (HEAD) main(): Adam lr 1e-4, betas (0.5, 0.9), weight decay 1e-3, CosineAnnealingLR
        # over num_epochs = 50, one slide per step, no gradient clipping; dropout_node 0, dropout_patch 0.
        optimizer="adam", lr=1e-4, weight_decay=1e-3, momentum=0.0, nesterov=False, betas=(0.5, 0.9),
        lr_decay=0.0, epochs=50, bags_per_batch=1, grad_clip=None, scheduler="cosine", selection="val_auc",
        model=dict(query_dim=128, nonlinear=True, values="identity", dropout_v=0.0, init="orthogonal",
                   average=False),
    ),  # fmt: skip
    description="Dual-stream MIL: max-instance classifier + attention to the critical instance, 0.5/0.5 loss.",
    source="Li et al. CVPR 2021, binli123/dsmil-wsi dsmil.py (BClassifier, FCLayer) and train_tcga.py (HEAD)",
)(DSMIL)
