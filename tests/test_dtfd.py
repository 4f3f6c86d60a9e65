"""DTFD-MIL: known answers, tier isolation, pseudo-bags, distillation, batch invariance, learning."""

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wsimil.models.base import get_method
from wsimil.models.dtfd import DISTILL, DTFDMIL, array_split_chunk
from wsimil.training.data import pack

sys.path.insert(0, str(Path(__file__).parent))
from test_training import toy_bags  # noqa: E402

NAMES = [f"dtfd_{d}" for d in DISTILL]


def _bags(seed=0, dim=16, sizes=(9, 1, 14, 6, 3)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, dim, generator=g) for n in sizes]


def _tier_params(model):
    t1 = [p for m in model.tier1_modules() for p in m.parameters()]
    t2 = [p for m in model.tier2_modules() for p in m.parameters()]
    return t1, t2


def test_registry_defaults_are_the_official_ones():
    for name in NAMES:
        spec = get_method(name)
        hp = spec.defaults
        assert spec.family == "attention"
        assert (hp["optimizer"], hp["lr"], hp["weight_decay"], hp["epochs"]) == ("adam", 1e-4, 1e-4, 200)
        assert (hp["scheduler"], hp["lr_milestones"], hp["lr_gamma"]) == ("multistep", [100], 0.2)
        assert (hp["grad_clip"], hp["bags_per_batch"]) == (5.0, 1)
        assert hp["model"]["distill"] == name.split("_", 1)[1] and hp["model"]["n_pseudo_bags"] == 4
    model = get_method("dtfd_afs").build(1024)
    assert model.reduce[0].bias is None and model.reduce[0].weight.shape == (512, 1024)
    assert model.classifier1.weight.shape == (2, 512) and model.classifier2.weight.shape == (2, 512)
    assert model.attention1.a[0].weight.shape == (128, 512)
    groups = model.param_groups()  # DimReduction, Tier-1 attention, Tier-1 classifier, Tier 2
    assert len(groups) == 4
    flat = [id(p) for g in groups for p in g]
    assert len(flat) == len(set(flat)) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="distill"):
        DTFDMIL(in_dim=4, distill="maxmin")


def test_array_split_chunk_matches_numpy():
    for n in range(0, 23):
        for m in (1, 2, 3, 4, 7):
            expected = np.concatenate([np.full(len(c), j) for j, c in enumerate(np.array_split(np.arange(n), m))])
            got = array_split_chunk(torch.arange(n), torch.full((n,), n), m)
            assert got.tolist() == expected.astype(int).tolist(), (n, m)


def test_instance_logits_are_classifier_weights_times_weighted_features_known_answer():
    """get_cam_1d: logit_k^c = W_c . (a_k h_k), no bias. Uniform attention (zero scorer) gives a_k = 1/n."""
    model = DTFDMIL(in_dim=2, hidden=2, attention_hidden=2, n_pseudo_bags=1).eval()
    with torch.no_grad():
        model.reduce[0].weight.copy_(torch.eye(2))
        model.attention1.c.weight.zero_()
        model.attention1.c.bias.zero_()
        model.classifier1.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, -1.0]]))
        model.classifier1.bias.copy_(torch.tensor([5.0, -5.0]))  # must not enter the instance logits
        x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0], [2.0, 2.0]])
        out = model(pack([x], [1]))
    # cam_1 - cam_0 = (h_k0 - h_k1) / 4
    torch.testing.assert_close(out.extras["cam_logit"], torch.tensor([0.25, -0.5, 0.5, 0.0]))
    torch.testing.assert_close(out.instance_scores, torch.sigmoid(torch.tensor([0.25, -0.5, 0.5, 0.0])))
    # Tier-1 pseudo-bag logit: W (mean h) + b -> (0, 1.5 - 1.25) + (5, -5): diff = 0.25 - 10
    torch.testing.assert_close(out.extras["tier1_logits"], torch.tensor([-9.75]))


def test_instance_logits_match_an_independent_computation():
    torch.manual_seed(1)
    model = DTFDMIL(in_dim=5, hidden=6, attention_hidden=3, n_pseudo_bags=2).eval()
    x = torch.randn(7, 5)
    with torch.no_grad():
        out = model(pack([x], [0]))
    p = {k: v.double().numpy() for k, v in model.state_dict().items()}
    xs, group = x.double().numpy(), out.extras["pseudo_bag"].numpy()
    h = np.maximum(xs @ p["reduce.0.weight"].T, 0)
    v = np.tanh(h @ p["attention1.a.0.weight"].T + p["attention1.a.0.bias"])
    u = 1 / (1 + np.exp(-(h @ p["attention1.b.0.weight"].T + p["attention1.b.0.bias"])))
    s = (v * u) @ p["attention1.c.weight"][0] + p["attention1.c.bias"][0]
    for g in np.unique(group):
        ks = np.flatnonzero(group == g)
        a = np.exp(s[ks] - s[ks].max())
        a /= a.sum()
        cam = (a[:, None] * h[ks]) @ p["classifier1.weight"].T  # (n, 2)
        prob = np.exp(cam) / np.exp(cam).sum(1, keepdims=True)
        np.testing.assert_allclose(out.instance_scores[ks].numpy(), prob[:, 1], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out.extras["cam_logit"][ks].numpy(), cam[:, 1] - cam[:, 0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("distill", DISTILL)
def test_each_tier_gets_only_its_own_gradient(distill):
    torch.manual_seed(0)
    model = DTFDMIL(in_dim=16, distill=distill).train()
    batch = pack(_bags(), [1, 0, 1, 0, 1])
    t1, t2 = _tier_params(model)
    model.loss(model(batch), batch)["bce"].backward()  # Tier-2 loss alone
    assert all(p.grad is None or not p.grad.any() for p in t1)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in t2)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    model.loss(model(batch), batch)["tier1_bce"].backward()  # Tier-1 loss alone
    assert all(p.grad is None or not p.grad.any() for p in t2)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.reduce.parameters())


def test_one_adam_over_the_groups_steps_like_the_two_official_optimisers():
    """The loop's step (total loss, per-group clipping, one Adam) vs the official one (loss0 -> clip the
    three Tier-1 modules -> Adam0; loss1 -> clip Tier 2 -> Adam1). Small clip so that clipping is active."""
    torch.manual_seed(0)
    a = DTFDMIL(in_dim=16, distill="maxmins").train()
    b = copy.deepcopy(a)
    batch = pack(_bags()[:1], [1])
    clip = 0.05
    opt_a = torch.optim.Adam([{"params": g} for g in a.param_groups()], lr=1e-2, weight_decay=1e-4)
    t1_b, t2_b = _tier_params(b)
    opt0 = torch.optim.Adam(t1_b, lr=1e-2, weight_decay=1e-4)
    opt1 = torch.optim.Adam(t2_b, lr=1e-2, weight_decay=1e-4)
    for step in range(4):
        torch.manual_seed(step)
        losses = a.loss(a(batch), batch)
        opt_a.zero_grad(set_to_none=True)
        losses["loss"].backward()
        for g in a.param_groups():
            torch.nn.utils.clip_grad_norm_(g, clip)
        opt_a.step()

        torch.manual_seed(step)
        losses = b.loss(b(batch), batch)
        opt0.zero_grad()
        losses["tier1_bce"].backward(retain_graph=True)
        for m in b.tier1_modules():
            torch.nn.utils.clip_grad_norm_(m.parameters(), clip)
        opt0.step()
        opt1.zero_grad()
        losses["bce"].backward()
        torch.nn.utils.clip_grad_norm_(t2_b, clip)
        opt1.step()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7, msg=name)
    assert not torch.equal(a.classifier2.weight, DTFDMIL(in_dim=16).classifier2.weight)


def _sizes_of(group, bag, m):
    return torch.bincount(group[group // m == bag] - bag * m, minlength=m).tolist()


def test_pseudo_bags_partition_each_bag_into_near_equal_parts_redrawn_every_training_forward():
    torch.manual_seed(0)
    model = DTFDMIL(in_dim=16).train()
    bags = _bags(sizes=(9, 1, 14, 6, 3, 40))
    batch = pack(bags, [0] * len(bags))
    g1 = model.pseudo_bags(batch)
    for b, x in enumerate(bags):
        assert ((g1[batch.bag_index == b] // 4) == b).all()  # each instance in one pseudo-bag of its own bag
        assert _sizes_of(g1, b, 4) == [len(c) for c in np.array_split(np.arange(len(x)), 4)]
    g2 = model.pseudo_bags(batch)
    assert not torch.equal(g1, g2)  # re-drawn
    torch.manual_seed(5)
    g3 = model.pseudo_bags(batch)
    torch.manual_seed(5)
    assert torch.equal(g3, model.pseudo_bags(batch))  # only the global RNG


def test_training_split_is_uniform():
    torch.manual_seed(0)
    model = DTFDMIL(in_dim=4).train()
    batch = pack([torch.randn(8, 4)], [1])
    counts = torch.zeros(8, 4)
    for _ in range(2000):
        counts[torch.arange(8), model.pseudo_bags(batch)] += 1
    freq = counts / 2000
    assert (freq - 0.25).abs().max() < 0.05


@pytest.mark.parametrize("name", NAMES)
def test_eval_is_deterministic_batch_and_order_invariant(name):
    torch.manual_seed(0)
    model = get_method(name).build(16).eval()
    bags = _bags()
    batch = pack(bags, [1, 0, 1, 0, 1])
    with torch.no_grad():
        out = model(batch)
        again = model(batch)
        torch.testing.assert_close(out.bag_logits, again.bag_logits, rtol=0, atol=0)
        start = 0
        for i, b in enumerate(bags):
            alone = model(pack([b], [0]))
            torch.testing.assert_close(alone.bag_logits[0], out.bag_logits[i], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(alone.instance_scores, out.instance_scores[start : start + len(b)], rtol=1e-5, atol=1e-6)
            assert _sizes_of(out.extras["pseudo_bag"], i, 4) == _sizes_of(alone.extras["pseudo_bag"], 0, 4)
            start += len(b)
        b = bags[2]
        perm = torch.randperm(len(b))
        a, p = model(pack([b], [1])), model(pack([b[perm]], [1]))
    torch.testing.assert_close(a.bag_logits, p.bag_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.instance_scores[perm], p.instance_scores, rtol=1e-5, atol=1e-6)
    # the eval split is still a near-equal partition
    assert _sizes_of(a.extras["pseudo_bag"], 0, 4) == [4, 4, 3, 3]


def test_eval_split_is_not_ordered_by_content():
    """The eval split ranks instances by a projection, then permutes the ranks: pseudo-bags must not be
    contiguous slices of that ranking (they would group similar instances)."""
    model = DTFDMIL(in_dim=8).eval()
    x = torch.randn(400, 8, generator=torch.Generator().manual_seed(0))
    group = model.pseudo_bags(pack([x], [1]))
    g = torch.Generator().manual_seed(model.eval_seed)
    rank = torch.argsort(torch.argsort(x.double() @ torch.randn(8, generator=g, dtype=torch.float64)))
    means = [rank[group == j].double().mean().item() for j in range(4)]
    assert all(abs(m - 199.5) < 40 for m in means), means  # contiguous slices: 49.5, 149.5, 249.5, 349.5


@pytest.mark.parametrize("distill", DISTILL)
def test_tier2_input_is_what_the_official_code_distils(distill):
    torch.manual_seed(0)
    model = DTFDMIL(in_dim=16, distill=distill).eval()
    bags = _bags(sizes=(10, 7))
    batch = pack(bags, [1, 0])
    with torch.no_grad():
        out = model(batch)
        h = model.reduce(batch.x)
        scores = model.attention1(h)
    group, cam, a = out.extras["pseudo_bag"], out.extras["cam_logit"], out.extras["attention"]
    rows = []
    for g in range(8):
        ks = torch.nonzero(group == g).squeeze(-1)
        if distill == "afs":
            rows.append((a[ks, None] * h[ks]).sum(0))
        elif distill == "maxs":
            rows.append(h[ks[cam[ks].argmax()]])
        elif distill == "mas":
            rows.append(h[ks[scores[ks].argmax()]])
        else:
            rows += [h[ks[cam[ks].argmax()]], h[ks[cam[ks].argmin()]]]
    expected = torch.stack(rows)
    per_pb = 2 if distill == "maxmins" else 1
    assert out.extras["tier2_input"].shape == (8 * per_pb, 512)  # MaxMinS: 2 rows of 512 per pseudo-bag
    assert out.extras["tier2_bag_index"].tolist() == [0] * 4 * per_pb + [1] * 4 * per_pb
    torch.testing.assert_close(out.extras["tier2_input"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("distill", DISTILL)
def test_bags_smaller_than_m_get_singleton_pseudo_bags(distill):
    torch.manual_seed(0)
    model = DTFDMIL(in_dim=16, distill=distill)
    bags = _bags(sizes=(1, 2, 3, 5))
    batch = pack(bags, [1, 0, 1, 0])
    for mode in (True, False):
        model.train(mode)
        out = model(batch)
        losses = model.loss(out, batch)
        assert torch.isfinite(out.bag_logits).all() and torch.isfinite(out.instance_scores).all()
        assert all(torch.isfinite(v) for v in losses.values())
        for b, x in enumerate(bags[:3]):  # one pseudo-bag per instance
            assert sorted(_sizes_of(out.extras["pseudo_bag"], b, 4)) == [0] * (4 - len(x)) + [1] * len(x)
        per_pb = 2 if distill == "maxmins" else 1
        assert len(out.extras["tier2_input"]) == per_pb * (1 + 2 + 3 + 4)
    losses["loss"].backward()


@pytest.mark.parametrize("name", NAMES)
def test_every_distillation_learns_the_toy_problem(name):
    from wsimil.training.loop import predict, safe_auc, train

    bags = toy_bags(n=(100, 20, 40))
    result = train(bags, name, 0, {"epochs": 25})
    test = bags.indices("test")
    auc = safe_auc(bags.labels[test], predict(result.model, bags, test).probs)
    assert auc >= 0.95, f"{name}: test AUC {auc:.3f}"


def test_predict_returns_the_tier1_score_of_every_pseudo_bag():
    """The ablation's Tier-1 AUC is over pseudo-bags (the official test loop): predict keeps them per slide."""
    from wsimil.training.data import BagSet
    from wsimil.training.loop import predict

    torch.manual_seed(0)
    feats = [torch.randn(n, 6) for n in (9, 2, 12)]  # the 2-instance bag has only 2 non-empty pseudo-bags
    bags = BagSet(["a", "b", "c"], np.array([1, 0, 1]), np.array(["test"] * 3), feats)
    model = get_method("dtfd_afs").build(6, get_method("dtfd_afs").hparams({"model": {"n_pseudo_bags": 4}}))
    pred = predict(model, bags, np.arange(3))
    assert [len(g) for g in pred.group_scores] == [4, 2, 4]
    with torch.no_grad():
        model.eval()
        alone = model(pack([feats[2]], [1]))
    want = torch.sigmoid(alone.extras["tier1_logits"]).numpy()
    np.testing.assert_allclose(pred.group_scores[2], want, rtol=1e-5, atol=1e-6)
    assert predict(get_method("abmil").build(6), bags, np.arange(3)).group_scores is None
