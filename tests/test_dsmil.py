"""DSMIL: known answers for the dual-stream forward and loss, packed-batch invariance, the toy problem."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsimil.models.base import get_method
from wsimil.models.dsmil import DSMIL
from wsimil.training.data import pack
from milcheck import assert_bag_alone_equals_bag_in_batch, assert_order_invariant
from wsimil.training.loop import predict, safe_auc, train

sys.path.insert(0, str(Path(__file__).parent))
from test_training import toy_bags  # noqa: E402


def _bags(seed=0, dim=16, sizes=(5, 1, 12, 7)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, dim, generator=g) for n in sizes]


def _hand_model(**kwargs) -> DSMIL:
    """d = 2, q = identity (one Linear, 2-d queries), instance logit = x_0, bag logit = b_0 - b_1 + 0.5."""
    model = DSMIL(in_dim=2, query_dim=2, nonlinear=False, init="pytorch", **kwargs).eval()
    with torch.no_grad():
        model.instance_classifier.weight.copy_(torch.tensor([[1.0, 0.0]]))
        model.instance_classifier.bias.zero_()
        model.q.weight.copy_(torch.eye(2))
        model.q.bias.zero_()
        model.fcc.weight.copy_(torch.tensor([[1.0, -1.0]]))
        model.fcc.bias.fill_(0.5)
    return model


def _softmax(v):
    e = [math.exp(x - max(v)) for x in v]
    return [x / sum(e) for x in e]


def test_hand_made_bag_attention_bag_logit_and_loss():
    model = _hand_model()
    # bag 0: instance logits x_0 = (2, 0, 1) -> critical instance 0, q_m = (2, 0);
    # bag 1: a single instance (-1, 3) -> attention 1.
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 3.0]])
    batch = pack([x[:3], x[3:]], [1, 0])
    out = model(batch)
    a0 = _softmax([4 / math.sqrt(2), 0.0, 2 / math.sqrt(2)])  # q_n . q_m / sqrt(2)
    np.testing.assert_allclose(out.extras["attention"].detach().numpy(), a0 + [1.0], rtol=1e-6)
    assert out.extras["critical"].tolist() == [0, 3]
    bag0 = a0[0] * 2 + a0[1] * -1 + a0[2] * 0 + 0.5  # sum_n A_n (x_n0 - x_n1) + 0.5
    bag1 = -1 - 3 + 0.5
    np.testing.assert_allclose(out.bag_logits.detach().numpy(), [bag0, bag1], rtol=1e-6)
    np.testing.assert_allclose(out.instance_scores.detach().numpy(), [2.0, 0.0, 1.0, -1.0])
    np.testing.assert_allclose(out.extras["max_instance"].detach().numpy(), [2.0, -1.0])

    def bce(z, y):
        return -(y * math.log(1 / (1 + math.exp(-z))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-z))))

    losses = model.loss(out, batch)
    bag_term = (bce(bag0, 1) + bce(bag1, 0)) / 2
    max_term = (bce(2.0, 1) + bce(-1.0, 0)) / 2
    assert losses["loss"].item() == pytest.approx(0.5 * bag_term + 0.5 * max_term, rel=1e-6)
    assert losses["bce"].item() == pytest.approx(bag_term, rel=1e-6)
    assert losses["max_bce"].item() == pytest.approx(max_term, rel=1e-6)


def test_forward_matches_an_independent_per_bag_computation_of_the_official_graph():
    """Per bag as dsmil.py does it: torch.sort for the critical instance, softmax over the bag, Conv1d."""
    torch.manual_seed(1)
    model = DSMIL(in_dim=16).eval()
    bags = _bags()
    with torch.no_grad():
        out = model(pack(bags, [1, 0, 1, 0]))
        start = 0
        for i, h in enumerate(bags):
            c = h @ model.instance_classifier.weight.T + model.instance_classifier.bias  # (n, 1)
            _, order = torch.sort(c, 0, descending=True)
            q = model.q(h)  # (n, 128)
            a = torch.softmax(q @ model.q(h[order[0]]).T / math.sqrt(128), 0)  # (n, 1)
            b = (a.T @ h).view(1, 1, -1)  # (1, C=1, d)
            logit = F.conv1d(b, model.fcc.weight.view(1, 1, -1), model.fcc.bias).view(())
            torch.testing.assert_close(out.extras["attention"][start : start + len(h)], a[:, 0])
            torch.testing.assert_close(out.bag_logits[i], logit)
            torch.testing.assert_close(out.extras["max_instance"][i], c.max())
            start += len(h)


@pytest.mark.parametrize("values", ["identity", "linear_relu", "linear"])
def test_bag_alone_equals_bag_in_batch_and_order_does_not_matter(values):
    torch.manual_seed(0)
    model = DSMIL(in_dim=16, values=values, dropout_v=0.25).eval()
    bags = _bags()
    assert_bag_alone_equals_bag_in_batch(model, bags, extras=("attention",))
    assert_order_invariant(model, bags[2])
    perm = torch.randperm(12)
    with torch.no_grad():
        a, p = model(pack([bags[2]], [1])), model(pack([bags[2][perm]], [1]))
    torch.testing.assert_close(a.extras["attention"][perm], p.extras["attention"], rtol=1e-5, atol=1e-6)


def test_the_bag_stream_sends_no_gradient_to_the_instance_classifier():
    """The critical instance is an index (dsmil.py sorts c): only the max-instance BCE trains stream 1."""
    torch.manual_seed(0)
    model = DSMIL(in_dim=16).train()
    batch = pack(_bags(), [1, 0, 1, 0])
    losses = model.loss(model(batch), batch)
    losses["bag_bce"].backward(retain_graph=True)
    assert model.instance_classifier.weight.grad is None or not model.instance_classifier.weight.grad.any()
    assert model.q[0].weight.grad.abs().sum() > 0 and model.fcc.weight.grad.abs().sum() > 0
    model.zero_grad()
    losses["max_bce"].backward()
    assert model.instance_classifier.weight.grad.abs().sum() > 0
    assert model.q[0].weight.grad is None or not model.q[0].weight.grad.any()


def test_orthogonal_init_dropout_only_in_training_and_average_score():
    torch.manual_seed(0)
    model = DSMIL(in_dim=16, values="linear", dropout_v=0.5)
    for layer in (model.q[0], model.q[2], model.v[1]):
        w = layer.weight
        small = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        torch.testing.assert_close(small, torch.eye(small.shape[0]), atol=1e-5, rtol=0)
        assert not layer.bias.any()
    assert model.fcc.weight.norm().item() == pytest.approx(1.0, rel=1e-5) and model.fcc.bias.item() == 0.0
    batch = pack(_bags(), [1, 0, 1, 0])
    assert not torch.allclose(model.train()(batch).bag_logits, model(batch).bag_logits)  # dropout on v
    model.eval()
    torch.testing.assert_close(model(batch).bag_logits, model(batch).bag_logits)
    avg = DSMIL(in_dim=16, average=True).eval()
    out = avg(batch)
    expected = 0.5 * torch.sigmoid(out.extras["bag_stream"]) + 0.5 * torch.sigmoid(out.extras["max_instance"])
    torch.testing.assert_close(torch.sigmoid(out.bag_logits), expected)


def test_registered_defaults_are_the_official_training_setup():
    spec = get_method("dsmil")
    hp = spec.hparams()
    assert (hp["optimizer"], hp["lr"], tuple(hp["betas"]), hp["weight_decay"]) == ("adam", 1e-4, (0.5, 0.9), 1e-3)
    assert (hp["scheduler"], hp["epochs"], hp["bags_per_batch"], hp["grad_clip"]) == ("cosine", 50, 1, None)
    assert spec.family == "attention"
    model = spec.build(512)
    assert model.fcc.weight.shape == (1, 512) and isinstance(model.v, torch.nn.Identity)


@pytest.fixture
def one_thread():
    """One intra-op thread for the one-bag-per-step loops: on a shared 2-core machine two threads spin-wait
    each other and run ~10x slower (measured: 5 epochs 4 s with one thread, 54 s with two)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _toy_auc(overrides):
    bags = toy_bags(n=(100, 20, 40))
    result = train(bags, "dsmil", 0, overrides)
    test = bags.indices("test")
    return safe_auc(bags.labels[test], predict(result.model, bags, test).probs), result


def test_learns_the_toy_problem_with_a_toy_sized_learning_rate(one_thread):
    auc, result = _toy_auc({"epochs": 25, "lr": 1e-2})
    assert auc >= 0.95, f"dsmil: test AUC {auc:.3f}"
    assert len(result.history) == 25


@pytest.mark.xfail(
    strict=True,
    reason="observed: with the published lr 1e-4 (Adam betas 0.5/0.9, one bag per step) 25 epochs = 2,500 "
    "steps are too few on this 32-d toy: train AUC 0.67, test AUC 0.42 (50 epochs: train 0.80, test 0.43); "
    "lr 5e-3 or 1e-2 reaches test AUC >= 0.97 on 3 seeds x 2 toy draws. Strict: fails loudly once it learns.",
)
def test_learns_the_toy_problem_with_the_published_learning_rate(one_thread):
    auc, _ = _toy_auc({"epochs": 25})
    assert auc >= 0.95, f"dsmil: test AUC {auc:.3f}"
