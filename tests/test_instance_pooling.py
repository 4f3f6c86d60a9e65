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


def test_each_heatmap_score_is_the_quantity_its_caption_names():
    """On a hand-made bag: DSMIL's instance score is the instance classifier's logit and its map the attention
    to the critical instance (summing to 1); DTFD's instance score is the Grad-CAM probability
    sigmoid(a_k h_k . (W1 - W0)) and its map the Tier-1 attention a_k; CLAM-MB's map is A_raw of the predicted
    class; ABMIL shows one quantity."""
    torch.manual_seed(3)
    batch = _batch([9, 4], dim=6)
    ds = get_method("dsmil").build(6).eval()
    with torch.no_grad():
        out = ds(batch)
        maps = ds.score_maps(out, batch)
        c = ds.instance_classifier(batch.x)
    assert type(ds).instance_score_name == "instance logit" and set(maps) == {"attention"}
    a = maps["attention"]
    for b in range(2):
        assert a[batch.bag_index == b].sum().item() == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(out.instance_scores, c.reshape(-1))

    dt = get_method("dtfd_afs").build(6).eval()
    with torch.no_grad():
        out = dt(batch)
        maps = dt.score_maps(out, batch)
        h = dt.reduce(batch.x)
        w = dt.classifier1.weight
    att = maps["attention"]
    torch.testing.assert_close(out.instance_scores, torch.sigmoid(att * (h @ (w[1] - w[0]))), rtol=1e-5, atol=1e-6)
    assert type(dt).instance_score_name == "Grad-CAM probability"

    mb = get_method("clam_mb").build(6).eval()
    with torch.no_grad():
        out = mb(batch)
        maps = mb.score_maps(out, batch)
    pred = out.extras["class_logits"].argmax(1)
    want = torch.stack([out.extras["attention_raw"][i, pred[batch.bag_index[i]]] for i in range(len(batch.x))])
    torch.testing.assert_close(maps["A_raw, predicted class"], want)
    torch.testing.assert_close(out.instance_scores, out.extras["attention_raw"][:, 1])
    assert get_method("abmil").build(6).score_maps(get_method("abmil").build(6)(batch), batch) == {}
