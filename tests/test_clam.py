"""CLAM-SB / CLAM-MB: instance pseudo-labels, the smooth top-1 SVM, the loss, batching, learning a toy."""

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from wsimil.models.base import get_method
from wsimil.models.clam import CLAMMB, CLAMSB, smooth_top1_svm, top_bottom_pseudo_labels
from wsimil.training.data import pack
from milcheck import assert_bag_alone_equals_bag_in_batch, assert_order_invariant
from wsimil.training.loop import predict, safe_auc, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_training import toy_bags  # noqa: E402

CLAMS = ("clam_sb", "clam_mb")


def _bags(seed=0, dim=16, sizes=(5, 1, 12, 7)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, dim, generator=g) for n in sizes]


def _softplus(v):
    return math.log1p(math.exp(v))


def test_top_k_attended_get_1_bottom_k_get_0():
    a = torch.tensor([0.1, 5.0, -3.0, 2.0, 0.5, -1.0, 4.0, -2.0, 0.0])
    idx, y = top_bottom_pseudo_labels(a, 2)
    assert y.tolist() == [1, 1, 0, 0]
    assert set(idx[:2].tolist()) == {1, 6} and set(idx[2:].tolist()) == {2, 7}
    idx, y = top_bottom_pseudo_labels(a, 8)  # 9 instances: k capped at 4, the two sets stay disjoint
    assert y.tolist() == [1] * 4 + [0] * 4
    assert set(idx[:4].tolist()) == {1, 6, 3, 4} and set(idx[4:].tolist()) == {2, 7, 5, 8}
    idx, y = top_bottom_pseudo_labels(a[:1], 8)
    assert idx.numel() == 0 and y.numel() == 0


def test_smooth_top1_svm_matches_its_closed_form():
    x = torch.tensor([[2.0, 0.5], [0.0, 3.0], [1.0, 1.0]])
    y = torch.tensor([0, 0, 1])
    # two classes: softplus(alpha - (s_y - s_other)) with alpha = tau = 1
    expected = (_softplus(1 - 1.5) + _softplus(1 + 3.0) + _softplus(1 + 0.0)) / 3
    assert smooth_top1_svm(x, y).item() == pytest.approx(expected, rel=1e-6)
    # general form, three classes, alpha 0.5, tau 2: tau * log sum_j exp((s_j + alpha [j != y] - s_y) / tau)
    s, t = [0.3, -1.0, 2.0], 1
    terms = [(s[j] + 0.5 * (j != t) - s[t]) / 2.0 for j in range(3)]
    expected = 2.0 * math.log(sum(math.exp(v) for v in terms))
    assert smooth_top1_svm(torch.tensor([s]), torch.tensor([t]), alpha=0.5, tau=2.0).item() == pytest.approx(expected)
    # top-2 gap >= tau * log(1000): the hard (hinge) value, as topk.svm.SmoothTop1SVM switches
    assert smooth_top1_svm(torch.tensor([[10.0, 0.0]]), torch.tensor([1])).item() == pytest.approx(11.0)
    assert smooth_top1_svm(torch.tensor([[10.0, 0.0]]), torch.tensor([0])).item() == 0.0
    assert smooth_top1_svm(torch.tensor([[6.0, 0.0]]), torch.tensor([0])).item() == pytest.approx(_softplus(-5.0))


@pytest.mark.parametrize("cls", [CLAMSB, CLAMMB])
@pytest.mark.parametrize("instance_loss", ["svm", "ce"])
def test_total_loss_is_0_7_bag_plus_0_3_instance_on_a_hand_made_case(cls, instance_loss):
    torch.manual_seed(0)
    model = cls(in_dim=6, instance_loss=instance_loss).eval()
    with torch.no_grad():  # constant heads: every logit is its bias
        inst_biases = {0: (0.4, -0.3), 1: (-0.2, 0.9)}  # class c's instance classifier
        for c, (b0, b1) in inst_biases.items():
            model.instance_classifiers[c].weight.zero_()
            model.instance_classifiers[c].bias.copy_(torch.tensor([b0, b1]))
        if cls is CLAMSB:
            model.classifiers.weight.zero_()
            model.classifiers.bias.copy_(torch.tensor([0.2, 1.0]))
        else:
            for c, b in enumerate((0.2, 1.0)):
                model.classifiers[c].weight.zero_()
                model.classifiers[c].bias.fill_(b)
    bags = _bags(dim=6, sizes=(20, 30))
    batch = pack(bags, [1, 0])
    with torch.no_grad():
        losses = model.loss(model(batch), batch)
    # bag: 2-class CE with logits (0.2, 1.0); label 1 -> softplus(-0.8), label 0 -> softplus(0.8)
    bag = (_softplus(-0.8) + _softplus(0.8)) / 2
    # instance: 8 pseudo-positives + 8 pseudo-negatives on the true class's classifier (b0, b1)
    def inst(b0, b1):
        if instance_loss == "svm":  # softplus(1 - margin)
            return (_softplus(1 - (b1 - b0)) + _softplus(1 - (b0 - b1))) / 2
        return (_softplus(-(b1 - b0)) + _softplus(b1 - b0)) / 2  # CE
    instance = (inst(*inst_biases[1]) + inst(*inst_biases[0])) / 2
    assert losses["bce"].item() == pytest.approx(bag, rel=1e-5)
    assert losses["instance"].item() == pytest.approx(instance, rel=1e-5)
    assert losses["loss"].item() == pytest.approx(0.7 * bag + 0.3 * instance, rel=1e-5)


@pytest.mark.parametrize("cls", [CLAMSB, CLAMMB])
def test_loss_recomputed_from_the_definition(cls):
    """Random weights: the bag CE on the 2-class logits and the instance loss from A_raw's top/bottom 8."""
    torch.manual_seed(1)
    model = cls(in_dim=16).eval()
    bags = _bags(sizes=(40, 3, 25))
    labels = [1, 0, 0]
    batch = pack(bags, labels)
    with torch.no_grad():
        out = model(batch)
        losses = model.loss(out, batch)
        ce = F.cross_entropy(out.extras["class_logits"], torch.tensor(labels))
        per_bag = []
        for b, y in zip(bags, labels):
            h = model.fc(b)
            a = model.attention(h)
            a = a[:, y] if cls is CLAMMB else a
            k = min(8, len(b) // 2)
            top, bottom = a.argsort(descending=True)[:k], a.argsort()[:k]
            logits = model.instance_classifiers[y](torch.cat([h[top], h[bottom]]))
            per_bag.append(smooth_top1_svm(logits, torch.tensor([1] * k + [0] * k)))
        inst = torch.stack(per_bag).mean()
    torch.testing.assert_close(losses["bce"], ce)
    torch.testing.assert_close(losses["instance"], inst)
    torch.testing.assert_close(losses["loss"], 0.7 * ce + 0.3 * inst)


def test_clam_mb_instance_score_is_the_tumour_branch_attention():
    torch.manual_seed(0)
    model = CLAMMB(in_dim=16).eval()
    b = _bags(sizes=(10,))[0]
    with torch.no_grad():
        out = model(pack([b], [1]))
        a = model.attention(model.fc(b))
    assert a.shape == (10, 2)
    torch.testing.assert_close(out.instance_scores, a[:, 1])
    assert not torch.allclose(out.instance_scores, a[:, 0])
    torch.testing.assert_close(out.extras["attention_raw"], a)
    # bag logit: class c pools with its own softmax and scores with its own Linear(512, 1)
    h = model.fc(b)
    with torch.no_grad():
        l = [model.classifiers[c](torch.softmax(a[:, c], 0) @ h) for c in (0, 1)]
    torch.testing.assert_close(out.bag_logits, l[1] - l[0])


def test_clam_sb_instance_score_is_a_raw():
    torch.manual_seed(0)
    model = CLAMSB(in_dim=16).eval()
    b = _bags(sizes=(10,))[0]
    with torch.no_grad():
        out = model(pack([b], [1]))
        h = model.fc(b)
        a = model.attention(h)
        l = model.classifiers(torch.softmax(a, 0) @ h)
    torch.testing.assert_close(out.instance_scores, a)
    torch.testing.assert_close(out.bag_logits, (l[1] - l[0]).reshape(1))


@pytest.mark.parametrize("method", CLAMS)
def test_bag_alone_equals_bag_in_batch_and_order_does_not_matter(method):
    torch.manual_seed(0)
    model = get_method(method).build(16).eval()
    bags = _bags()
    assert_bag_alone_equals_bag_in_batch(model, bags)
    assert_order_invariant(model, _bags(sizes=(9,))[0])
    with torch.no_grad():  # eval is deterministic; training mode samples dropout
        torch.testing.assert_close(model(pack(bags, [1, 0, 1, 0])).bag_logits, model(pack(bags, [1, 0, 1, 0])).bag_logits)
    model.train()
    batch = pack(bags, [1, 0, 1, 0])
    assert not torch.allclose(model(batch).bag_logits, model(batch).bag_logits)


@pytest.mark.parametrize("method", CLAMS)
def test_instance_loss_reaches_only_the_true_class_instance_classifier(method):
    torch.manual_seed(0)
    model = get_method(method).build(16)
    batch = pack(_bags(sizes=(20, 30)), [1, 1])
    model.loss(model(batch), batch)["instance"].backward()
    assert model.instance_classifiers[1].weight.grad.abs().sum() > 0
    assert model.instance_classifiers[0].weight.grad is None  # not subtyping: no out-of-class term


def test_registered_defaults_are_the_published_ones():
    for method in CLAMS:
        hp = get_method(method).hparams()
        assert (hp["optimizer"], hp["lr"], hp["weight_decay"], hp["epochs"], hp["bags_per_batch"]) == (
            "adam", 2e-4, 1e-5, 200, 1)
        assert hp["early_stopping"] == {"monitor": "val_loss", "patience": 20, "min_epochs": 52}
        assert hp["model"] == dict(hidden=512, attention_hidden=256, dropout=0.25, k_sample=8, bag_weight=0.7,
                                   instance_loss="svm", subtyping=False, xavier_init=True)
    with pytest.raises(ValueError, match="instance_loss"):
        CLAMSB(in_dim=4, instance_loss="hinge")


@pytest.fixture
def one_thread():
    """One-slide steps are tiny matrix products: a second intra-op thread only adds synchronisation, which
    on a loaded 2-core machine made this test take minutes instead of ~30 s."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("method", CLAMS)
def test_clam_learns_a_separable_mil_problem(method, one_thread):
    bags = toy_bags(n=(100, 20, 40))
    result = train(bags, method, 0, {"epochs": 25, "early_stopping": None})
    test = bags.indices("test")
    auc = safe_auc(bags.labels[test], predict(result.model, bags, test).probs)
    assert auc >= 0.95, f"{method}: test AUC {auc:.3f}"
    assert len(result.history) == 25 and "train_instance" in result.history[0]
