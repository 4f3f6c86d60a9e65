"""TransMIL: the squaring pad, Nystrom attention against exact attention, PPEG, the official code's numbers,
batch invariance, and learning a separable toy problem."""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from wsimil.models.base import get_method
from wsimil.models.transmil import PPEG, NystromAttention, TransMIL, moore_penrose_pinv, square_pad
from wsimil.training.data import pack

sys.path.insert(0, str(Path(__file__).parent))
from test_training import toy_bags  # noqa: E402

SMALL = dict(hidden=64, heads=4, dim_head=16, num_landmarks=16)  # CPU-sized; the layers are the same


def test_square_pad_repeats_exactly_the_first_tokens():
    x = torch.arange(5, dtype=torch.float32).unsqueeze(1) * torch.ones(1, 3)  # token i == [i, i, i]
    h, side = square_pad(x)
    assert side == 3 and h.shape == (9, 3)
    assert h[:, 0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3]
    for n, expected_side in ((1, 1), (4, 2), (9, 3), (10, 4), (17, 5)):
        h, side = square_pad(torch.randn(n, 2))
        assert side == expected_side and len(h) == side * side
        torch.testing.assert_close(h[n:], h[: side * side - n], rtol=0, atol=0)
    with pytest.raises(ValueError, match="at least one instance"):
        square_pad(torch.zeros(0, 3))


def test_moore_penrose_iteration_converges_to_the_inverse():
    g = torch.Generator().manual_seed(0)
    a = torch.softmax(3 * torch.randn(2, 6, 6, generator=g), dim=-1)  # row-stochastic, like attn2
    exact = torch.linalg.inv(a.double()).float()
    torch.testing.assert_close(moore_penrose_pinv(a, iters=30), exact, rtol=1e-3, atol=1e-3)
    assert not torch.allclose(moore_penrose_pinv(a, iters=1), exact, rtol=1e-3, atol=1e-3)


def _exact_attention(attn: NystromAttention, x: torch.Tensor, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Full softmax attention over the left-zero-padded sequence (the zeros are keys too), last n rows;
    and the head-mean attention row of output 0 over the n real keys."""
    n, h, d = x.shape[0], attn.heads, attn.dim_head
    xp = torch.cat([torch.zeros(pad, x.shape[1]), x])
    q, k, v = (t.reshape(n + pad, h, d).transpose(0, 1) for t in attn.to_qkv(xp).chunk(3, dim=-1))
    a = torch.softmax(q @ k.transpose(-1, -2) * d**-0.5, dim=-1)  # (h, L, L)
    out = attn.to_out((a @ v).transpose(0, 1).reshape(n + pad, h * d))
    return out[pad:], a[:, pad, pad:].mean(0)


def test_nystrom_is_exact_softmax_attention_when_every_token_is_a_landmark():
    # num_landmarks = padded length: each landmark is one token, so softmax(Q K_l^T) pinv(.) softmax(Q_l K^T)
    # = A pinv(A) A = A. Fails if the left zero-padding, the landmark means or the pinv were wrong.
    torch.manual_seed(0)
    attn = NystromAttention(dim=16, heads=2, dim_head=8, num_landmarks=16, pinv_iterations=20, residual_kernel=0)
    attn.to_qkv.weight.data *= 4  # sharper attention: a well-conditioned A, so 20 iterations converge
    x = torch.randn(10, 16)
    with torch.no_grad():
        out, row = attn(x, query=0)
        exact, exact_row = _exact_attention(attn, x, pad=6)
        torch.testing.assert_close(out, exact, rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(row, exact_row, rtol=1e-3, atol=1e-4)
        # The zero tokens take part as keys: attention over the real tokens alone is something else.
        unpadded, _ = _exact_attention(attn, x, pad=0)
        assert not torch.allclose(out, unpadded, rtol=1e-2, atol=1e-3)


def test_nystrom_residual_conv_and_legacy_output_slice():
    torch.manual_seed(0)
    kw = dict(dim=16, heads=2, dim_head=8, num_landmarks=16)
    new = NystromAttention(**kw).eval()
    legacy = NystromAttention(**kw, legacy_output_slice=True).eval()
    legacy.load_state_dict(new.state_dict())
    x = torch.randn(10, 16)  # padded by 6 zeros on the left
    with torch.no_grad():
        a, b = new(x)[0], legacy(x)[0]
        # nystrom-attention 0.0.9 kept padded rows 0..9; the fix keeps rows 6..15: legacy row 6 + i == new row i.
        torch.testing.assert_close(b[6:], a[:4])
        # The residual is a per-head conv of V along the sequence (zero-padded at the ends).
        no_res = NystromAttention(**kw, residual_kernel=0).eval()
        no_res.load_state_dict(new.state_dict(), strict=False)
        v = nn.functional.pad(new.to_qkv(x), (0, 0, 6, 0)).chunk(3, dim=-1)[2].reshape(16, 2, 8).transpose(0, 1)
        conv = new.res_conv(v).transpose(0, 1).reshape(16, 16)[6:]
        torch.testing.assert_close(a - no_res(x)[0], conv @ new.to_out[0].weight.T, rtol=1e-4, atol=1e-5)


def test_ppeg_keeps_shape_and_class_token_and_lays_tokens_out_row_major():
    torch.manual_seed(0)
    ppeg = PPEG(dim=4)
    x = torch.randn(1 + 9, 4)
    with torch.no_grad():
        y = ppeg(x, 3)
        assert y.shape == x.shape
        torch.testing.assert_close(y[0], x[0], rtol=0, atol=0)
        for conv in (ppeg.proj, ppeg.proj1, ppeg.proj2):
            conv.weight.zero_()
            conv.bias.zero_()
        ppeg.proj2.weight[:, 0, 1, 0] = 1.0  # 3x3 tap on the left neighbour in the same grid row
        y = ppeg(x, 3)
    tokens = x[1:]
    for t in range(9):
        left = tokens[t - 1] if t % 3 else torch.zeros(4)  # row-major grid: token t at (t // 3, t % 3)
        torch.testing.assert_close(y[1 + t], tokens[t] + left)


# Logits of szc19990412/TransMIL models/TransMIL.py (TransMIL(n_classes=2), eval) built after
# torch.manual_seed(0), on torch.randn(n, 1024) from a Generator seeded 1 (n = 5, then 300), computed once
# with nystrom-attention 0.0.14 ("fixed") and 0.0.9 ("legacy", the version in its requirements.txt).
# TransMIL(in_dim=1024) builds its layers in the official order, so the same seed gives the same weights.
OFFICIAL_LOGITS = {
    False: {5: (-0.183615, -1.133808), 300: (-0.068204, -1.083860)},
    True: {5: (-0.157132, -1.193179), 300: (-0.200093, -1.129763)},
}


@pytest.mark.parametrize("legacy", [False, True])
def test_matches_the_official_implementation(legacy):
    torch.manual_seed(0)
    model = TransMIL(in_dim=1024, legacy_output_slice=legacy).eval()
    g = torch.Generator().manual_seed(1)
    for n in (5, 300):  # 300 tokens: two per landmark, left padding of 213
        x = torch.randn(n, 1024, generator=g)
        with torch.no_grad():
            out = model(pack([x], [1]))
        expected = torch.tensor(OFFICIAL_LOGITS[legacy][n])
        torch.testing.assert_close(out.extras["class_logits"][0], expected, rtol=0, atol=2e-5)
        torch.testing.assert_close(out.bag_logits[0], expected[1] - expected[0], rtol=0, atol=4e-5)


def test_bag_alone_equals_bag_in_an_interleaved_batch():
    torch.manual_seed(0)
    model = TransMIL(in_dim=8, **SMALL).eval()
    g = torch.Generator().manual_seed(0)
    bags = [torch.randn(n, 8, generator=g) for n in (5, 1, 20, 7)]
    # Interleave the bags round-robin (each bag keeps its own order, which TransMIL depends on): the split
    # must not assume contiguous bags.
    batch = pack(bags, [1, 0, 1, 0])
    rank = torch.cat([torch.arange(len(b)) for b in bags])  # position within its bag
    perm = torch.argsort(rank * len(bags) + batch.bag_index)
    batch.x, batch.bag_index = batch.x[perm], batch.bag_index[perm]
    assert batch.bag_index[:5].tolist() == [0, 1, 2, 3, 0]
    with torch.no_grad():
        out = model(batch)
        assert out.bag_logits.shape == (4,) and out.instance_scores.shape == (33,)
        assert out.extras["class_logits"].shape == (4, 2)
        for i, b in enumerate(bags):
            alone = model(pack([b], [0]))
            torch.testing.assert_close(alone.bag_logits[0], out.bag_logits[i], rtol=1e-5, atol=1e-6)
            # instances of bag i in the shuffled batch, in their original order within the bag
            mine = torch.nonzero(batch.bag_index == i).squeeze(1)
            torch.testing.assert_close(alone.instance_scores, out.instance_scores[mine], rtol=1e-5, atol=1e-6)


def test_dropout_in_training_determinism_in_eval_and_gradients_everywhere():
    torch.manual_seed(0)
    model = TransMIL(in_dim=8, **SMALL)
    batch = pack([torch.randn(12, 8), torch.randn(3, 8)], [1, 0])
    assert not torch.allclose(model(batch).bag_logits, model(batch).bag_logits)
    model.loss(model(batch), batch)["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.eval()
    torch.testing.assert_close(model(batch).bag_logits, model(batch).bag_logits, rtol=0, atol=0)


def test_order_matters_by_design():
    # PPEG encodes position on the token grid: TransMIL is not permutation invariant (exempt it from the
    # generic instance-order test). Fails the day that stops being true.
    torch.manual_seed(0)
    model = TransMIL(in_dim=8, **SMALL).eval()
    x = torch.randn(9, 8)
    with torch.no_grad():
        a, b = model(pack([x], [1])), model(pack([x.flip(0)], [1]))
    assert not torch.allclose(a.bag_logits, b.bag_logits, rtol=1e-4, atol=1e-5)


def test_registered_with_the_published_setup():
    spec = get_method("transmil")
    d = spec.defaults
    assert spec.family == "attention"
    assert (d["optimizer"], d["lr"], d["weight_decay"], d["epochs"], d["bags_per_batch"]) == (
        "lookahead_radam", 2e-4, 1e-5, 200, 2,
    )
    assert d["selection"] == "val_loss"
    assert d["early_stopping"] == {"monitor": "val_loss", "patience": 10, "min_epochs": 0}
    assert d["model"]["num_landmarks"] == 256 and d["model"]["hidden"] == 512
    model = spec.build(16, spec.hparams({"model.hidden": 32, "model.num_landmarks": 8}))
    assert isinstance(model, TransMIL) and model.fc2.out_features == 2


def test_learns_a_separable_mil_problem():
    from wsimil.training.loop import predict, safe_auc, train

    # The published optimiser, schedule and selection; only the widths are cut for CPU time. Observed:
    # val AUC 0.74 -> 0.99 by epoch 15, test AUC 0.978 (hidden 32: 0.83 on the smaller toy, still climbing).
    bags = toy_bags(n=(100, 20, 40))
    result = train(bags, "transmil", 0, {"epochs": 25, "model": SMALL})
    test = bags.indices("test")
    auc = safe_auc(bags.labels[test], predict(result.model, bags, test).probs)
    assert auc >= 0.95, f"test AUC {auc:.3f}"
