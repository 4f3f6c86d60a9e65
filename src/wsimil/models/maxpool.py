"""Instance-level pooling MIL: mi-Net (Wang et al. 2018) and its mini-batch and mean-pooling variants.

Follows ``yanyongluan/MINNs`` ``mi_Net.py``: Dense 256-128-64 ReLU, Dropout 0.5, a Dense(1) instance
score with a sigmoid, pooling of the instance *probabilities* per bag (``Score_pooling`` in
``mil_nets/layer.py``: sigmoid first, then max or mean), BCE on the bag probability. We return the bag's
logit and train with BCE-with-logits (numerically stable, the same loss): for max-pooling the max of logits is
the logit of the max probability (sigmoid is monotone); for mean-pooling ('ave') the bag logit is
logit(mean_k sigmoid(l_k)) = logsumexp_k log sigmoid(l_k) - logsumexp_k log sigmoid(-l_k), computed in log
space.
"""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import nn

from wsimil.models.base import MILBatch, MILModel, MILOutput, register_method
from wsimil.models.layers import Dropout
from wsimil.models.ops import segment_logsumexp, segment_max


class InstancePoolingMIL(MILModel):
    """Instance MLP -> instance logit (N,) -> per bag the max, or the mean of the instance probabilities ->
    bag logit (B,)."""

    name = "instance-pooling"
    instance_score_name = "instance logit"

    def __init__(self, *, in_dim: int, hidden: Sequence[int] = (256, 128, 64), dropout: float = 0.5, pooling: str = "max",
                 init: str = "torch"):
        super().__init__()
        if init not in ("torch", "keras"):
            raise ValueError(f"init must be 'torch' or 'keras', got {init!r}")
        if pooling not in ("max", "mean"):
            raise ValueError(f"pooling must be 'max' or 'mean', got {pooling!r}")
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        layers.append(Dropout(dropout))  # mi-Net: a single dropout after the last hidden layer
        self.net = nn.Sequential(*layers)
        self.score = nn.Linear(d, 1)  # MINNs Score_pooling: Dense(1) per instance
        self.pooling = pooling
        if init == "keras":  # MINNs' Dense layers: Keras defaults, glorot_uniform kernels and zero biases
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.zeros_(m.bias)

    def forward(self, batch: MILBatch) -> MILOutput:
        logits = self.score(self.net(batch.x)).squeeze(-1)  # (N,)
        if self.pooling == "max":
            bag = segment_max(logits, batch.bag_index, batch.n_bags)
        else:  # logit(mean of sigmoids): the n of log(mean) cancels in the difference
            lp = logits.float()
            bag = (segment_logsumexp(F.logsigmoid(lp), batch.bag_index, batch.n_bags)
                   - segment_logsumexp(F.logsigmoid(-lp), batch.bag_index, batch.n_bags))
        return MILOutput(bag_logits=bag, instance_scores=logits)


_MINET_SOURCE = "Wang et al. 2018, yanyongluan/MINNs mi_Net.py"

def _minibatch_defaults(pooling: str) -> dict:
    """Mini-batches of bags with Adam: the shared loop's setting for the instance-pooling baselines."""
    return dict(
        optimizer="adam", lr=1e-4, weight_decay=1e-4, momentum=0.0, nesterov=False, betas=(0.9, 0.999),
        lr_decay=0.0, epochs=100, bags_per_batch=8, grad_clip=None, scheduler=None, selection="val_auc",
        model=dict(hidden=[256, 128, 64], dropout=0.5, pooling=pooling),
    )


register_method(
    "maxpool",
    family="max-pooling",
    defaults=_minibatch_defaults("max"),
    description="mi-Net's instance network with max-pooling of instance logits, trained on mini-batches of bags "
    "with Adam (the plain max-pooling baseline; FocusMIL without its variational encoder and with mi-Net's net).",
    source=_MINET_SOURCE,
)(InstancePoolingMIL)

register_method(
    "minet",
    family="max-pooling",
    defaults=dict(
        # MINNs: SGD(lr=5e-4, decay=1e-4, momentum=0.9, nesterov=True), l2(5e-3) on kernels, 50 epochs,
        # one bag per batch. Keras l2(λ) adds λ·||w||² to the loss, i.e. weight decay 2λ in SGD terms.
        optimizer="sgd", lr=5e-4, weight_decay=1e-2, momentum=0.9, nesterov=True, betas=(0.9, 0.999),
        lr_decay=1e-4, epochs=50, bags_per_batch=1, grad_clip=None, scheduler=None, selection="val_auc",
        model=dict(hidden=[256, 128, 64], dropout=0.5, pooling="max", init="keras"),
    ),
    description="mi-Net as published: one bag per step, SGD with Nesterov momentum, max-pooling of instance scores.",
    source=_MINET_SOURCE,
)(InstancePoolingMIL)

register_method(
    "meanpool",
    family="max-pooling",
    defaults=_minibatch_defaults("mean"),
    description="mi-Net's network with mean-pooling of the instance probabilities (MINNs pooling_mode='ave').",
    source=_MINET_SOURCE,
)(InstancePoolingMIL)
