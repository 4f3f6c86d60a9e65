"""mi-Net's family as MINNs writes it: mean-pooling of the instance probabilities, Keras' initialisation for
mi-Net; and TransMIL following a float64 input's precision."""

import math

import numpy as np
import pytest
import torch

from wsimil.models.base import MILBatch, get_method


def _batch(sizes, dim=6, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(sizes), dim, generator=g, dtype=dtype) * 3
    idx = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return MILBatch(x, idx, len(sizes), torch.tensor([1.0, 0.0, 1.0][: len(sizes)]))


def test_meanpool_bag_probability_is_the_mean_of_the_instance_sigmoids():
    torch.manual_seed(0)
    model = get_method("meanpool").build(6).eval()
    with torch.no_grad():
        model.score.weight.mul_(40.0)  # spread the instance logits over several units (init leaves them near 0)
    batch = _batch([5, 1, 7])
    with torch.no_grad():
        out = model(batch)
    inst = out.instance_scores.double().numpy()
    idx = batch.bag_index.numpy()
    by_hand = [np.mean(1 / (1 + np.exp(-inst[idx == b]))) for b in range(3)]
    got = torch.sigmoid(out.bag_logits.double()).numpy()
    np.testing.assert_allclose(got, by_hand, rtol=1e-5, atol=1e-7)
    # not the sigmoid of the mean logit (the old, unfaithful pooling): differs for a bag of mixed logits
    assert not np.allclose(got[0], 1 / (1 + np.exp(-inst[idx == 0].mean())), atol=1e-4)


def test_meanpool_is_finite_and_exact_for_extreme_logits():
    from wsimil.models.ops import segment_logsumexp

    v = torch.tensor([-200.0, 200.0, 3.0, -1e4, -1e4])
    idx = torch.tensor([0, 0, 1, 2, 2])
    lse = segment_logsumexp(v, idx, 3)
    np.testing.assert_allclose(lse.numpy(), [200.0, 3.0, -1e4 + math.log(2)], rtol=1e-6)
    v.requires_grad_(True)
    segment_logsumexp(v, idx, 3).sum().backward()
    np.testing.assert_allclose(v.grad.numpy(), [0.0, 1.0, 1.0, 0.5, 0.5], atol=1e-6)


def test_minet_starts_from_keras_glorot_uniform_with_zero_biases_and_maxpool_from_torch():
    torch.manual_seed(1)
    minet = get_method("minet").build(512)
    linears = [m for m in minet.modules() if isinstance(m, torch.nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(256, 512), (128, 256), (64, 128), (1, 64)]
    for m in linears:
        fan_out, fan_in = m.weight.shape
        limit = math.sqrt(6 / (fan_in + fan_out))
        w = m.weight.detach()
        assert w.abs().max() <= limit and w.abs().max() > 0.95 * limit
        assert w.var().item() == pytest.approx(limit ** 2 / 3, rel=0.15 if w.numel() > 1000 else 0.6)
        assert torch.count_nonzero(m.bias) == 0
    torch.manual_seed(1)
    maxpool = get_method("maxpool").build(512)  # PyTorch's default: kaiming-uniform(a=sqrt 5), uniform biases
    first = next(m for m in maxpool.modules() if isinstance(m, torch.nn.Linear))
    assert first.weight.abs().max() <= 1 / math.sqrt(512) and torch.count_nonzero(first.bias) > 0
    with pytest.raises(ValueError, match="init must be"):
        get_method("minet").build(8, get_method("minet").hparams({"model.init": "glorot"}))


def test_transmil_runs_in_float64_and_agrees_with_float32():
    torch.manual_seed(2)
    model = get_method("transmil").build(6).eval()
    batch = _batch([40], dtype=torch.float64)
    with torch.no_grad():
        out64 = model.double()(batch)
        out32 = model.float()(MILBatch(batch.x.float(), batch.bag_index, 1))
    assert out64.bag_logits.dtype == torch.float64
    np.testing.assert_allclose(out64.bag_logits.numpy(), out32.bag_logits.double().numpy(), rtol=1e-3, atol=1e-4)
