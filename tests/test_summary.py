"""SUMMARY.md's claims: paired intervals and three-valued verdicts on hand-made run directories (no training)."""

import json

import numpy as np
import pandas as pd
import pytest

from wsimil.config import validate_config
from wsimil.experiments import plan_cells
from wsimil.reporting import evidence as ev
from wsimil.reporting.summary import findings, paper_vs_reproduced

METHODS = ["maxpool", "focusmil", "abmil", "dtfd_afs"]
ATTENTION = {"abmil", "dtfd_afs"}
SEEDS = [0, 1, 2, 3, 4]  # a claim is decided on at least evidence.MIN_SEEDS seeds


def _config(**extra):
    return validate_config({"training": {"methods": METHODS, "seeds": SEEDS}, "experiments": ["standard", "poison"],
                            **extra})


def _write_run(root, cell, method, seed, slides, labels, splits, scores, **meta):
    d = root / "runs" / cell / method / f"seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"slide_id": slides, "label": labels, "split": splits, "score": scores}).to_csv(
        d / "predictions.csv", index=False)
    (d / "run.json").write_text(json.dumps({"method": method, "seed": seed, **meta}))


def _test_slides(n_pos=20, n_neg=20):
    slides = [f"test_{i:03d}" for i in range(n_pos + n_neg)]
    labels = np.array([1] * n_pos + [0] * n_neg)
    return slides, labels


def _cells(root, poisoned_inverted: set[str], rng_seed=0):
    """Clean: every method ranks the slides well (AUC ~0.95); poisoned: the methods in ``poisoned_inverted``
    rank them backwards (AUC ~0.05), the others as on clean data."""
    slides, labels = _test_slides()
    rng = np.random.default_rng(rng_seed)
    good = np.clip(labels * 0.6 + rng.uniform(0, 0.55, len(labels)), 0, 1)
    for m in METHODS:
        for seed in SEEDS:
            _write_run(root, "standard", m, seed, slides, labels, ["test"] * len(labels), good)
            _write_run(root, "poison", m, seed, slides, labels, ["test"] * len(labels),
                       1 - good if m in poisoned_inverted else good)


def _metrics(root):
    rows = [{"experiment": c, "method": m, "seed": s, "slide_auc": 0.9, "slide_accuracy_youden_test": 0.8}
            for c in ("standard", "poison") for m in METHODS for s in SEEDS]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("inverted, expected", [
    (ATTENTION, "supported"),                   # attention follows the poison, max-pooling does not
    ({"maxpool", "focusmil"}, "contradicted"),  # the other way round
    (set(), "inconclusive"),                    # nobody moves: the paired difference is exactly 0
])
def test_the_poison_verdict_follows_its_rule(tmp_path, inverted, expected):
    _cells(tmp_path, inverted)
    (claim,) = [c for c in ev.claims(_config(), tmp_path) if c.key == "poison"]
    assert claim.verdict == expected
    if not inverted:
        assert claim.interval.low == claim.interval.high == claim.interval.estimate == 0.0
    else:
        assert abs(claim.interval.estimate) > 0.5 and claim.interval.low <= claim.interval.estimate <= claim.interval.high
    text = "\n".join(findings(_config(), _metrics(tmp_path), tmp_path))
    poison = next(p for p in text.split("\n") if p.startswith("**FocusMIL: max-pooling resists"))
    assert f"Verdict: **{expected}**" in poison and str(claim.interval) in poison
    assert "Clean data (standard)" in text


def test_auc_intervals_are_of_the_seed_averaged_score(tmp_path):
    slides, labels = _test_slides(3, 3)
    # seed 0 and seed 1 each misrank one pair; their average ranks every slide right
    s0 = np.array([0.9, 0.8, 0.3, 0.4, 0.2, 0.1])
    s1 = np.array([0.9, 0.2, 0.8, 0.3, 0.25, 0.1])
    for seed, s in ((0, s0), (1, s1)):
        _write_run(tmp_path, "standard", "maxpool", seed, slides, labels, ["test"] * 6, s)
    cell = plan_cells(validate_config({"training": {"methods": ["maxpool"], "seeds": [0, 1]},
                                       "experiments": ["standard"]}))[0]
    iv = ev.auc_intervals(tmp_path, cell, [0, 1]).iloc[0]
    assert iv["slide_auc_seedavg"] == 1.0 and iv["slide_auc_ci_low"] == iv["slide_auc_ci_high"] == 1.0
    assert (iv["n_test"], iv["n_test_pos"]) == (6, 3)


def test_ood_change_is_paired_on_the_held_out_hospital_copies(tmp_path):
    cfg = validate_config({"training": {"methods": METHODS, "seeds": SEEDS}, "experiments": ["standard", "ood"],
                           "synthetic": {"slides": {"train": {"normal": 2, "tumour": 2}, "val": {"normal": 1, "tumour": 1},
                                                    "test": {"normal": 6, "tumour": 6}},
                                         "held_out_hospitals": [2]}})
    from wsimil.slides.synthetic import plan_dataset

    plan = plan_dataset(cfg["synthetic"])
    test = plan[(plan["split"] == "test") & ~plan["external"]]
    ext = plan[plan["external"]]
    y = test["label"].to_numpy()
    score = y * 0.5 + np.linspace(0.1, 0.4, len(y))
    for m in METHODS:
        for sd in SEEDS:
            _write_run(tmp_path, "standard", m, sd, list(test["slide_id"]), y, ["test"] * len(y), score)
            # max-pooling unchanged at the unseen hospital, attention loses its ranking
            _write_run(tmp_path, "ood", m, sd, list(ext["slide_id"]), y, ["test"] * len(y),
                       (1 - score) if m in ATTENTION else score)
    (claim,) = [c for c in ev.claims(cfg, tmp_path) if c.key == "ood"]
    assert "paired on the 12 test slides and their copies" in claim.contrast
    assert claim.verdict == "supported" and claim.interval.estimate == pytest.approx(1.0)


def test_mi_net_gap_claim_all_three_outcomes(tmp_path):
    cfg = validate_config({"training": {"methods": ["maxpool"], "seeds": SEEDS}, "experiments": ["minet_curves"],
                           "minet_curves": {"betas": []}})
    n = 30
    labels = np.array([1, 0] * (n // 2))
    good = labels * 0.6 + np.linspace(0, 0.3, n)

    def outcome(minet_val_good: bool, focus_val_good: bool) -> str:
        for m, val_good in (("minet", minet_val_good), ("focusmil", focus_val_good)):
            slides = [f"tr{i}" for i in range(n)] + [f"va{i}" for i in range(n)]
            val = good if val_good else 1 - good
            for sd in SEEDS:
                _write_run(tmp_path, "minet_curves", m, sd, slides, np.r_[labels, labels],
                           ["train"] * n + ["val"] * n, np.r_[good, val])
        (c,) = [c for c in ev.claims(cfg, tmp_path) if c.key == "minet_gap"]
        return c.verdict

    assert outcome(False, True) == "supported"      # mi-Net fits train, fails val; FocusMIL generalises
    assert outcome(True, False) == "contradicted"
    assert outcome(True, True) == "inconclusive"


def test_milunit_separates_did_not_learn_from_learned_the_poison(tmp_path):
    cfg = validate_config({"training": {"methods": ["maxpool", "abmil", "dsmil"], "seeds": [0]},
                           "experiments": ["milunit"]})
    n = 40
    labels = np.array([1, 0] * (n // 2))
    good = labels * 0.6 + np.linspace(0, 0.3, n)
    noise = np.linspace(0, 1, n)[np.random.default_rng(0).permutation(n)]
    slides = [f"val_{i:04d}" for i in range(n)] + [f"test_{i:04d}" for i in range(n)]
    for m, (val, test) in {"maxpool": (good, good), "abmil": (good, 1 - good), "dsmil": (noise, 1 - good)}.items():
        _write_run(tmp_path, "milunit", m, 0, slides, np.r_[labels, labels], ["val"] * n + ["test"] * n, np.r_[val, test])
    r = ev.milunit_readings(tmp_path, plan_cells(cfg)[0], [0]).set_index("method")["reading"]
    assert r.to_dict() == {"maxpool": "respects the MIL assumption", "abmil": "learned the poison",
                           "dsmil": "did not learn the task"}


def test_equivalence_verdict():
    iv = ev.Interval
    assert ev.equivalence_verdict(iv(0.0, -0.03, 0.04), 0.05) == "supported"
    assert ev.equivalence_verdict(iv(-0.2, -0.3, -0.1), 0.05) == "contradicted"
    assert ev.equivalence_verdict(iv(0.2, 0.1, 0.3), 0.05) == "contradicted"
    assert ev.equivalence_verdict(iv(0.0, -0.1, 0.04), 0.05) == "inconclusive"
    assert ev.equivalence_verdict(iv(float("nan"), float("nan"), float("nan")), 0.05) == "inconclusive"


def test_convergence_is_judged_on_the_loss_trajectories(tmp_path):
    """A cell is not converged when more than a quarter of its runs ended with the loss still falling or too short
    to tell; selecting the last epoch no longer flags it. Blind selections and undertrained runs are counted."""
    cfg = validate_config({"training": {"methods": ["maxpool", "abmil"], "seeds": [0, 1]}, "experiments": ["standard"]})

    def cell(runs):
        for (m, s), meta in zip([("maxpool", 0), ("maxpool", 1), ("abmil", 0), ("abmil", 1)], runs):
            _write_run(tmp_path, "standard", m, s, ["a"], [0], ["test"], [0.1], optimizer_steps=480, **meta)
        return ev.convergence(tmp_path, plan_cells(cfg), [0, 1]).iloc[0]

    done = dict(epochs_run=40, loss_plateaued=True, selected_last_epoch=True, final_train_auc=0.99)
    conv = cell([done, done, {**done, "val_auc_ties": 2, "selection_blind": True}, {**done, "final_train_auc": 0.6}])
    assert (conv["runs"], conv["selected_last_epoch"], conv["selected_tied_val_auc"], conv["selection_blind"],
            conv["undertrained"], conv["loss_still_falling"], conv["too_short_to_tell"]) == (4, 4, 1, 1, 1, 0, 0)
    assert not conv["not_converged"] and conv["steps_min"] == conv["steps_max"] == 480
    falling = {**done, "loss_plateaued": False}
    conv = cell([done, done, done, falling])  # one in four: not more than a quarter
    assert conv["loss_still_falling"] == 1 and not conv["not_converged"]
    conv = cell([done, done, falling, {**done, "epochs_run": 8, "loss_plateaued": False}])
    assert (conv["loss_still_falling"], conv["too_short_to_tell"]) == (1, 1) and conv["not_converged"]


def test_the_captions_quote_the_protocols_numbers():
    from pathlib import Path

    from wsimil.training.loop import PLATEAU_MIN_DELTA, PLATEAU_WINDOW

    text = " ".join((Path(__file__).parents[1] / "report" / "captions" / "convergence.rst").read_text().split())
    assert f"the last {PLATEAU_WINDOW} epochs more than {PLATEAU_MIN_DELTA:.0%} below the {PLATEAU_WINDOW} before" in text
    assert f"fewer than {2 * PLATEAU_WINDOW} epochs" in text and ev.NOT_CONVERGED_SHARE == 0.25 and "a quarter" in text
    claims = " ".join((Path(__file__).parents[1] / "report" / "captions" / "claims.rst").read_text().split())
    assert f"at most {ev.ALPHA} on at least {ev.MIN_SEEDS} fitted seeds" in claims and f"({ev.MARGIN} AUC)" in claims


def test_paper_table_names_its_sources_and_shows_summarys_numbers(tmp_path):
    """The reproduced slide AUC is the seed-averaged one with SUMMARY's interval (not the seeds' mean); the
    accuracy is named the mean of seeds; the poison finding has one row per method; every row names its source
    and says it was not checked against the paper."""
    _cells(tmp_path, ATTENTION)
    df = pd.DataFrame([{"experiment": e, "method": m, "seed": s, "slide_auc": 0.5, "slide_accuracy_youden_test": 0.7 + s / 10}
                       for e in ("standard", "poison") for m in METHODS for s in (0, 1)])
    table = paper_vs_reproduced(_config(), df, tmp_path)
    std = ev.auc_intervals(tmp_path, plan_cells(_config())[0], [0, 1]).set_index("method")
    c16 = table[(table["dataset"] == "CAMELYON16") & table["metric"].str.startswith("test slide AUC of seed-averaged")].iloc[0]
    assert c16["published"] == 0.946 and c16["n_seeds"] == 2 and "different data" in c16["note"]
    assert (c16["reproduced_seedavg"], c16["reproduced_ci_low"], c16["reproduced_ci_high"]) == tuple(
        std.loc["dtfd_afs", ["slide_auc_seedavg", "slide_auc_ci_low", "slide_auc_ci_high"]])
    acc = table[(table["dataset"] == "CAMELYON16") & table["metric"].str.startswith("accuracy")].iloc[0]
    assert acc["metric"].endswith("mean of seeds") and acc["reproduced_seedavg"] == pytest.approx(0.75)
    assert "arXiv 2203.12081" in c16["source"] and c16["checked against the paper"].startswith("no")
    pois = table[table["paper"].str.startswith("FocusMIL")].set_index("method")
    assert list(pois.index) == [f"{m} ({'attention' if m in ATTENTION else 'max-pooling'})" for m in METHODS]
    assert pois.loc["abmil (attention)", "published"] == "near 0"
    assert pois.loc["abmil (attention)", "reproduced_seedavg"] < 0.2 < 0.8 < pois.loc["maxpool (max-pooling)", "reproduced_seedavg"]
    assert all("2408.09449" in x for x in pois["source"])
    cfg = _config()
    same = paper_vs_reproduced({**cfg, "dataset": {**cfg["dataset"], "name": "camelyon16"}}, df, tmp_path)
    assert same.iloc[0]["note"] == "same dataset"


def _patch_cells(root, cfg, good: set[str]):
    """Test tumour slides with 40 patches each (10 with tumour, 4 of them partial); the methods in ``good`` score
    a patch by its tumour (plus noise), the others at random. Feature files hold the tumour fractions."""
    import h5py

    from wsimil.experiments import features_subdir

    slides, labels = _test_slides(8, 8)
    feats = root / features_subdir(cfg, "clean")
    feats.mkdir(parents=True)
    rng = np.random.default_rng(3)
    tf = {}
    for s, y in zip(slides, labels):
        tf[s] = np.zeros(40, dtype=np.float32)
        if y:
            tf[s][:6], tf[s][6:10] = 1.0, 0.2
        with h5py.File(feats / f"{s}.h5", "w") as f:
            f["features"] = np.zeros((40, 4), np.float32)
            f["tumor_fraction"] = tf[s]
    from wsimil.features.store import write_manifest

    write_manifest({s: feats / f"{s}.h5" for s in slides}, root / "manifests" / "clean.tsv")
    for m in METHODS:
        for seed in SEEDS:
            _write_run(root, "standard", m, seed, slides, labels, ["test"] * len(labels), labels * 0.5 + 0.2)
            with h5py.File(root / "runs" / "standard" / m / f"seed{seed}" / "instance_scores.h5", "w") as f:
                for s in slides:
                    noise = rng.normal(0, 0.3, 40)
                    f[s] = ((tf[s] > 0) + noise) if m in good else noise


@pytest.mark.parametrize("good, expected", [({"maxpool", "focusmil"}, "supported"), (ATTENTION, "contradicted"),
                                            (set(), "inconclusive")])
def test_the_patch_claim_pairs_every_method_on_the_same_tumour_slides(tmp_path, good, expected):
    cfg = validate_config({"training": {"methods": METHODS, "seeds": SEEDS}, "experiments": ["standard"]})
    _patch_cells(tmp_path, cfg, good)
    (claim,) = [c for c in ev.claims(cfg, tmp_path) if c.key == "patch"]
    assert claim.verdict == expected, claim
    assert "320 patches of the 8 test tumour slides" in claim.contrast
    iv = claim.interval
    assert iv.low <= iv.estimate <= iv.high
    if good:  # a perfect-ish scorer (AUC ~0.99) against chance
        assert abs(iv.estimate) > 0.35
    else:
        assert abs(iv.estimate) < 0.15 and iv.low < 0 < iv.high
    # feature files deleted after training: the claim says why it cannot be checked
    for p in (tmp_path / "features").rglob("*.h5"):
        p.unlink()
    (claim,) = [c for c in ev.claims(cfg, tmp_path) if c.key == "patch"]
    assert claim.verdict == "inconclusive" and "feature files of the test tumour slides" in claim.rule
    assert "is missing: the manifest is stale" in claim.rule


# ----------------------------------------------------------------------------- pairs, seeds, Holm, the fit gate


def test_a_family_claim_carried_by_one_method_is_not_supported(tmp_path):
    """Only dtfd_afs follows the poison: its two pairs are supported, abmil's are not, and leaving dtfd_afs out
    leaves no supported pair, so the family claim is inconclusive and says which method carries it."""
    _cells(tmp_path, {"dtfd_afs"})
    (claim,) = [c for c in ev.claims(_config(), tmp_path) if c.key == "poison"]
    by_pair = {r.label: r.verdict for r in claim.readings}
    assert by_pair == {"maxpool vs abmil": "inconclusive", "maxpool vs dtfd_afs": "supported",
                       "focusmil vs abmil": "inconclusive", "focusmil vs dtfd_afs": "supported"}
    assert claim.verdict == "inconclusive" and "only with dtfd_afs" in claim.why
    rows = claim.rows()
    assert [r["level"] for r in rows] == ["claim"] + ["pair"] * 4
    assert rows[0]["pair"] == "family (4 pairs)" and rows[0]["verdict"] == "inconclusive"
    # the family interval is the mean over the pairs (each attention method's loss once per max-pooling method)
    assert claim.interval.estimate == pytest.approx(np.mean([r.interval.estimate for r in claim.readings]))


def test_fewer_than_the_minimum_seeds_decides_nothing(tmp_path):
    _cells(tmp_path, ATTENTION)
    cfg = _config(training={"methods": METHODS, "seeds": SEEDS[: ev.MIN_SEEDS - 1]})
    (claim,) = [c for c in ev.claims(cfg, tmp_path) if c.key == "poison"]
    assert {r.verdict for r in claim.readings} == {"inconclusive"} and claim.verdict == "inconclusive"
    assert all(f"fewer than {ev.MIN_SEEDS}" in r.note and np.isnan(r.p_holm) for r in claim.readings)
    assert all(r.interval.low > ev.MARGIN for r in claim.readings)  # the interval alone would have decided


def test_an_undertrained_run_is_left_out_with_its_seed(tmp_path):
    seeds = SEEDS + [5]
    _cells(tmp_path, ATTENTION)
    slides, labels = _test_slides()
    good = np.clip(labels * 0.6 + np.random.default_rng(0).uniform(0, 0.55, len(labels)), 0, 1)
    for m in METHODS:  # a sixth seed
        _write_run(tmp_path, "standard", m, 5, slides, labels, ["test"] * len(labels), good)
        _write_run(tmp_path, "poison", m, 5, slides, labels, ["test"] * len(labels), 1 - good if m in ATTENTION else good)
    _write_run(tmp_path, "poison", "abmil", 2, slides, labels, ["test"] * len(labels), 1 - good,
               fits_training_set=False, final_train_auc=0.61)
    cfg = _config(training={"methods": METHODS, "seeds": seeds})
    (claim,) = [c for c in ev.claims(cfg, tmp_path) if c.key == "poison"]
    r = {r.label: r for r in claim.readings}
    assert r["maxpool vs abmil"].seeds == 5 and r["maxpool vs abmil"].left_out == ("poison/abmil/seed2",)
    assert r["maxpool vs dtfd_afs"].seeds == 6 and r["maxpool vs dtfd_afs"].left_out == ()
    assert claim.verdict == "supported"
    gone = ev.undertrained(tmp_path, [c for c in plan_cells(cfg) if c.name == "poison"], seeds)
    assert gone.to_dict("records") == [{"cell": "poison", "method": "abmil", "seed": 2, "final_train_auc": 0.61}]
    # below the minimum once the undertrained seed is gone: abmil's pairs are not decided
    cfg = _config(training={"methods": METHODS, "seeds": SEEDS})
    (claim,) = [c for c in ev.claims(cfg, tmp_path) if c.key == "poison"]
    assert {x.label for x in claim.readings if x.verdict == "supported"} == {"maxpool vs dtfd_afs", "focusmil vs dtfd_afs"}


def _reading(draws, seeds=5):
    from wsimil.evaluation.intervals import Interval

    d = np.asarray(draws, float)
    return ev.Reading("a vs b", Interval(float(d.mean()), *np.quantile(d, [0.025, 0.975])), d, seeds)


def test_holm_over_the_readings_of_one_summary():
    """Three readings whose unadjusted decision p is 0.04 (one-sided support p 0.02): each alone is supported,
    together none survives Holm (3 x 0.04 > 0.05); the p-values are the add-one bootstrap shares."""
    n = 999
    draws = np.r_[np.full(19, 0.0), np.full(n - 19, 0.2)]  # 19 of 999 at or below the margin: p = 20 / 1000
    one = ev.Claim("x", "x", "x", _reading(draws).interval, ev.MARGIN, 1, "inconclusive", "r", (_reading(draws),))
    (alone,) = ev.adjust([one])
    assert alone.readings[0].p_support == pytest.approx(0.02) and alone.readings[0].p_holm == pytest.approx(0.04)
    assert alone.verdict == "supported"
    three = ev.adjust([one, one, one])
    assert [c.readings[0].p_holm for c in three] == pytest.approx([0.12] * 3)
    assert {c.verdict for c in three} == {"inconclusive"}
    # contradiction by the same test, the other way
    (against,) = ev.adjust([ev.Claim("y", "y", "y", one.interval, ev.MARGIN, -1, "inconclusive", "r", (_reading(draws),))])
    assert against.verdict == "contradicted"


def test_seed_to_seed_variation_widens_the_interval(tmp_path):
    """Attention follows the poison in one seed of five only: the slides-only interval of the seeds' mean is
    narrow, the seeds x slides interval is not, and the claim is not decided."""
    slides, labels = _test_slides()
    rng = np.random.default_rng(0)
    good = np.clip(labels * 0.6 + rng.uniform(0, 0.55, len(labels)), 0, 1)
    for m in METHODS:
        for seed in SEEDS:
            _write_run(tmp_path, "standard", m, seed, slides, labels, ["test"] * len(labels), good)
            flip = m in ATTENTION and seed == 0
            _write_run(tmp_path, "poison", m, seed, slides, labels, ["test"] * len(labels), 1 - good if flip else good)
    (claim,) = [c for c in ev.claims(_config(), tmp_path) if c.key == "poison"]
    r = claim.readings[0]
    assert r.interval.estimate == pytest.approx(claim.interval.estimate)
    assert r.interval.low < ev.MARGIN < r.interval.high and r.verdict == "inconclusive"


def test_schedule_readings_show_overfitting_after_the_selected_epoch(tmp_path):
    """mi-Net: training AUC climbs to 1 while validation AUC and loss turn after epoch 2 (selected): the end gap,
    the largest gap and the validation loss's rise after its minimum are read over the whole schedule."""
    cfg = validate_config({"training": {"methods": ["maxpool"], "seeds": [0]}, "experiments": ["minet_curves"],
                           "minet_curves": {"methods": ["minet"], "betas": []}})
    cell = plan_cells(cfg)[0]
    d = tmp_path / "runs" / cell.name / "minet" / "seed0"
    d.mkdir(parents=True)
    pd.DataFrame({"epoch": range(6), "train_bce": [0.7, 0.5, 0.3, 0.1, 0.05, 0.01],
                  "train_auc": [0.6, 0.8, 0.9, 0.97, 0.99, 1.0], "val_auc": [0.6, 0.75, 0.8, 0.7, 0.6, 0.55],
                  "val_loss": [0.69, 0.6, 0.5, 0.6, 0.8, 1.1]}).to_csv(d / "history.csv", index=False)
    (d / "run.json").write_text(json.dumps({"best_epoch": 2, "final_train_auc": 0.995}))
    r = ev.schedule_readings(tmp_path, cell, [0]).iloc[0]
    assert (r["epochs_run"], r["selected_epoch"], r["val_loss_min_epoch"], r["gap_max_epoch"]) == (6, 2, 2, 5)
    assert r["gap_end"] == pytest.approx(0.995 - 0.55) and r["gap_max"] == pytest.approx(0.45)
    assert r["val_loss_rise"] == pytest.approx(0.6) and r["train_loss_end"] == pytest.approx(0.01)
