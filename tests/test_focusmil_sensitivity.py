"""The FocusMIL sensitivity study: its grid, its never-a-test-slide data, and its selection rule on hand-made
tables (the rule was fixed before the study ran; these tests fail if it drifts)."""

import pandas as pd
import pytest
import torch

from wsimil.datasets.toy import separable_bags
from wsimil.io import WsimilError
from wsimil.models.base import get_method
from wsimil.models.ops import segment_argmax
from wsimil.studies import focusmil_sensitivity as fs


def _rows(table):
    """Hand-made per-seed rows: {setting: {problem: [(val_auc, gap) per seed]}}."""
    rows = []
    for setting, probs in table.items():
        for problem, runs in probs.items():
            for seed, (val, gap) in enumerate(runs):
                rows.append({"setting": setting, "factor": setting.split("=")[0], "level": "x", "problem": problem,
                             "seed": seed, "val_auc": val, "gap": gap})
    return pd.DataFrame(rows)


def test_summary_means_over_seeds_then_over_problems():
    s = fs.summarise(_rows({"default": {"toy": [(0.5, 0.5), (0.7, 0.1)], "milunit": [(0.9, 0.0), (0.9, 0.2)],
                                        "standard": [(0.8, 0.1), (1.0, 0.1)]}}))
    row = s.iloc[0]
    assert row["val_auc_toy"] == pytest.approx(0.6) and row["gap_toy"] == pytest.approx(0.3)
    assert row["score"] == pytest.approx((0.6 + 0.9 + 0.9) / 3) and row["gap"] == pytest.approx((0.3 + 0.1 + 0.1) / 3)
    assert row["seeds"] == 2


def test_the_default_is_kept_when_it_is_within_the_margin_of_the_best():
    s = fs.summarise(_rows({"default": {"toy": [(0.90, 0.1)], "milunit": [(0.90, 0.1)]},
                            "beta=0": {"toy": [(0.91, 0.0)], "milunit": [(0.905, 0.0)]}}))
    sel = fs.select(s)
    assert sel.chosen == "default" and set(sel.tied) == {"default", "beta=0"} and "kept" in sel.reason
    assert sel.learns_toy is False  # 0.90 < 0.95


def test_outside_the_margin_the_smallest_gap_among_the_tied_wins_then_grid_order():
    s = fs.summarise(_rows({"default": {"toy": [(0.60, 0.4)], "milunit": [(0.60, 0.4)]},
                            "beta=0": {"toy": [(0.99, 0.01)], "milunit": [(0.99, 0.01)]},   # best score, gap 0.01
                            "lr=0.001": {"toy": [(0.985, 0.0)], "milunit": [(0.985, 0.0)]},  # tied, gap 0
                            "kl=sum_dims": {"toy": [(0.985, 0.0)], "milunit": [(0.985, 0.0)]},  # same gap, later
                            "latent=32": {"toy": [(0.97, -0.1)], "milunit": [(0.97, -0.1)]}}))  # not tied
    sel = fs.select(s)
    assert sel.chosen == "lr=0.001" and set(sel.tied) == {"beta=0", "lr=0.001", "kl=sum_dims"}
    assert sel.learns_toy is True and "smallest train-validation gap" in sel.reason


def test_a_setting_missing_a_problem_cannot_be_chosen():
    s = fs.summarise(_rows({"default": {"toy": [(0.7, 0.1)], "milunit": [(0.7, 0.1)]},
                            "beta=0": {"toy": [(1.0, 0.0)]}}))
    assert pd.isna(s.set_index("setting").loc["beta=0", "score"])
    assert fs.select(s).chosen == "default"
    with pytest.raises(WsimilError, match="no setting has a validation AUC on every problem"):
        fs.select(s[s["setting"] == "beta=0"])


def test_the_grid_varies_one_factor_at_a_time_and_skips_the_default_level():
    grid = fs.settings({"beta": [1e-2, 0.0], "bags_per_batch": [8, 1]})
    names = [s.name for s in grid]
    assert names[0] == "default" and "beta=0" in names and "beta=0.01" not in names
    assert "bags_per_batch=1" in names and "bags_per_batch=8" not in names
    by = {s.name: s for s in grid}
    assert by["beta=0"].overrides == {"model.beta": 0.0} and by["steps=x4"].steps_multiple == 4
    for s in grid:  # every setting is a valid FocusMIL configuration
        get_method("focusmil").hparams(s.overrides)
    with pytest.raises(WsimilError, match="unknown factor 'dropout'"):
        fs.settings({"dropout": [0.1]})


def test_a_problem_with_test_bags_is_refused():
    bags = separable_bags(n=(8, 4, 2), dim=8)
    with pytest.raises(WsimilError, match="holds test bags"):
        fs.run_setting(bags, fs.settings()[0], 0, 4, "toy")


def test_one_run_reads_train_and_val_and_obeys_the_step_budget():
    bags = separable_bags(n=(16, 8, 0), dim=8)
    row = fs.run_setting(bags, fs.Setting("steps=x2", "steps", 2, {}, 2), seed=0, max_steps=3, problem="toy")
    assert row["steps"] == 6 and row["epochs"] == 3  # 2 steps per epoch (16 bags, 8 per step)
    assert row["gap"] == pytest.approx(row["train_auc"] - row["val_auc"])


def test_kl_normalisations_on_a_hand_made_batch():
    from wsimil.models.base import MILBatch

    torch.manual_seed(0)
    x = torch.randn(5, 6)
    batch = MILBatch(x=x, bag_index=torch.tensor([0, 0, 0, 1, 1]), n_bags=2, labels=torch.tensor([0.0, 1.0]))
    losses = {}
    for kl in fs.FACTORS["kl"][1] + ("mean",):
        model = get_method("focusmil").build(6, get_method("focusmil").hparams({"model.kl": kl, "model.latent": 4}))
        model.eval()  # z = mu: the instance scores are deterministic
        out = model(batch)
        losses[kl] = (model, out, model.loss(out, batch)["kl"])
    for kl, (model, out, value) in losses.items():
        e = model.encoder(x)
        mu, logvar = model.mu(e), model.logvar(e)
        elem = 0.5 * (mu**2 + logvar.exp() - 1 - logvar)  # (5, 4)
        want = {"mean": elem.mean(), "sum_dims": elem.sum(1).mean(),
                "selected": elem[segment_argmax(out.instance_scores, batch.bag_index, 2)].mean()}[kl]
        assert value.item() == pytest.approx(want.item(), rel=1e-6), kl
    sel = segment_argmax(losses["selected"][1].instance_scores, batch.bag_index, 2)
    assert sel[0] < 3 <= sel[1]  # one instance of each bag


def test_logvar_init_sets_the_initial_sigma():
    model = get_method("focusmil").build(6, get_method("focusmil").hparams({"model.logvar_init": -8.0}))
    assert torch.all(model.logvar.bias == -8.0)
    with pytest.raises(ValueError, match="kl must be one of"):
        get_method("focusmil").build(6, get_method("focusmil").hparams({"model.kl": "sum"}))


def test_the_schema_defaults_are_the_built_in_grid():
    from wsimil.config import validate_config
    import yaml

    cfg = validate_config(yaml.safe_load(open("config.yaml")))
    factors = validate_config({"dataset": {"name": "x", "source": "synthetic"}})["focusmil_sensitivity"]["factors"]
    assert {f: tuple(v) for f, v in factors.items()} == {f: levels for f, (_, levels) in fs.FACTORS.items()}
    assert "focusmil_sensitivity" in cfg["experiments"]
