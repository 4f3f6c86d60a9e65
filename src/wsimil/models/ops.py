"""Segment operations over a packed batch: the instances of B bags concatenated, ``bag_index`` (N,) in [0, B).

No padding: a batch of bags of 50 and 20,000 instances costs 20,050 rows, not 40,000.

Sums and softmaxes accumulate in float32 even when their inputs are bfloat16 (``precision: bf16``
autocast): a bf16 sum over 20,000 instances would keep about three significant digits.
"""

from __future__ import annotations

import torch
from torch import Tensor


def segment_max(values: Tensor, bag_index: Tensor, n_bags: int) -> Tensor:
    """Max of ``values`` (N,) per bag -> (B,). The gradient flows to each bag's arg-max instance."""
    out = values.new_full((n_bags,), float("-inf"))
    return out.scatter_reduce(0, bag_index, values, reduce="amax", include_self=True)


def segment_sum(values: Tensor, bag_index: Tensor, n_bags: int) -> Tensor:
    """Sum of ``values`` (N, ...) per bag -> (B, ...), float32 or float64."""
    if values.dtype in (torch.bfloat16, torch.float16):
        values = values.float()
    out = values.new_zeros((n_bags, *values.shape[1:]))
    return out.index_add(0, bag_index, values)


def segment_logsumexp(values: Tensor, bag_index: Tensor, n_bags: int) -> Tensor:
    """log(sum(exp(values))) of ``values`` (N,) per bag -> (B,), stable (each bag's max subtracted first)."""
    m = segment_max(values, bag_index, n_bags).detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return m + torch.log(segment_sum(torch.exp(values - m[bag_index]), bag_index, n_bags))


def segment_count(bag_index: Tensor, n_bags: int) -> Tensor:
    """Number of instances per bag -> (B,) float."""
    return torch.bincount(bag_index, minlength=n_bags).to(torch.float32)


def segment_mean(values: Tensor, bag_index: Tensor, n_bags: int) -> Tensor:
    """Mean of ``values`` (N, D) per bag -> (B, D)."""
    counts = segment_count(bag_index, n_bags).to(values.dtype).clamp_min(1)
    return segment_sum(values, bag_index, n_bags) / counts.view(-1, *([1] * (values.dim() - 1)))


def segment_softmax(scores: Tensor, bag_index: Tensor, n_bags: int) -> Tensor:
    """Softmax of ``scores`` (N,) within each bag -> (N,) float32+, each bag's weights summing to 1."""
    if scores.dtype in (torch.bfloat16, torch.float16):
        scores = scores.float()
    shift = segment_max(scores.detach(), bag_index, n_bags)[bag_index]
    e = torch.exp(scores - shift)
    return e / segment_sum(e, bag_index, n_bags)[bag_index]


def segment_argmax(values: Tensor, bag_index: Tensor, n_bags: int) -> Tensor:
    """Index (into N) of each bag's maximal value -> (B,) long (first on ties)."""
    best = segment_max(values.detach(), bag_index, n_bags)
    is_max = values.detach() == best[bag_index]
    pos = torch.arange(values.numel(), device=values.device)
    cand = torch.where(is_max, pos, torch.full_like(pos, values.numel()))
    out = torch.full((n_bags,), values.numel(), dtype=torch.long, device=values.device)
    return out.scatter_reduce(0, bag_index, cand, reduce="amin", include_self=True)


# Above this many entries of the dense (B, N) weight matrix, segment_weighted_sum scatters instead.
_DENSE_WEIGHTS_LIMIT = 1 << 24


def segment_weighted_sum(weights: Tensor, values: Tensor, bag_index: Tensor, n_bags: int) -> Tensor:
    """sum_k w_k v_k per bag: weights (N,), values (N, D) -> (B, D), float32 or float64.

    Attention pooling. Computed as one matmul, (B, N) weights @ (N, D) values, so that under bf16 autocast
    it runs on the bf16 units with float32 accumulation, and no (N, D) product is written (let alone one in
    float32: for DSMIL's 1024-d values that product cost more than the model's layers). Falls back to a
    scatter of the products when the dense (B, N) matrix would be large (many big bags per step).
    """
    n = values.shape[0]
    if n_bags == 1:
        out = weights.unsqueeze(0) @ values
    elif n_bags * n <= _DENSE_WEIGHTS_LIMIT:
        dense = weights.new_zeros((n_bags, n)).index_put((bag_index, torch.arange(n, device=values.device)), weights)
        out = dense @ values
    else:
        return segment_sum(weights.unsqueeze(-1) * values, bag_index, n_bags)
    return out.float() if out.dtype in (torch.bfloat16, torch.float16) else out
