"""Model interface: shapes, known answers, batch invariance, the registry."""

import numpy as np
import pytest
import torch

from wsimil.io import WsimilError
from wsimil.models.base import get_method, list_methods
from wsimil.models.focusmil import FocusMIL, gaussian_kl
from wsimil.models.ops import segment_argmax, segment_max, segment_mean, segment_softmax
from wsimil.training.data import pack
from milcheck import assert_bag_alone_equals_bag_in_batch, assert_order_invariant

METHODS = list_methods()


def _bags(seed=0, dim=16, sizes=(5, 1, 12, 7)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, dim, generator=g) for n in sizes]


def test_segment_ops_known_answers():
    v = torch.tensor([1.0, 3.0, 2.0, -1.0, -5.0])
    idx = torch.tensor([0, 0, 0, 1, 1])
    assert segment_max(v, idx, 2).tolist() == [3.0, -1.0]
    assert segment_argmax(v, idx, 2).tolist() == [1, 3]
    a = segment_softmax(v, idx, 2)
    np.testing.assert_allclose(a[:3].numpy(), torch.softmax(v[:3], 0).numpy(), rtol=1e-6)
    np.testing.assert_allclose(a[3:].numpy(), torch.softmax(v[3:], 0).numpy(), rtol=1e-6)
    m = segment_mean(v.unsqueeze(-1), idx, 2).squeeze(-1)
    np.testing.assert_allclose(m.numpy(), [2.0, -3.0])


def test_segment_max_gradient_reaches_only_the_max_instance():
    v = torch.tensor([1.0, 3.0, 2.0, 4.0], requires_grad=True)
    segment_max(v, torch.tensor([0, 0, 0, 1]), 2).sum().backward()
    assert v.grad.tolist() == [0.0, 1.0, 0.0, 1.0]


def test_focusmil_kl_matches_closed_form():
    mu = torch.tensor([[0.5, -1.0]])
    logvar = torch.tensor([[0.0, np.log(4.0)]])
    # KL(N(mu, s^2) || N(0,1)) = 0.5 (mu^2 + s^2 - 1 - log s^2)
    expected = [0.5 * 0.25, 0.5 * (1 + 4 - 1 - np.log(4.0))]
    np.testing.assert_allclose(gaussian_kl(mu, logvar).numpy()[0], expected, rtol=1e-6)
    torch.testing.assert_close(gaussian_kl(torch.zeros(3, 4), torch.zeros(3, 4)), torch.zeros(3, 4))


@pytest.mark.parametrize("method", METHODS)
def test_output_shapes_and_bag_alone_equals_bag_in_batch(method):
    torch.manual_seed(0)
    model = get_method(method).build(16).eval()
    bags = _bags()
    with torch.no_grad():
        out = model(pack(bags, [1, 0, 1, 0]))
    assert out.bag_logits.shape == (4,)
    assert out.instance_scores.shape == (sum(len(b) for b in bags),)
    assert_bag_alone_equals_bag_in_batch(model, bags)


ORDER_DEPENDENT = {"transmil"}  # PPEG is a positional encoding: order matters by design (tests/test_transmil.py)


@pytest.mark.parametrize("method", [m for m in METHODS if m not in ORDER_DEPENDENT])
def test_instance_order_does_not_change_the_bag_score(method):
    torch.manual_seed(0)
    model = get_method(method).build(16).eval()
    assert_order_invariant(model, _bags(sizes=(9,))[0])


def test_max_pooling_bag_logit_is_the_max_instance_logit():
    torch.manual_seed(0)
    for name in ("maxpool", "focusmil"):
        model = get_method(name).build(16).eval()
        batch = pack(_bags(), [0, 0, 0, 0])
        with torch.no_grad():
            out = model(batch)
        for i in range(4):
            assert torch.isclose(out.bag_logits[i], out.instance_scores[batch.bag_index == i].max())


def test_focusmil_samples_in_training_and_uses_the_mean_in_eval():
    torch.manual_seed(0)
    model = FocusMIL(in_dim=16)
    batch = pack(_bags(), [1, 0, 1, 0])
    model.train()
    assert not torch.allclose(model(batch).bag_logits, model(batch).bag_logits)
    model.eval()
    torch.testing.assert_close(model(batch).bag_logits, model(batch).bag_logits)
    losses = model.train().loss(model(batch), batch)
    assert set(losses) == {"loss", "bce", "kl"}
    torch.testing.assert_close(losses["loss"], losses["bce"] + model.beta * losses["kl"])


def test_unknown_method_and_parameter_errors_list_the_choices():
    with pytest.raises(WsimilError, match="available: .*abmil"):
        get_method("attention_is_all")
    with pytest.raises(WsimilError, match="allowed: .*model.beta"):
        get_method("focusmil").hparams({"model.gamma": 1})
    with pytest.raises(WsimilError, match="unknown training parameter 'learning_rate'"):
        get_method("abmil").hparams({"learning_rate": 1})
    hp = get_method("focusmil").hparams({"lr": 0.5, "model": {"beta": 0.3}})
    assert hp["lr"] == 0.5 and hp["model"]["beta"] == 0.3
    assert get_method("focusmil").defaults["model"]["beta"] != 0.3  # defaults untouched


def test_focusmil_ablations():
    no_vib, bs1 = get_method("focusmil_no_vib"), get_method("focusmil_bs1")
    assert no_vib.defaults["bags_per_batch"] > 1 and bs1.defaults["bags_per_batch"] == 1
    assert bs1.defaults["model"]["variational"] and not no_vib.defaults["model"]["variational"]
    torch.manual_seed(0)
    model = no_vib.build(16).train()
    batch = pack(_bags(), [1, 0, 1, 0])
    torch.testing.assert_close(model(batch).bag_logits, model(batch).bag_logits)  # no sampling
    assert set(model.loss(model(batch), batch)) == {"loss", "bce"}


def test_dropout_keeps_each_element_with_probability_1_minus_p_and_scales():
    """models.layers.Dropout (the cheaper CPU mask) has nn.Dropout's distribution and contract."""
    from torch import nn

    from wsimil.models.layers import Dropout

    x = torch.ones(400, 1000, requires_grad=True)
    for p in (0.25, 0.5, 0.1):
        torch.manual_seed(0)
        y = Dropout(p).train()(x)
        kept = (y != 0).float()
        assert kept.mean().item() == pytest.approx(1 - p, abs=3e-3)  # 400k draws: sd 7e-4
        assert kept.mean(0).std().item() == pytest.approx((p * (1 - p) / 400) ** 0.5, rel=0.1)  # independent
        assert torch.allclose(y[y != 0], torch.tensor(1 / (1 - p)), rtol=1e-4)
        (g,) = torch.autograd.grad(y.sum(), x)
        assert torch.equal(g, y.detach())  # d(x * mask / keep)/dx = mask / keep
    torch.manual_seed(3)
    a = Dropout(0.25).train()(x)
    torch.manual_seed(3)
    assert torch.equal(a, Dropout(0.25).train()(x))  # the torch generator makes it reproducible
    assert torch.equal(Dropout(0.25).eval()(x), x) and torch.equal(Dropout(0.0).train()(x), x)
    assert Dropout(0.3).state_dict() == nn.Dropout(0.3).state_dict() == {}


@pytest.mark.parametrize("n_bags,limit", [(1, 1 << 24), (3, 1 << 24), (3, 10)])  # one bag, dense, scatter
def test_segment_weighted_sum_is_the_per_bag_sum_of_weighted_values(monkeypatch, n_bags, limit):
    import wsimil.models.ops as ops

    monkeypatch.setattr(ops, "_DENSE_WEIGHTS_LIMIT", limit)
    g = torch.Generator().manual_seed(0)
    idx = torch.sort(torch.randint(0, n_bags, (40,), generator=g)).values
    idx[:n_bags] = torch.arange(n_bags)  # every bag non-empty
    idx = torch.sort(idx).values
    w = torch.rand(40, generator=g, dtype=torch.float64).requires_grad_()
    v = torch.randn(40, 5, generator=g, dtype=torch.float64).requires_grad_()
    got = ops.segment_weighted_sum(w, v, idx, n_bags)
    expected = torch.stack([(w[idx == b, None] * v[idx == b]).sum(0) for b in range(n_bags)])
    torch.testing.assert_close(got, expected)
    gw, gv = torch.autograd.grad((got * torch.arange(5.0, dtype=torch.float64)).sum(), (w, v))
    ew, ev = torch.autograd.grad((expected * torch.arange(5.0, dtype=torch.float64)).sum(), (w, v))
    torch.testing.assert_close(gw, ew)
    torch.testing.assert_close(gv, ev)
