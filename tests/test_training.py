"""The training loop: it learns a separable MIL problem, is deterministic, and writes the run contract."""

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from wsimil.datasets.toy import separable_bags
from wsimil.features.store import write_features
from wsimil.models.base import list_methods
from wsimil.training.data import BagSet, batches_by_size, pack
from wsimil.training.loop import safe_auc, train
from wsimil.training.run import load_model, train_and_write


def toy_bags(seed=0, n=(40, 12, 24), dim=32, witness_shift=6.0) -> BagSet:
    """Positive bags hold 1-3 instances of a shifted concept among N(0, I) negatives."""
    return separable_bags(seed, n, dim, witness_shift)


# FocusMIL was a strict xfail here with PyTorch's log-variance init (sigma ~ 1: the sampled max picks random
# instances and it memorised the toy); with the sensitivity study's logvar_init -8 it learns it (docs/methods.md).
@pytest.mark.parametrize("method", list_methods())
def test_every_method_learns_a_separable_mil_problem(method):
    bags = toy_bags(n=(100, 20, 40))
    fast = {"maxpool": {"lr": 1e-3}, "meanpool": {"lr": 1e-3}, "focusmil": {"lr": 1e-3}, "minet": {"lr": 5e-3},
            "focusmil_no_vib": {"lr": 1e-3}, "focusmil_bs1": {"lr": 1e-3},
            # published lr 1e-4 is too slow for this budget (dsmil: train AUC 0.67 after 25 epochs; causalmil:
            # 128 bags per step = one step per epoch); tests/test_dsmil.py and test_causalmil.py keep the
            # published settings as strict xfails
            "dsmil": {"lr": 1e-2}, "causalmil": {"lr": 1e-3, "bags_per_batch": 8},
            "clam_sb": {"early_stopping": None}, "clam_mb": {"early_stopping": None},
            # full width costs ~1 s per bag step on this CPU; the published optimiser on a narrower model
            "transmil": {"early_stopping": None,
                         "model": {"hidden": 64, "heads": 4, "dim_head": 16, "num_landmarks": 16}}}
    result = train(bags, method, seed=0, overrides={"epochs": 25, **fast.get(method, {})})
    from wsimil.training.loop import predict

    test = bags.indices("test")
    auc = safe_auc(bags.labels[test], predict(result.model, bags, test).probs)
    assert auc >= 0.95, f"{method}: test AUC {auc:.3f}"
    assert len(result.history) == 25 and 0 <= result.best_epoch < 25


def test_same_seed_same_numbers_different_seed_different_numbers():
    bags = toy_bags()
    a = train(bags, "focusmil", seed=3, overrides={"epochs": 3})
    b = train(bags, "focusmil", seed=3, overrides={"epochs": 3})
    c = train(bags, "focusmil", seed=4, overrides={"epochs": 3})
    assert a.history == b.history
    assert a.history != c.history


def test_batches_by_size_and_pack():
    assert batches_by_size([5, 5, 5, 20, 1], 10) == [[0, 1], [2], [3], [4]]
    b = pack([torch.zeros(2, 3), torch.ones(3, 3)], [0, 1])
    assert b.bag_index.tolist() == [0, 0, 1, 1, 1] and b.n_bags == 2 and b.labels.tolist() == [0.0, 1.0]


def test_train_and_write_produces_the_run_directory_contract(tmp_path):
    bags = toy_bags(n=(8, 4, 4))
    fdir = tmp_path / "features"
    for sid, x in zip(bags.slide_ids, bags.features):
        write_features(fdir / f"{sid}.h5", x.numpy().astype(np.float16), np.zeros((len(x), 2), int))
    sheet = pd.DataFrame({"slide_id": bags.slide_ids, "label": bags.labels, "split": bags.splits,
                          "center": "0", "path": "", "annotation": ""})
    outs = [tmp_path / "runs" / f"seed{s}" for s in (0, 1)]
    train_and_write(sheet, fdir, "abmil", [0, 1], outs, overrides={"epochs": 2}, meta={"experiment": "toy"},
                    progress=False)
    for out in outs:
        pred = pd.read_csv(out / "predictions.csv")
        assert list(pred.columns) == ["slide_id", "label", "split", "score"]
        assert pred["slide_id"].tolist() == bags.slide_ids and pred["score"].between(0, 1).all()
        with h5py.File(out / "instance_scores.h5") as f:
            assert sorted(f) == sorted(bags.slide_ids)
            assert all(f[s].shape == (len(x),) for s, x in zip(bags.slide_ids, bags.features))
        hist = pd.read_csv(out / "history.csv")
        assert len(hist) == 2 and {"train_loss", "train_auc", "val_auc", "val_loss"} <= set(hist.columns)
        meta = json.loads((out / "run.json").read_text())
        assert meta["method"] == "abmil" and meta["experiment"] == "toy" and "torch" in meta["versions"]
        model = load_model(out / "model.pt")
        with torch.no_grad():
            logit = model(pack([bags.features[0].half().float()], [0])).bag_logits
        assert abs(torch.sigmoid(logit).item() - pred["score"][0]) < 1e-4
    assert not list((tmp_path / "runs").glob(".*")), "temporary run directories left behind"


def test_lookahead_moves_slow_weights_halfway_every_k_steps():
    from wsimil.training.optim import Lookahead

    w = torch.nn.Parameter(torch.zeros(1))
    opt = Lookahead(torch.optim.SGD([w], lr=1.0), k=2, alpha=0.5)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[10], gamma=0.1)  # schedulers accept it
    for _ in range(2):
        opt.zero_grad()
        (-w).sum().backward()  # gradient -1: each SGD step adds 1
        opt.step()
        sched.step()
    assert w.item() == pytest.approx(1.0)  # fast weights reached 2, slow moved halfway from 0


def test_early_stopping_and_multistep_schedule():
    from wsimil.training.loop import EarlyStopping, make_optimizer, make_schedulers
    from wsimil.models.base import get_method

    stop = EarlyStopping(monitor="val_loss", patience=2, min_epochs=4)
    losses = [1.0, 0.9, 0.95, 0.97, 0.99, 0.98]
    stopped = [stop.step(e, {"val_loss": v}) for e, v in enumerate(losses)]
    assert stopped == [False, False, False, True, True, True]
    hp = get_method("abmil").hparams({"scheduler": "multistep", "lr_milestones": [2], "lr_gamma": 0.2, "lr": 1.0})
    model = get_method("abmil").build(4, hp)
    opt = make_optimizer(model, hp)
    _, per_epoch = make_schedulers(opt, hp)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        per_epoch.step()
    assert lrs == pytest.approx([1.0, 1.0, 0.2, 0.2])


def test_early_stopping_ends_training_before_the_last_epoch():
    bags = toy_bags(n=(20, 10, 4))
    # lr 0: the validation loss never improves after epoch 0 -> stop once patience and min_epochs allow
    stop = {"monitor": "val_loss", "patience": 1, "min_epochs": 3}
    res = train(bags, "maxpool", 0, {"epochs": 50, "lr": 0.0, "early_stopping": stop})
    assert len(res.history) == 3
    res = train(bags, "maxpool", 0, {"epochs": 50, "lr": 0.0, "early_stopping": {**stop, "patience": 4}})
    assert len(res.history) == 5


def _sheet_with_features(tmp_path, n=6, dim=4):
    from wsimil.training.data import load_bags  # noqa: F401  (imported by the callers)

    rows = []
    for i in range(n):
        sid = f"s{i}"
        write_features(tmp_path / f"{sid}.h5", np.ones((3, dim), np.float16) * i, np.zeros((3, 2), int))
        rows.append({"slide_id": sid, "label": i % 2, "split": "train", "center": "0", "path": "", "annotation": ""})
    return pd.DataFrame(rows)


def test_bad_bags_stop_with_the_slide_named(tmp_path):
    import h5py

    from wsimil.io import WsimilError
    from wsimil.training.data import load_bags

    sheet = _sheet_with_features(tmp_path)
    write_features(tmp_path / "s2.h5", np.ones((3, 5), np.float16), np.zeros((3, 2), int))
    with pytest.raises(WsimilError, match=r"files are 4-d, but \S*s2\.h5 \(5\)"):
        load_bags(sheet, tmp_path)
    write_features(tmp_path / "s2.h5", np.ones((3, 4), np.float16), np.zeros((3, 2), int))
    write_features(tmp_path / "s0.h5", np.ones((3, 6), np.float16), np.zeros((3, 2), int))  # the first file read
    with pytest.raises(WsimilError, match=r"files are 4-d, but \S*s0\.h5 \(6\)$"):
        load_bags(sheet, tmp_path)
    write_features(tmp_path / "s0.h5", np.ones((3, 4), np.float16), np.zeros((3, 2), int))
    write_features(tmp_path / "s2.h5", np.full((3, 4), np.nan, np.float32), np.zeros((3, 2), int))
    with pytest.raises(WsimilError, match=r"slide s2: .*NaN"):
        load_bags(sheet, tmp_path)
    write_features(tmp_path / "s2.h5", np.full((3, 4), np.inf, np.float32), np.zeros((3, 2), int))
    with pytest.raises(WsimilError, match=r"slide s2: .*infinite"):
        load_bags(sheet, tmp_path)
    (tmp_path / "s2.h5").unlink()
    with pytest.raises(WsimilError, match=r"slide s2: feature file not found"):
        load_bags(sheet, tmp_path)
    bad_label = _sheet_with_features(tmp_path)
    bad_label.loc[1, "label"] = 2
    with pytest.raises(WsimilError, match=r"slide s1: label 2"):
        load_bags(bad_label, tmp_path)
    sheet = _sheet_with_features(tmp_path)
    with h5py.File(tmp_path / "s3.h5", "w") as f:  # an empty bag: excluded with a warning, recorded
        f.create_dataset("features", data=np.zeros((0, 4), np.float16))
    bags = load_bags(sheet, tmp_path)
    assert "s3" not in bags.slide_ids and "no patches" in bags.excluded["s3"] and len(bags.slide_ids) == 5


def test_micro_batched_step_has_the_whole_steps_gradient(monkeypatch):
    """CausalMIL's loss is a mean over bags: a step split into micro-batches accumulates the same gradient."""
    from wsimil.models.causalmil import CausalMIL
    from wsimil.training import loop

    bags = toy_bags(n=(12, 0, 0), dim=16)
    idx = np.arange(12)
    torch.manual_seed(0)
    model = CausalMIL(in_dim=16, hidden=8, latent=4).eval()  # eval: no sampling, no dropout
    whole = pack([bags.features[i] for i in idx], bags.labels[idx])
    out = model(whole)
    model.loss(out, whole)["loss"].backward()
    expected = [p.grad.clone() for p in model.parameters()]

    monkeypatch.setattr(loop, "STEP_MAX_INSTANCES", 100)
    chunks = loop.step_chunks(model, [len(bags.features[i]) for i in idx])
    assert len(chunks) > 2 and sorted(np.concatenate(chunks)) == list(range(12))
    micro = [pack([bags.features[i] for i in c], bags.labels[c]) for c in chunks]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    logits, losses = loop.train_step(model, opt, micro, {"grad_clip": None}, n_bags=12)
    for got, want in zip((p.grad for p in model.parameters()), expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(logits, out.bag_logits.detach())
    torch.testing.assert_close(losses["loss"], model.loss(out, whole)["loss"].detach(), rtol=1e-5, atol=1e-6)


def test_a_step_of_a_model_whose_loss_is_not_a_bag_mean_cannot_be_split():
    from wsimil.models.base import get_method
    from wsimil.training import loop

    bags = toy_bags(n=(4, 0, 0), dim=8)
    model = get_method("focusmil").build(8)  # its KL term is a mean over instances, not bags
    assert loop.step_chunks(model, [10**6, 10**6]) == [[0, 1]]
    micro = [pack([bags.features[i]], bags.labels[[i]]) for i in range(2)]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with pytest.raises(ValueError, match="focusmil: its loss is not a mean over bags"):
        loop.train_step(model, opt, micro, {"grad_clip": None}, n_bags=2)


def test_step_budget_gives_a_1_bag_and_an_8_bag_method_the_same_optimiser_steps():
    """training.max_steps: the same number of updates whatever the bags per step (the default's fair budget)."""
    from wsimil.models.base import get_method
    from wsimil.training.loop import step_budget

    one = step_budget(60, {**get_method("abmil").hparams(), "max_steps": 480})
    eight = step_budget(60, {**get_method("maxpool").hparams(), "max_steps": 480})
    assert (one.steps_per_epoch, one.epochs, one.total_steps) == (60, 8, 480)
    assert (eight.steps_per_epoch, eight.epochs, eight.total_steps) == (8, 60, 480)
    # not a multiple of an epoch: the last epoch is cut short, the total is still the cap
    cut = step_budget(60, {**get_method("maxpool").hparams(), "max_steps": 100})
    assert (cut.epochs, cut.total_steps) == (13, 100)
    # a published schedule shorter than the cap keeps its own length (dsmil: 50 epochs of 10 bags)
    short = step_budget(10, {**get_method("dsmil").hparams(), "max_steps": 10_000})
    assert (short.epochs, short.total_steps) == (50, 500)
    with pytest.raises(ValueError, match="max_steps"):
        step_budget(60, {**get_method("abmil").hparams(), "max_steps": 0})


@pytest.mark.parametrize("method", ["abmil", "maxpool"])
def test_training_takes_exactly_max_steps_and_records_them(method):
    bags = toy_bags(n=(20, 8, 8), dim=16)
    res = train(bags, method, 0, {"max_steps": 23})
    assert res.steps == 23 and res.history[-1]["steps"] == 23
    per_epoch = 20 if method == "abmil" else 3  # 20 train bags at 1 or 8 bags per step
    assert len(res.history) == -(-23 // per_epoch) == res.planned_epochs == res.hparams["epochs"]
    assert [r["steps"] for r in res.history][:-1] == [per_epoch * (k + 1) for k in range(len(res.history) - 1)]
    assert res.selected_last_epoch == (res.best_epoch == len(res.history) - 1)
    best = res.history[res.best_epoch]["val_auc"]
    assert res.val_auc_ties == sum(r["val_auc"] == best for r in res.history) - 1


@pytest.mark.parametrize("method", ["abmil", "maxpool"])
def test_scoring_with_a_trained_model_equals_training_again_on_the_same_slides(tmp_path, method):
    """The synthetic ood cell scores its held-out-hospital slides with the standard cell's models (wsimil score)
    because training again on the same training and validation slides with the same seed gives the same model:
    checked here, bit for bit, against a run trained on the sheet with the other test slides."""
    from wsimil.training.run import score_and_write

    bags = toy_bags(n=(12, 6, 6), dim=16)
    other = toy_bags(seed=5, n=(0, 0, 6), dim=16)  # other test slides (another "hospital")
    both = BagSet(bags.slide_ids[:18] + [f"x{i}" for i in range(6)], np.r_[bags.labels[:18], other.labels],
                  np.r_[bags.splits[:18], other.splits], bags.features[:18] + other.features)
    over = {"max_steps": 17}
    train_and_write(None, tmp_path, method, [3], [tmp_path / "a"], over, progress=False, bags=bags)
    train_and_write(None, tmp_path, method, [3], [tmp_path / "b"], over, progress=False, bags=both)
    score_and_write(tmp_path / "a", tmp_path / "scored", both, meta={"experiment": "ood"})
    trained, scored = (pd.read_csv(tmp_path / d / "predictions.csv") for d in ("b", "scored"))
    pd.testing.assert_frame_equal(trained, scored)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "b" / "history.csv"), pd.read_csv(tmp_path / "scored" / "history.csv"))
    meta = json.loads((tmp_path / "scored" / "run.json").read_text())
    assert meta["scored_with"] == str(tmp_path / "a") and meta["optimizer_steps"] == 17 and meta["experiment"] == "ood"
    with h5py.File(tmp_path / "b" / "instance_scores.h5") as f, h5py.File(tmp_path / "scored" / "instance_scores.h5") as g:
        for sid in both.slide_ids:
            np.testing.assert_array_equal(f[sid][()], g[sid][()])
