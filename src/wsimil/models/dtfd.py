"""DTFD-MIL (Zhang et al., CVPR 2022): double-tier feature distillation over random pseudo-bags.

Follows ``hrzhang1123/DTFD-MIL`` (``Main_DTFD_MIL.py`` train/test functions, ``Model/Attention.py``,
``Model/network.py``, ``utils.py`` ``get_cam_1d``), with the official defaults:

- DimReduction: Linear(d, 512, bias=False) + ReLU (``numLayer_Res`` 0) -> h_k (N, 512).
- Each slide is shuffled and cut into M = 4 pseudo-bags as ``np.array_split`` cuts (near-equal sizes, the
  first ``n % M`` one larger), re-drawn at every training forward; each pseudo-bag inherits the slide label.
- Tier 1, per pseudo-bag: gated attention (``Attention_Gated(512, 128, 1)``, softmax within the pseudo-bag)
  a_k; pooled feature sum_k a_k h_k -> Linear(512, 2) (``Classifier_1fc``, droprate 0); CE against the slide
  label, averaged over the slide's pseudo-bags.
- Instance probability (``get_cam_1d``, the paper's Grad-CAM derivation): logit_k^c = W_c . (a_k h_k),
  classifier weight only (no bias), softmax over the classes, instances ranked by the positive class.
- Distillation, one feature per pseudo-bag (``total_instance // numGroup`` = 1 instance): ``maxs`` the top
  instance's reduced, un-weighted h_k; ``maxmins`` the top and the bottom instance as two 512-d rows (the code
  concatenates along the instance axis, so Tier 2 sees 2M rows of 512, not M rows of 1024); ``afs`` the
  pseudo-bag's pooled feature (the code's default); ``mas`` the instance with the highest attention score (in
  the paper, not in the code).
- Tier 2 (``Attention_with_Classifier``): a fresh gated attention + Linear(512, 2) over the slide's distilled
  features; CE on the slide.

Binary interface: both heads keep their two outputs; the bag logit is Tier-2's l[1] - l[0] (CE over two
classes equals BCE-with-logits on that difference). The loss is tier-1 CE + tier-2 CE with Tier-2's input
detached: the original backpropagates the Tier-2 loss into a graph whose Tier-1 weights its first optimiser
has already updated in place (an error on PyTorch >= 1.5), and its second optimiser only steps Tier-2, so no
Tier-2 gradient ever changed Tier-1. With the detach, one Adam over ``param_groups()`` steps exactly as the
two official Adam optimisers do.

Test-time pseudo-bags: the official test draws them with ``random.shuffle`` (one draw per slide and
evaluation, ``num_MeanInference`` = 1), so its scores depend on the draw. Here, in eval mode each bag's split
is a fixed function of the bag's *set* of instances: instances are ranked by a projection of their features
on a fixed random direction, and the ranks are sent through a fixed permutation of the bag's size (both drawn
from ``eval_seed``). The split is as random as a shuffle with respect to the content, but a bag scores the
same alone, inside any batch, in any instance order and in every evaluation. Training draws a fresh uniform
split at every forward from torch's global RNG.

Bags with fewer than M instances: ``np.array_split`` would give empty pseudo-bags (the official code then
feeds Tier 1 a zero pooled feature and, for AFS, Tier 2 a zero row). Empty pseudo-bags are dropped here: such
a bag has one singleton pseudo-bag per instance.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from wsimil.models.abmil import GatedAttention
from wsimil.models.base import MILBatch, MILModel, MILOutput, register_method
from wsimil.models.layers import Dropout
from wsimil.models.ops import (
    segment_argmax, segment_count, segment_mean, segment_softmax, segment_sum, segment_weighted_sum,
)
from wsimil.names import builtin_methods

DISTILL = tuple(name.removeprefix("dtfd_") for name in builtin_methods("dtfd"))
_PROJECTION_ROWS = 65_536  # rows per float64 chunk of the eval-split projection (bounded memory)


def array_split_chunk(pos: Tensor, n: Tensor, m: int) -> Tensor:
    """Chunk of position ``pos`` in a sequence of length ``n`` cut into ``m`` parts as ``np.array_split`` cuts:
    the first ``n % m`` chunks hold ``n // m + 1`` items, the others ``n // m`` (empty when n < m)."""
    q, r = n // m, n % m
    big = r * (q + 1)  # items in the larger chunks
    return torch.where(pos < big, pos // (q + 1), r + (pos - big) // q.clamp_min(1))


def rank_within_bag(keys: Tensor, bag_index: Tensor, n_bags: int) -> Tensor:
    """Rank (0-based) of each instance's ``key`` among its bag's instances -> (N,) long."""
    order = torch.argsort(keys, stable=True)
    order = order[torch.argsort(bag_index[order], stable=True)]  # sorted by bag, then key
    counts = torch.bincount(bag_index, minlength=n_bags)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(bag_index)
    rank[order] = torch.arange(len(order), device=keys.device) - starts[bag_index[order]]
    return rank


class DTFDMIL(MILModel):
    """DTFD-MIL: (N, d) instances -> pseudo-bags -> Tier-1 attention + classifier -> distilled features
    (K, 512) -> Tier-2 attention + classifier -> (B,) bag logits."""

    name = "dtfd"

    def __init__(
        self,
        *,
        in_dim: int,
        distill: str = "afs",
        n_pseudo_bags: int = 4,
        hidden: int = 512,
        attention_hidden: int = 128,
        dropout: float = 0.0,
        eval_seed: int = 0,
    ):
        super().__init__()
        if distill not in DISTILL:
            raise ValueError(f"distill must be one of {', '.join(DISTILL)}, got {distill!r}")
        if int(n_pseudo_bags) < 1:
            raise ValueError(f"n_pseudo_bags must be >= 1, got {n_pseudo_bags}")
        self.distill, self.n_pseudo_bags, self.eval_seed = distill, int(n_pseudo_bags), int(eval_seed)
        # Tier 1 (the official first optimiser: dimReduction, attention, classifier)
        self.reduce = nn.Sequential(nn.Linear(in_dim, hidden, bias=False), nn.ReLU())  # network.py DimReduction
        self.attention1 = GatedAttention(hidden, attention_hidden)  # Attention_Gated(L=512, D=128, K=1)
        self.dropout1 = Dropout(dropout)  # Classifier_1fc droprate (official 0)
        self.classifier1 = nn.Linear(hidden, 2)
        # Tier 2 (the official attCls = Attention_with_Classifier, second optimiser)
        self.attention2 = GatedAttention(hidden, attention_hidden)
        self.dropout2 = Dropout(dropout)  # droprate_2 (official 0)
        self.classifier2 = nn.Linear(hidden, 2)

    # ---------------------------------------------------------------------------------------------
    def tier1_modules(self) -> list[nn.Module]:
        return [self.reduce, self.attention1, self.classifier1]

    def tier2_modules(self) -> list[nn.Module]:
        return [self.attention2, self.classifier2]

    def param_groups(self) -> list[list[nn.Parameter]]:
        """[DimReduction], [Tier-1 attention], [Tier-1 classifier], [Tier 2]: the official code clips the
        gradient norm of each of these four separately (``clip_grad_norm_`` on dimReduction, attention,
        classifier, then UClassifier), so each is its own clipping group. All four share lr and weight decay:
        one Adam over them steps as the official two Adam optimisers."""
        return [list(m.parameters()) for m in self.tier1_modules()] + [
            [p for m in self.tier2_modules() for p in m.parameters()]
        ]

    # ---------------------------------------------------------------------------------------------
    def pseudo_bags(self, batch: MILBatch) -> Tensor:
        """Pseudo-bag of every instance -> (N,) long in [0, B*M): bag b's pseudo-bags are b*M .. b*M+M-1.

        Training: a uniform random shuffle from the global RNG, cut as ``np.array_split``. Eval: a fixed
        function of the bag's set of instances (module docstring)."""
        x, idx, n_bags, m = batch.x, batch.bag_index, batch.n_bags, self.n_pseudo_bags
        counts = torch.bincount(idx, minlength=n_bags)
        if self.training:
            pos = rank_within_bag(torch.rand(len(idx), device=x.device), idx, n_bags)
        else:
            g = torch.Generator().manual_seed(self.eval_seed)
            direction = torch.randn(x.shape[1], generator=g, dtype=torch.float64).to(x.device)
            proj = torch.cat([c.double() @ direction for c in x.split(_PROJECTION_ROWS)])  # float64: no near-ties
            rank = rank_within_bag(proj, idx, n_bags)
            perms = {}
            for n in counts.unique().tolist():
                perms[n] = torch.randperm(n, generator=torch.Generator().manual_seed(self.eval_seed + n))
            table = torch.cat([perms[n] for n in counts.tolist()]).to(x.device)  # bag b's perm at starts[b]
            starts = torch.cumsum(counts, 0) - counts
            pos = table[starts[idx] + rank]
        return idx * m + array_split_chunk(pos, counts[idx], m)

    def forward(self, batch: MILBatch) -> MILOutput:
        n_bags, m = batch.n_bags, self.n_pseudo_bags
        n_groups = n_bags * m
        group = self.pseudo_bags(batch)  # (N,)
        group_bag = torch.arange(n_groups, device=group.device) // m  # (G,)
        valid = segment_count(group, n_groups) > 0  # (G,) empty pseudo-bags (bag < M instances) are dropped

        # Tier 1 (Main_DTFD_MIL.py train_attention_preFeature_DTFD, per pseudo-bag)
        h = self.reduce(batch.x)  # (N, 512) tmidFeat
        scores1 = self.attention1(h)  # (N,) pre-softmax attention
        a = segment_softmax(scores1, group, n_groups)  # (N,) softmax within each pseudo-bag
        pooled = segment_weighted_sum(a, h, group, n_groups)  # (G, 512) tattFeat_tensor = sum_k a_k h_k
        logits1 = self.classifier1(self.dropout1(pooled))  # (G, 2)
        # get_cam_1d: cam_c = W_c . (a_k h_k), no bias; softmax(cam)[:, 1] = sigmoid(cam_1 - cam_0) (same
        # ranking), computed as a_k (h_k . (W_1 - W_0)): no (N, 512) product, and under bf16 autocast no
        # cancellation between two separately rounded CAMs
        w = self.classifier1.weight
        cam_diff = a * (h @ (w[1] - w[0])).float()  # (N,)
        inst_prob = torch.sigmoid(cam_diff)

        # Distillation: one (or for maxmins two) 512-d row(s) per non-empty pseudo-bag
        keep = valid.nonzero().squeeze(-1)
        if self.distill == "afs":
            feats, feats_bag = pooled[keep], group_bag[keep]
        elif self.distill in ("maxs", "mas"):
            key = cam_diff if self.distill == "maxs" else scores1
            feats, feats_bag = h[segment_argmax(key, group, n_groups)[keep]], group_bag[keep]
        else:  # maxmins: [top, bottom] of each pseudo-bag, as rows (torch.cat(..., dim=0) in the code)
            top = segment_argmax(cam_diff, group, n_groups)[keep]
            bottom = segment_argmax(-cam_diff, group, n_groups)[keep]
            feats = torch.stack((h[top], h[bottom]), 1).flatten(0, 1)  # (2K, 512)
            feats_bag = group_bag[keep].repeat_interleave(2)

        # Tier 2 on the detached distilled features (see the module docstring)
        u = feats.detach()
        a2 = segment_softmax(self.attention2(u), feats_bag, n_bags)
        z = segment_sum(a2.unsqueeze(-1) * u, feats_bag, n_bags)  # (B, 512)
        logits2 = self.classifier2(self.dropout2(z))  # (B, 2)
        return MILOutput(
            bag_logits=logits2[:, 1] - logits2[:, 0],
            instance_scores=inst_prob,
            extras={
                "pseudo_bag": group, "attention": a, "cam_logit": cam_diff,
                "tier1_logits": logits1[:, 1] - logits1[:, 0], "tier1_valid": valid,
                "tier2_input": u, "tier2_bag_index": feats_bag, "tier2_attention": a2,
            },
        )  # fmt: skip

    instance_score_name = "Grad-CAM probability"

    def score_maps(self, out: MILOutput, batch: MILBatch) -> dict[str, Tensor]:
        """DTFD-MIL's figure contrasts the Grad-CAM instance probability with the Tier-1 attention score.

        ``pseudo_bag`` (N,) float: not a score but the pseudo-bag each instance was put in, numbered among its
        slide's non-empty pseudo-bags in :meth:`group_scores`' order (``pseudo_bags.csv``'s ``pseudo_bag``),
        so that the pseudo-bags' contents (e.g. their tumour patches, :mod:`wsimil.evaluation.ceiling`) can be
        read back; from the eval-time split when the model is in eval mode."""
        return {"attention": out.extras["attention"], "pseudo_bag": self.pseudo_bag_rank(out).float()}

    def pseudo_bag_rank(self, out: MILOutput) -> Tensor:
        """Index of each instance's pseudo-bag among its bag's non-empty pseudo-bags -> (N,) long.

        :meth:`group_scores` keeps the non-empty pseudo-bags in increasing order of their global index
        b*M + j, so bag b's k-th row there is the k-th non-empty j; this is that k for every instance."""
        valid = out.extras["tier1_valid"].view(-1, self.n_pseudo_bags).long()  # (B, M)
        rank = (torch.cumsum(valid, 1) - 1).flatten()  # (B*M,) rank among the bag's non-empty pseudo-bags
        return rank[out.extras["pseudo_bag"]]

    def group_scores(self, out: MILOutput) -> tuple[Tensor, Tensor]:
        """Tier-1 positive probability of every non-empty pseudo-bag (G,) and its slide (G,): the official test
        loop's First-Tier AUC is computed over these pseudo-bags, each labelled with its slide's label."""
        keep = out.extras["tier1_valid"].nonzero().squeeze(-1)
        return torch.sigmoid(out.extras["tier1_logits"][keep].float()), keep // self.n_pseudo_bags

    def loss(self, out: MILOutput, batch: MILBatch) -> dict[str, Tensor]:
        """Tier-1 CE (mean over each slide's pseudo-bags, then over slides) + Tier-2 CE (mean over slides).
        ``bce`` is Tier 2's, the slide-level data term the training loop compares across methods."""
        m = self.n_pseudo_bags
        valid = out.extras["tier1_valid"]
        keep = valid.nonzero().squeeze(-1)
        bag_of = keep // m
        ce1 = F.binary_cross_entropy_with_logits(
            out.extras["tier1_logits"][keep], batch.labels[bag_of], reduction="none"
        )
        tier1 = segment_mean(ce1.unsqueeze(-1), bag_of, batch.n_bags).squeeze(-1).mean()
        tier2 = F.binary_cross_entropy_with_logits(out.bag_logits, batch.labels)
        return {"loss": tier1 + tier2, "bce": tier2, "tier1_bce": tier1}


_SOURCE = "Zhang et al. CVPR 2022, hrzhang1123/DTFD-MIL Main_DTFD_MIL.py, Model/Attention.py, Model/network.py"
_DESCRIPTIONS = {
    "maxs": "DTFD-MIL, MaxS distillation: the top Grad-CAM instance of each pseudo-bag feeds Tier 2.",
    "maxmins": "DTFD-MIL, MaxMinS distillation: the top and bottom Grad-CAM instances of each pseudo-bag.",
    "mas": "DTFD-MIL, MAS distillation (paper only): the highest-attention instance of each pseudo-bag.",
    "afs": "DTFD-MIL, AFS distillation (the official default): each pseudo-bag's attention-pooled feature.",
}


def _defaults(distill: str) -> dict:
    # Main_DTFD_MIL.py argparse defaults: two Adam (lr 1e-4, wd 1e-4), EPOCH 200, epoch_step [100],
    # lr_decay_ratio 0.2, grad_clipping 5, batch_size 1, numGroup 4 (numGroup_test 4), droprate 0.
    return dict(
        optimizer="adam", lr=1e-4, weight_decay=1e-4, momentum=0.0, nesterov=False, betas=(0.9, 0.999),
        lr_decay=0.0, epochs=200, bags_per_batch=1, grad_clip=5.0, scheduler="multistep", lr_milestones=[100],
        lr_gamma=0.2, selection="val_auc",
        model=dict(distill=distill, n_pseudo_bags=4, hidden=512, attention_hidden=128, dropout=0.0, eval_seed=0),
    )  # fmt: skip


for _distill in DISTILL:
    register_method(
        f"dtfd_{_distill}", family="attention", defaults=_defaults(_distill),
        description=_DESCRIPTIONS[_distill], source=_SOURCE,
    )(DTFDMIL)  # fmt: skip
