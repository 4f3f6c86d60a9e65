"""Slide and patch metrics on hand-made vectors, and evaluate_run on a fake run directory."""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from wsimil.evaluation.evaluate import evaluate_run, read_metrics
from wsimil.evaluation.metrics import bootstrap_auc_ci, patch_metrics, slide_metrics
from wsimil.features.store import write_features
from wsimil.io import WsimilError

# ----------------------------------------------------------------------------------------- slide_metrics


def test_slide_metrics_perfect():
    m = slide_metrics([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert m["auc"] == 1.0 and m["accuracy"] == 1.0 and m["f1"] == 1.0 and m["balanced_accuracy"] == 1.0
    assert m["n"] == 4 and m["n_pos"] == 2 and m["auc_nan_reason"] is None


def test_slide_metrics_inverted_gives_auc_zero():
    m = slide_metrics([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1])
    assert m["auc"] == 0.0
    assert m["accuracy"] == 0.0 and m["f1"] == 0.0


def test_slide_metrics_threshold():
    labels, scores = [0, 0, 1, 1], [0.1, 0.6, 0.7, 0.4]
    at_half = slide_metrics(labels, scores, threshold=0.5)
    assert at_half["accuracy"] == 0.5  # 0.6 false positive, 0.4 false negative
    assert at_half["f1"] == pytest.approx(0.5)
    low = slide_metrics(labels, scores, threshold=0.35)  # only 0.1 below: 3 predicted positive
    assert low["accuracy"] == 0.75 and low["f1"] == pytest.approx(0.8) and low["balanced_accuracy"] == 0.75
    assert slide_metrics([0, 1], [0.5, 0.5], threshold=0.5)["accuracy"] == 0.5  # score == threshold is positive
    assert at_half["auc"] == low["auc"] == pytest.approx(0.75)  # the AUC ignores the threshold


def test_slide_metrics_one_class_is_nan_with_reason():
    m = slide_metrics([1, 1, 1], [0.9, 0.2, 0.7])
    assert math.isnan(m["auc"]) and "positive" in m["auc_nan_reason"]
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert "negative" in slide_metrics([0, 0], [0.1, 0.2])["auc_nan_reason"]


def test_slide_metrics_rejects_bad_input():
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        slide_metrics([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        slide_metrics([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="3 labels but 2 scores"):
        slide_metrics([0, 1, 1], [0.1, 0.2])


# ----------------------------------------------------------------------------------------- bootstrap


def _noisy(n=60, seed=1):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(n // 2), np.ones(n // 2)].astype(int)
    return labels, labels * 0.8 + rng.normal(0, 0.5, n)


def test_bootstrap_ci_contains_point_estimate_and_is_deterministic():
    labels, scores = _noisy()
    auc = roc_auc_score(labels, scores)
    low, high = bootstrap_auc_ci(labels, scores, n_boot=500, seed=3)
    assert 0.0 <= low < auc < high <= 1.0
    assert high - low < 0.5
    assert bootstrap_auc_ci(labels, scores, n_boot=500, seed=3) == (low, high)
    assert bootstrap_auc_ci(labels, scores, n_boot=500, seed=4) != (low, high)
    # a wider interval at a smaller alpha
    low99, high99 = bootstrap_auc_ci(labels, scores, n_boot=500, seed=3, alpha=0.01)
    assert low99 <= low and high99 >= high


def test_bootstrap_ci_one_class_nan_and_perfect_degenerate():
    assert all(math.isnan(x) for x in bootstrap_auc_ci([1, 1, 1], [0.1, 0.2, 0.3]))
    assert bootstrap_auc_ci([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], n_boot=50) == (1.0, 1.0)


def test_bootstrap_vectorised_auc_matches_sklearn_with_ties():
    from wsimil.evaluation.metrics import _auc_rows

    labels = np.array([[0, 0, 1, 1, 0, 1]])
    scores = np.array([[0.2, 0.5, 0.5, 0.9, 0.2, 0.2]])
    assert _auc_rows(labels, scores)[0] == pytest.approx(roc_auc_score(labels[0], scores[0]))


# ----------------------------------------------------------------------------------------- patch_metrics


def test_patch_metrics_perfect_ranking():
    scores = {"a": np.array([0.1, 0.9, 0.8]), "b": np.array([0.2, 0.3])}
    tf = {"a": np.array([0.0, 1.0, 0.6]), "b": np.array([0.0, 0.49])}
    m = patch_metrics(scores, tf)
    assert m["auc"] == 1.0 and m["ap"] == 1.0 and m["mean_slide_auc"] == 1.0
    assert (m["n_slides"], m["n_slides_both_classes"], m["n_patches"], m["n_pos"]) == (2, 1, 5, 2)


def test_patch_metrics_positive_fraction_and_pooling():
    scores = {"a": np.array([0.1, 0.4, 0.3]), "b": np.array([5.0, 6.0])}
    tf = {"a": np.array([0.0, 0.3, 0.2]), "b": np.array([0.0, 0.9])}
    m = patch_metrics(scores, tf, positive_fraction=0.25)  # positives: a[1] (0.4), b[1] (6.0)
    assert m["n_pos"] == 2
    # pooled: positive 0.4 ranks above 0.1, 0.3 but below 5.0 -> 2/3 of 3 negatives; 6.0 above all -> 3/3
    assert m["auc"] == pytest.approx((2 + 3) / 6)
    assert m["mean_slide_auc"] == 1.0  # within each slide the ranking is perfect


def test_patch_metrics_length_mismatch_names_the_slide():
    with pytest.raises(ValueError, match="slide tumour_007: 3 instance scores but 2"):
        patch_metrics({"tumour_007": np.zeros(3)}, {"tumour_007": np.zeros(2)})
    with pytest.raises(ValueError, match="normal_1"):
        patch_metrics({"normal_1": np.zeros(3)}, {})


def test_patch_metrics_one_class_is_nan():
    m = patch_metrics({"n": np.array([0.1, 0.2])}, {"n": np.zeros(2)})
    assert math.isnan(m["auc"]) and math.isnan(m["ap"]) and "negative" in m["auc_nan_reason"]
    assert math.isnan(m["mean_slide_auc"]) and m["n_slides_both_classes"] == 0


# ----------------------------------------------------------------------------------------- evaluate_run

# slide id: (label, split, score, instance scores, tumor_fraction)
_SLIDES = {
    "tr_n": (0, "train", 0.2, [0.1, 0.2], [0.0, 0.0]),
    "tr_t": (1, "train", 0.9, [0.1, 0.9], [0.0, 1.0]),
    "va_n": (0, "val", 0.6, [0.1], [0.0]),
    "va_t": (1, "val", 0.4, [0.3], [1.0]),
    "te_n1": (0, "test", 0.1, [0.2, 0.3, 0.1], [0.0, 0.0, 0.0]),
    "te_n2": (0, "test", 0.7, [0.8, 0.1], [0.0, 0.0]),
    "te_t1": (1, "test", 0.8, [0.1, 0.9, 0.7], [0.0, 1.0, 0.5]),  # perfect within slide
    "te_t2": (1, "test", 0.6, [0.6, 0.2, 0.05], [0.0, 0.9, 0.1]),  # tumour patch below a normal one
}


def _fake_run(tmp_path: Path, tumor_fraction: bool = True) -> tuple[Path, Path]:
    run = tmp_path / "runs" / "standard" / "maxpool" / "seed2"
    feats = tmp_path / "features"
    run.mkdir(parents=True)
    feats.mkdir()
    pd.DataFrame(
        [{"slide_id": s, "label": v[0], "split": v[1], "score": v[2]} for s, v in _SLIDES.items()]
    ).to_csv(run / "predictions.csv", index=False)
    with h5py.File(run / "instance_scores.h5", "w") as f:
        for s, v in _SLIDES.items():
            f.create_dataset(s, data=np.asarray(v[3], dtype=np.float32))
    (run / "run.json").write_text(json.dumps({"method": "maxpool", "seed": 2, "experiment": "standard", "config": {}}))
    for s, v in _SLIDES.items():
        n = len(v[3])
        write_features(feats / f"{s}.h5", np.ones((n, 4), np.float32), np.zeros((n, 2)),
                       tumor_fraction=np.asarray(v[4]) if tumor_fraction else None)
    return run, feats


def test_evaluate_run_writes_expected_metrics(tmp_path):
    run, feats = _fake_run(tmp_path)
    m = evaluate_run(run, feats, n_boot=200)
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["slide_auc"] == m["slide_auc"]
    assert (m["method"], m["seed"], m["experiment"], m["split"]) == ("maxpool", 2, "standard", "test")
    # test slides: negatives 0.1, 0.7; positives 0.8, 0.6 -> pairs won: 0.8>both, 0.6>0.1 only -> 3/4
    assert m["slide_auc"] == pytest.approx(0.75)
    assert m["slide_accuracy"] == pytest.approx(0.75) and m["slide_n"] == 4 and m["slide_n_pos"] == 2
    assert m["slide_auc_ci_low"] <= m["slide_auc"] <= m["slide_auc_ci_high"]
    assert m["train_auc"] == 1.0 and m["val_auc"] == 0.0 and m["test_auc"] == m["slide_auc"]
    # patch metrics on te_t1 + te_t2: positives 0.9, 0.7, 0.2; negatives 0.1, 0.6, 0.05
    exp_tumour = roc_auc_score([0, 1, 1, 0, 1, 0], [0.1, 0.9, 0.7, 0.6, 0.2, 0.05])
    assert m["patch_auc_tumour_slides"] == pytest.approx(exp_tumour)
    assert m["patch_mean_slide_auc_tumour_slides"] == pytest.approx((1.0 + 0.5) / 2)
    assert m["patch_n_patches_tumour_slides"] == 6 and m["patch_n_pos_tumour_slides"] == 3
    # all test slides add the normal slides' patches as negatives
    exp_all = roc_auc_score([0, 0, 0, 0, 0, 0, 1, 1, 0, 1, 0], [0.2, 0.3, 0.1, 0.8, 0.1, 0.1, 0.9, 0.7, 0.6, 0.2, 0.05])
    assert m["patch_auc_all_slides"] == pytest.approx(exp_all)
    assert m["patch_n_slides_all_slides"] == 4 and m["patch_metrics_skipped_reason"] is None
    assert read_metrics(run / "metrics.json")["patch_auc_tumour_slides"] == pytest.approx(exp_tumour)


def test_evaluate_run_records_the_slides_training_excluded(tmp_path):
    run, feats = _fake_run(tmp_path)
    assert evaluate_run(run, feats, n_boot=10)["n_excluded_slides"] == 0
    info = json.loads((run / "run.json").read_text())
    info["excluded_slides"] = {"tr_empty": "no patches in features/tr_empty.h5"}
    (run / "run.json").write_text(json.dumps(info))
    on_disk = json.loads((evaluate_run(run, feats, n_boot=10) and run / "metrics.json").read_text())
    assert on_disk["n_excluded_slides"] == 1
    assert on_disk["excluded_slides_note"] == "tr_empty: no patches in features/tr_empty.h5"


def test_evaluate_run_without_tumor_fraction_skips_patch_metrics(tmp_path):
    run, feats = _fake_run(tmp_path, tumor_fraction=False)
    m = evaluate_run(run, feats, n_boot=50)
    assert math.isnan(m["patch_auc_tumour_slides"]) and math.isnan(m["patch_auc_all_slides"])
    assert "tumor_fraction" in m["patch_metrics_skipped_reason"]
    text = (run / "metrics.json").read_text()
    assert "NaN" not in text  # strict JSON: NaN is written as null
    assert json.loads(text)["patch_auc_tumour_slides"] is None
    assert math.isnan(read_metrics(run / "metrics.json")["patch_auc_tumour_slides"])
    assert m["slide_auc"] == pytest.approx(0.75)


@pytest.mark.parametrize("victim", ["predictions.csv", "instance_scores.h5"])
def test_evaluate_run_missing_file_is_named(tmp_path, victim):
    run, feats = _fake_run(tmp_path)
    (run / victim).unlink()
    with pytest.raises(WsimilError, match=victim):
        evaluate_run(run, feats, n_boot=10)
    assert not (run / "metrics.json").exists()


def test_evaluate_run_missing_feature_file_and_bad_lengths(tmp_path):
    run, feats = _fake_run(tmp_path)
    (feats / "te_t2.h5").unlink()
    with pytest.raises(WsimilError, match="te_t2.h5"):
        evaluate_run(run, feats, n_boot=10)
    run2, feats2 = _fake_run(tmp_path / "b")
    with h5py.File(run2 / "instance_scores.h5", "a") as f:
        del f["te_t1"]
        f.create_dataset("te_t1", data=np.zeros(5, np.float32))
    with pytest.raises(WsimilError, match="te_t1: 5 instance scores but 3"):
        evaluate_run(run2, feats2, n_boot=10)


def test_evaluate_run_rejects_bad_predictions(tmp_path):
    run, feats = _fake_run(tmp_path)
    df = pd.read_csv(run / "predictions.csv")
    df.loc[df["slide_id"] == "te_n2", "score"] = 1.7
    df.to_csv(run / "predictions.csv", index=False)
    with pytest.raises(WsimilError, match="te_n2"):
        evaluate_run(run, feats, n_boot=10)
