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


def _config(**extra):
    return validate_config({"training": {"methods": METHODS, "seeds": [0, 1]}, "experiments": ["standard", "poison"],
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
        for seed in (0, 1):
            _write_run(root, "standard", m, seed, slides, labels, ["test"] * len(labels), good)
            _write_run(root, "poison", m, seed, slides, labels, ["test"] * len(labels),
                       1 - good if m in poisoned_inverted else good)


def _metrics(root):
    rows = [{"experiment": c, "method": m, "seed": s, "slide_auc": 0.9, "slide_accuracy_youden_test": 0.8}
            for c in ("standard", "poison") for m in METHODS for s in (0, 1)]
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
    cfg = validate_config({"training": {"methods": METHODS, "seeds": [0]}, "experiments": ["standard", "ood"],
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
        _write_run(tmp_path, "standard", m, 0, list(test["slide_id"]), y, ["test"] * len(y), score)
        # max-pooling unchanged at the unseen hospital, attention loses its ranking
        _write_run(tmp_path, "ood", m, 0, list(ext["slide_id"]), y, ["test"] * len(y),
                   (1 - score) if m in ATTENTION else score)
    (claim,) = [c for c in ev.claims(cfg, tmp_path) if c.key == "ood"]
    assert "paired on the 12 test slides and their copies" in claim.contrast
    assert claim.verdict == "supported" and claim.interval.estimate == pytest.approx(1.0)


def test_mi_net_gap_claim_all_three_outcomes(tmp_path):
    cfg = validate_config({"training": {"methods": ["maxpool"], "seeds": [0]}, "experiments": ["minet_curves"],
                           "minet_curves": {"betas": []}})
    n = 30
    labels = np.array([1, 0] * (n // 2))
    good = labels * 0.6 + np.linspace(0, 0.3, n)

    def outcome(minet_val_good: bool, focus_val_good: bool) -> str:
        for m, val_good in (("minet", minet_val_good), ("focusmil", focus_val_good)):
            slides = [f"tr{i}" for i in range(n)] + [f"va{i}" for i in range(n)]
            val = good if val_good else 1 - good
            _write_run(tmp_path, "minet_curves", m, 0, slides, np.r_[labels, labels], ["train"] * n + ["val"] * n,
                       np.r_[good, val])
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


def test_convergence_flags_cells_where_most_runs_selected_their_last_epoch(tmp_path):
    cfg = validate_config({"training": {"methods": ["maxpool", "abmil"], "seeds": [0, 1]}, "experiments": ["standard"]})

    for i, (m, s) in enumerate([("maxpool", 0), ("maxpool", 1), ("abmil", 0), ("abmil", 1)]):
        _write_run(tmp_path, "standard", m, s, ["a"], [0], ["test"], [0.1], optimizer_steps=480,
                   selected_last_epoch=i < 2, val_auc_ties=int(i == 3))
    conv = ev.convergence(tmp_path, plan_cells(cfg), [0, 1]).iloc[0]
    assert (conv["runs"], conv["selected_last_epoch"], conv["selected_tied_val_auc"]) == (4, 2, 1)
    assert conv["not_converged"] and conv["steps_min"] == conv["steps_max"] == 480


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
        for seed in (0, 1):
            _write_run(root, "standard", m, seed, slides, labels, ["test"] * len(labels), labels * 0.5 + 0.2)
            with h5py.File(root / "runs" / "standard" / m / f"seed{seed}" / "instance_scores.h5", "w") as f:
                for s in slides:
                    noise = rng.normal(0, 0.3, 40)
                    f[s] = ((tf[s] > 0) + noise) if m in good else noise


@pytest.mark.parametrize("good, expected", [({"maxpool", "focusmil"}, "supported"), (ATTENTION, "contradicted"),
                                            (set(), "inconclusive")])
def test_the_patch_claim_pairs_every_method_on_the_same_tumour_slides(tmp_path, good, expected):
    cfg = validate_config({"training": {"methods": METHODS, "seeds": [0, 1]}, "experiments": ["standard"]})
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
