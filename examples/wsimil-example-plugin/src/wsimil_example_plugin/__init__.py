"""An example wsimil method from another package: mixed pooling of instance logits.

Each instance x (D,) -> an MLP -> one logit; the bag logit is alpha * max + (1 - alpha) * mean over the bag's
instances. Registered with ``wsimil.register_method`` when this module is imported, which wsimil does for the
entry point ``example_mixpool`` in the group ``wsimil.methods`` (pyproject.toml). Use it in a config as
``training.methods: [example_mixpool, ...]``, or without installing as ``wsimil_example_plugin:MixPool`` with
this folder's ``src`` on PYTHONPATH.
"""

from __future__ import annotations

import torch
from torch import nn

from wsimil import MILBatch, MILModel, MILOutput, register_method


def _segment_mean_max(logits: torch.Tensor, bag_index: torch.Tensor, n_bags: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and max of the instance logits (N,) of each of the n_bags bags -> (B,), (B,)."""
    count = torch.zeros(n_bags, dtype=logits.dtype, device=logits.device).index_add_(0, bag_index, torch.ones_like(logits))
    mean = torch.zeros(n_bags, dtype=logits.dtype, device=logits.device).index_add_(0, bag_index, logits) / count
    top = torch.full((n_bags,), float("-inf"), dtype=logits.dtype, device=logits.device)
    top = top.scatter_reduce(0, bag_index, logits, reduce="amax", include_self=True)
    return mean, top


class MixPool(MILModel):
    name = "example_mixpool"
    instance_score_name = "instance logit"
    loss_is_bag_mean = True  # BCE averaged over bags: a step may be split into micro-batches

    def __init__(self, *, in_dim: int, hidden: int = 128, alpha: float = 0.5, dropout: float = 0.25):
        super().__init__()
        self.alpha = float(alpha)
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, batch: MILBatch) -> MILOutput:
        logits = self.net(batch.x).squeeze(-1)  # (N,)
        mean, top = _segment_mean_max(logits, batch.bag_index, batch.n_bags)  # (B,) each
        return MILOutput(bag_logits=self.alpha * top + (1 - self.alpha) * mean, instance_scores=logits)


register_method(
    "example_mixpool",
    family="other",
    defaults=dict(optimizer="adam", lr=1e-4, weight_decay=1e-4, momentum=0.0, nesterov=False, betas=(0.9, 0.999),
                  lr_decay=0.0, epochs=100, bags_per_batch=8, grad_clip=None, scheduler=None, selection="val_auc",
                  model=dict(hidden=128, alpha=0.5, dropout=0.25)),
    description="Example plugin: alpha * max + (1 - alpha) * mean of instance logits (examples/wsimil-example-plugin).",
    source="examples/wsimil-example-plugin (not a published method)",
)(MixPool)
