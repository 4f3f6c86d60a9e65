"""TransMIL (Shao et al., NeurIPS 2021): a two-layer Nystrom transformer over a slide's patch sequence.

Follows ``szc19990412/TransMIL`` ``models/TransMIL.py`` (commit 0db1535; "TransMIL.py line n" below) and the
attention it imports, ``lucidrains/nystrom-attention`` ``nystrom_attention/nystrom_attention.py`` (0.0.14,
commit fbe9eba; "nystrom_attention.py line n"). Checked against both: with the same seed this module builds the
same weights and gives the same logits (tests/test_transmil.py holds the official numbers):

    x (n, d) -> Linear(d, 512) + ReLU -> pad to S*S tokens by repeating the first ones, S = ceil(sqrt(n))
    -> [class token; tokens] -> TransLayer -> PPEG (S x S grid) -> TransLayer -> LayerNorm -> Linear(512, 2)
    on the class token.

TransLayer = x + NystromAttention(LayerNorm(x)) (pre-norm, no feed-forward block). Nystrom attention:
8 heads x 64, 256 landmarks, 6 Moore-Penrose iterations, depthwise residual conv (kernel 33) on the values,
dropout 0.1 after the output projection.

A slide is a sequence, and PPEG is a positional encoding, so the model is *not* invariant to instance order
(on purpose: that is the paper's "correlation" claim). The packed batch is split into its bags and each bag
runs alone, exactly as the official one-slide-per-forward loop; the bag logit is ``l[1] - l[0]`` of the
two-class head (cross-entropy over two classes == BCE-with-logits on that difference).

``instance_scores``: the class token's row of the approximate attention matrix
``softmax(Q K_l^T) pinv(softmax(Q_l K_l^T)) softmax(Q_l K^T)`` in the *second* (last) Nystrom layer,
averaged over heads, at each instance's first occurrence in the squared sequence (the repeats appended by
the padding are ignored). It says where the class token looks, not in which direction: it is the usual
TransMIL heatmap, not a signed tumour score. The Nystrom approximation can make single entries negative.

All modules below work on ONE sequence without a batch dimension: shapes are (L, dim).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from wsimil.models.base import MILBatch, MILModel, MILOutput, register_method
from wsimil.models.layers import Dropout


def square_pad(h: Tensor) -> tuple[Tensor, int]:
    """Pad a sequence (n, D) to S*S tokens, S = ceil(sqrt(n)), by appending copies of its first S*S - n
    tokens (TransMIL.py lines 65-69). Returns ((S*S, D), S)."""
    n = h.shape[0]
    if n == 0:
        raise ValueError("TransMIL needs at least one instance per bag")
    side = math.isqrt(n - 1) + 1  # exact integer ceil(sqrt(n)), unlike float sqrt for huge n
    return torch.cat([h, h[: side * side - n]], dim=0), side


def moore_penrose_pinv(x: Tensor, iters: int = 6) -> Tensor:
    """Iterative Moore-Penrose pseudo-inverse of (..., m, m) (Nystromformer eq. 16; nystrom_attention.py
    lines 13-27). The initial scale is the max absolute row sum times the max absolute
    column sum over the *whole* tensor, i.e. over all heads of a sequence, as the official code does.
    Always float32 (autocast off): the Newton-Schulz iteration diverges in bfloat16."""
    with torch.autocast(x.device.type, enabled=False):
        return _pinv(x.float() if x.dtype in (torch.bfloat16, torch.float16) else x, iters)


def _pinv(x: Tensor, iters: int) -> Tensor:
    scale = x.abs().sum(dim=-1).amax() * x.abs().sum(dim=-2).amax()
    z = x.transpose(-1, -2) / scale
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    for _ in range(iters):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - xz @ (15 * eye - xz @ (7 * eye - xz)))
    return z


class NystromAttention(nn.Module):
    """Nystrom self-attention of one sequence: (n, dim) -> (n, dim).

    As nystrom_attention.py lines 67-152: the sequence is zero-padded on the LEFT to a
    multiple of ``num_landmarks`` (the zero tokens stay in as keys and values: q = k = v = 0 there, since
    ``to_qkv`` has no bias); landmarks are means of ``ceil(n / m)`` consecutive (scaled) queries / keys;
    out = softmax(Q K_l^T) pinv(softmax(Q_l K_l^T)) (softmax(Q_l K^T) V) + depthwise conv of V along the
    sequence; the padded rows are dropped.

    ``legacy_output_slice``: nystrom-attention 0.0.9 (the version pinned in TransMIL's requirements.txt)
    kept the FIRST n rows (``out[:, :n]``) instead of the last n, shifting every output by the padding
    length; fixed upstream in 0.0.10 (lucidrains/nystrom-attention#5, commit d7eb229). Off by default.
    """

    def __init__(
        self,
        *,
        dim: int,
        heads: int = 8,
        dim_head: int = 64,
        num_landmarks: int = 256,
        pinv_iterations: int = 6,
        residual_kernel: int = 33,
        dropout: float = 0.0,
        legacy_output_slice: bool = False,
    ):
        super().__init__()
        if residual_kernel < 0 or (residual_kernel and residual_kernel % 2 == 0):
            raise ValueError(f"residual_kernel must be odd (or 0 for none), got {residual_kernel}")
        self.heads, self.dim_head, self.num_landmarks = heads, dim_head, num_landmarks
        self.pinv_iterations, self.legacy_output_slice = pinv_iterations, legacy_output_slice
        self.scale = dim_head**-0.5
        inner = heads * dim_head
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), Dropout(dropout))
        # Conv2d over (heads, L, dim_head) with a (k, 1) kernel, one filter per head: a 1-D conv along the
        # sequence shared by a head's channels (nystrom_attention.py ``res_conv``). 0 disables it.
        self.res_conv = (
            nn.Conv2d(heads, heads, (residual_kernel, 1), padding=(residual_kernel // 2, 0), groups=heads, bias=False)
            if residual_kernel
            else None
        )

    def forward(self, x: Tensor, query: int | None = None) -> tuple[Tensor, Tensor | None]:
        """x (n, dim) -> (out (n, dim), attention row (n,) or None).

        With ``query`` = i, also return the head-averaged approximate attention of the query whose output
        lands at row i of ``out``, over the n real (not zero-padded) key positions.
        """
        n, m, h, d = x.shape[0], self.num_landmarks, self.heads, self.dim_head
        pad = (-n) % m
        x = F.pad(x, (0, 0, pad, 0))  # (L, dim), L = n + pad = m * ceil(n / m), zeros first (lines 72-75)
        length = n + pad
        q, k, v = (t.reshape(length, h, d).transpose(0, 1) for t in self.to_qkv(x).chunk(3, dim=-1))  # (h, L, d)
        q = q * self.scale  # line 91
        group = length // m  # = ceil(n / m) tokens per landmark
        q_land = q.reshape(h, m, group, d).mean(dim=2)  # (h, m, d): sum over the group / group (lines 93-111)
        k_land = k.reshape(h, m, group, d).mean(dim=2)
        # softmaxes in at least float32 (a no-op in fp32; under bf16 autocast the products stay bf16), and in the
        # input's precision when it is wider (float64)
        sdt = torch.float64 if x.dtype == torch.float64 else torch.float32
        attn1 = torch.softmax(q @ k_land.transpose(-1, -2), dim=-1, dtype=sdt)  # (h, L, m)
        attn2 = torch.softmax(q_land @ k_land.transpose(-1, -2), dim=-1, dtype=sdt)  # (h, m, m)
        attn3 = torch.softmax(q_land @ k.transpose(-1, -2), dim=-1, dtype=sdt)  # (h, m, L)
        attn2_inv = moore_penrose_pinv(attn2, self.pinv_iterations)  # lines 130-131
        out = (attn1 @ attn2_inv) @ (attn3 @ v)  # (h, L, d), line 133
        if self.res_conv is not None:
            out = out + self.res_conv(v)  # unbatched Conv2d input: (C=h, H=L, W=d), lines 137-138
        out = self.to_out(out.transpose(0, 1).reshape(length, h * d))  # (L, dim)
        first = 0 if self.legacy_output_slice else pad
        out = out[first : first + n]  # line 144 (0.0.9: ``out[:, :n]``)
        row = None
        if query is not None:
            r = first + query
            a = (attn1[:, r : r + 1] @ attn2_inv) @ attn3  # (h, 1, L)
            row = a[:, 0, pad:].mean(dim=0)  # (n,) over the real keys
        return out, row


class TransLayer(nn.Module):
    """Pre-norm residual Nystrom attention, no feed-forward block (TransMIL.py lines 8-26): (n, dim)."""

    def __init__(self, *, dim: int, **attention: object):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = NystromAttention(dim=dim, **attention)  # type: ignore[arg-type]

    def forward(self, x: Tensor, query: int | None = None) -> tuple[Tensor, Tensor | None]:
        out, row = self.attn(self.norm(x), query)
        return x + out, row


class PPEG(nn.Module):
    """Pyramid position encoding generator (TransMIL.py lines 29-43): (1 + S*S, dim) -> same shape.

    Tokens 1.. are laid out row-major on an S x S grid (token t at row t // S, column t % S); the grid becomes
    grid + dwconv7(grid) + dwconv5(grid) + dwconv3(grid); the class token (row 0) passes unchanged.
    """

    def __init__(self, *, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 7, 1, 7 // 2, groups=dim)
        self.proj1 = nn.Conv2d(dim, dim, 5, 1, 5 // 2, groups=dim)
        self.proj2 = nn.Conv2d(dim, dim, 3, 1, 3 // 2, groups=dim)

    def forward(self, x: Tensor, side: int) -> Tensor:
        cls, tokens = x[:1], x[1:]
        dim = x.shape[1]
        grid = tokens.transpose(0, 1).reshape(dim, side, side)  # (dim, S, S)
        grid = self.proj(grid) + grid + self.proj1(grid) + self.proj2(grid)
        return torch.cat([cls, grid.reshape(dim, side * side).transpose(0, 1)], dim=0)


class TransMIL(MILModel):
    """TransMIL on a packed batch; each bag runs through the transformer on its own.

    ``forward`` extras: ``class_logits`` (B, 2), the two-class head's logits (``bag_logits`` = [:, 1] - [:, 0]).
    """

    name = "transmil"
    instance_score_name = "class-token attention (second layer)"

    def __init__(
        self,
        *,
        in_dim: int,
        hidden: int = 512,
        heads: int = 8,
        dim_head: int = 64,
        num_landmarks: int = 256,
        pinv_iterations: int = 6,
        residual_kernel: int = 33,
        dropout: float = 0.1,
        legacy_output_slice: bool = False,
    ):
        super().__init__()
        attention = dict(
            heads=heads, dim_head=dim_head, num_landmarks=num_landmarks, pinv_iterations=pinv_iterations,
            residual_kernel=residual_kernel, dropout=dropout, legacy_output_slice=legacy_output_slice,
        )  # fmt: skip
        # Built in the official order (TransMIL.py lines 49-56) so that a seed initialises the same way.
        self.pos_layer = PPEG(dim=hidden)
        self.fc1 = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, hidden))
        self.layer1 = TransLayer(dim=hidden, **attention)
        self.layer2 = TransLayer(dim=hidden, **attention)
        self.norm = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, 2)

    def forward_bag(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """One bag x (n, in_dim) -> (two-class logits (2,), instance scores (n,))."""
        n = x.shape[0]
        h, side = square_pad(self.fc1(x))  # (S*S, hidden)
        h = torch.cat([self.cls_token, h], dim=0)  # (1 + S*S, hidden), lines 71-74
        h, _ = self.layer1(h)  # line 77
        h = self.pos_layer(h, side)  # line 80
        h, attn = self.layer2(h, query=0)  # line 83; attn (1 + S*S,): the class token's row
        logits = self.fc2(self.norm(h[0]))  # lines 86-89; LayerNorm is per token: norm(h)[0] == norm(h[0])
        return logits, attn[1 : n + 1]  # first occurrences of the n instances

    def forward(self, batch: MILBatch) -> MILOutput:
        order = torch.argsort(batch.bag_index, stable=True)  # bags' instances, each bag in its own order
        counts = torch.bincount(batch.bag_index, minlength=batch.n_bags).tolist()
        logits, scores = [], []
        for idx in torch.split(order, counts):
            l2, s = self.forward_bag(batch.x[idx])
            logits.append(l2)
            scores.append(s)
        class_logits = torch.stack(logits)  # (B, 2)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        return MILOutput(
            bag_logits=class_logits[:, 1] - class_logits[:, 0],
            instance_scores=torch.cat(scores)[inverse],
            extras={"class_logits": class_logits},
        )


register_method(
    "transmil",
    family="attention",
    defaults=dict(
        # Camelyon/TransMIL.yaml: lookahead_radam, lr 2e-4, wd 1e-5, 200 epochs, batch_size 1 with
        # grad_acc 2 (Lightning averages the two slides' losses before one optimiser step == 2 bags per
        # batch here, since each bag runs alone); EarlyStopping(val_loss, patience 10) and ModelCheckpoint
        # (val_loss, min) in utils/utils.py: the tested model is the lowest-val-loss epoch.
        optimizer="lookahead_radam", lr=2e-4, weight_decay=1e-5, momentum=0.0, nesterov=False,
        betas=(0.9, 0.999), lr_decay=0.0, epochs=200, bags_per_batch=2, grad_clip=None, scheduler=None,
        selection="val_loss", early_stopping={"monitor": "val_loss", "patience": 10, "min_epochs": 0},
        model=dict(
            hidden=512, heads=8, dim_head=64, num_landmarks=256, pinv_iterations=6, residual_kernel=33,
            dropout=0.1, legacy_output_slice=False,
        ),
    ),  # fmt: skip
    description="Transformer MIL: two Nystrom attention layers with a convolutional position encoding (PPEG).",
    source="Shao et al. NeurIPS 2021, szc19990412/TransMIL models/TransMIL.py; lucidrains/nystrom-attention",
)(TransMIL)
