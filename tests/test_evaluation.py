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


# ----------------------------------------------------------------------------------------- thresholds


def test_youden_threshold_known_answer_and_tie_rule():
    from wsimil.evaluation.metrics import youden_threshold

    # J: 0.8 -> .5, 0.7 -> 0, 0.6 -> .5, 0.1 -> 0. Tie 0.8 / 0.6: 0.6 is closer to 0.5
    # (the official DTFD-MIL / DSMIL optimal_thresh would take the first maximum, 0.8)
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.7, 0.8, 0.6]) == (0.6, None)
    assert youden_threshold([0, 1], [0.2, 0.9]) == (0.9, None)  # the highest threshold that keeps TPR 1
    # equal distance from 0.5 (0.3 and 0.7 tie in J): the higher threshold
    assert youden_threshold([0, 1, 0, 1], [0.1, 0.3, 0.5, 0.7])[0] == 0.7
    thr, reason = youden_threshold([1, 1], [0.2, 0.9])
    assert math.isnan(thr) and "positive" in reason


def test_evaluate_run_thresholds_from_validation_and_test(tmp_path):
    run, feats = _fake_run(tmp_path)
    m = evaluate_run(run, feats, n_boot=10)
    # val: va_n 0.6 (label 0), va_t 0.4 (label 1): J(0.6) = -1, J(0.4) = 0 -> 0.4
    assert m["slide_threshold_val"] == 0.4 and m["slide_threshold_val_reason"] is None
    # test at 0.4: scores n 0.1, 0.7, t 0.8, 0.6 -> predictions 0, 1, 1, 1
    assert m["slide_accuracy_valthr"] == 0.75
    assert m["slide_f1_valthr"] == pytest.approx(0.8)
    assert m["slide_balanced_accuracy_valthr"] == 0.75
    # test's own Youden: 0.6 (tie with 0.8, closer to 0.5) -> same predictions as at 0.4
    assert m["slide_threshold_youden_test"] == 0.6 and m["slide_threshold_youden_test_reason"] is None
    assert m["slide_accuracy_youden_test"] == 0.75 and m["slide_f1_youden_test"] == pytest.approx(0.8)
    # the 0.5 keys are unchanged: predictions 0, 1, 1, 1 as well
    assert m["slide_accuracy"] == 0.75 and m["threshold"] == 0.5
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["slide_threshold_val"] == 0.4 and on_disk["slide_threshold_val_reason"] is None


def test_evaluate_run_threshold_fallbacks(tmp_path):
    run, feats = _fake_run(tmp_path)
    df = pd.read_csv(run / "predictions.csv")
    df.loc[df["slide_id"] == "va_t", "label"] = 0  # validation: one class
    df.to_csv(run / "predictions.csv", index=False)
    m = evaluate_run(run, feats, n_boot=10)
    assert m["slide_threshold_val"] == 0.5 and "negative" in m["slide_threshold_val_reason"]
    assert m["slide_accuracy_valthr"] == m["slide_accuracy"]
    df[df["split"] != "val"].to_csv(run / "predictions.csv", index=False)  # no validation split at all
    m = evaluate_run(run, feats, n_boot=10)
    assert m["slide_threshold_val"] == 0.5 and "no validation slides" in m["slide_threshold_val_reason"]
    df.loc[df["split"] == "test", "label"] = 1  # test: one class -> no Youden threshold of its own
    df.to_csv(run / "predictions.csv", index=False)
    m = evaluate_run(run, feats, n_boot=10)
    assert math.isnan(m["slide_threshold_youden_test"]) and math.isnan(m["slide_f1_youden_test"])
    assert "positive" in m["slide_threshold_youden_test_reason"]
    assert json.loads((run / "metrics.json").read_text())["slide_threshold_youden_test"] is None


# ----------------------------------------------------------------------------------------- extra score columns


def test_evaluate_run_extra_score_columns(tmp_path):
    run, feats = _fake_run(tmp_path)
    df = pd.read_csv(run / "predictions.csv")
    tier1 = {"tr_n": 0.3, "tr_t": 0.2, "va_n": 0.1, "va_t": 0.9, "te_n1": 0.2, "te_n2": 0.5, "te_t1": 0.4, "te_t2": 0.9}
    df["tier1_score"] = df["slide_id"].map(tier1)
    df["center"] = "RUMC"  # other extra columns are kept, not rejected
    df.to_csv(run / "predictions.csv", index=False)
    m = evaluate_run(run, feats, n_boot=10)
    assert m["tier1_train_auc"] == 0.0 and m["tier1_val_auc"] == 1.0
    assert m["tier1_test_auc"] == pytest.approx(0.75)  # 0.4 > 0.2 only, 0.9 > both -> 3/4
    assert m["tier1_test_n"] == 4 and m["tier1_test_auc_nan_reason"] is None
    assert m["slide_auc"] == pytest.approx(0.75)  # the main score is still `score`
    # a split whose slides all lack the value, or hold one class, is null with a reason
    df.loc[df["split"] == "val", "tier1_score"] = np.nan
    df.loc[df["slide_id"] == "tr_n", "label"] = 1
    df.to_csv(run / "predictions.csv", index=False)
    m = evaluate_run(run, feats, n_boot=10)
    assert math.isnan(m["tier1_val_auc"]) and m["tier1_val_n"] == 0 and "no val slides" in m["tier1_val_auc_nan_reason"]
    assert math.isnan(m["tier1_train_auc"]) and "positive" in m["tier1_train_auc_nan_reason"]
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["tier1_val_auc"] is None and on_disk["tier1_test_auc"] == pytest.approx(0.75)


def test_bad_extra_score_column_is_named(tmp_path):
    run, feats = _fake_run(tmp_path)
    df = pd.read_csv(run / "predictions.csv")
    df["tier1_score"] = ["0.1"] * 7 + ["high"]
    df.to_csv(run / "predictions.csv", index=False)
    with pytest.raises(WsimilError, match=r"predictions.csv: column 'tier1_score'.*te_t2"):
        evaluate_run(run, feats, n_boot=10)


# ----------------------------------------------------------------------------------------- FROC in evaluate_run

_STEP, _MPP = 100, 1.0  # level-0 px per patch, um per level-0 px


def _froc_run(tmp_path: Path, inverted: bool = False, attrs: bool = True) -> tuple[Path, Path, dict]:
    """A run whose test slides are one tumour slide (lesion on cells 3..6 of a 12 x 12 grid) and one normal
    slide; the tumour slide's heatmap is perfect (or fires only outside the lesion)."""
    from wsimil.slides.annotations import write_asap_xml

    run, feats = tmp_path / "runs" / "froc" / "maxpool" / "seed0", tmp_path / "features"
    run.mkdir(parents=True)
    ys, xs = np.mgrid[0:12, 0:12]
    coords = np.stack([xs.ravel(), ys.ravel()], axis=1) * _STEP
    inside = ((xs >= 3) & (xs <= 6) & (ys >= 3) & (ys <= 6)).ravel()
    tumour = np.where(inside, 0.1, 0.9) if inverted else np.where(inside, 0.95, 0.1)
    inst = {"tr_n": np.full(144, 0.1), "tr_t": tumour, "va_n": np.full(144, 0.1), "va_t": tumour,
            "te_n": np.full(144, 0.2), "te_t": tumour}
    labels = {"tr_n": 0, "tr_t": 1, "va_n": 0, "va_t": 1, "te_n": 0, "te_t": 1}
    splits = {"tr_n": "train", "tr_t": "train", "va_n": "val", "va_t": "val", "te_n": "test", "te_t": "test"}
    pd.DataFrame([{"slide_id": s, "label": labels[s], "split": splits[s], "score": 0.3 + 0.4 * labels[s]}
                  for s in labels]).to_csv(run / "predictions.csv", index=False)
    with h5py.File(run / "instance_scores.h5", "w") as f:
        for s, v in inst.items():
            f.create_dataset(s, data=v.astype(np.float32))
    (run / "run.json").write_text(json.dumps({"method": "maxpool", "seed": 0, "experiment": "froc"}))
    extra = {"level0_size": _STEP, "mpp_level0": _MPP} if attrs else {}
    for s in labels:
        tf = inside.astype(np.float32) if labels[s] else np.zeros(144, np.float32)
        write_features(feats / f"{s}.h5", np.ones((144, 4), np.float32), coords, tumor_fraction=tf, attrs=extra)
    (tmp_path / "annotations").mkdir()
    lesion = np.array([[300, 300], [700, 300], [700, 700], [300, 700]])  # 400 um: no ITC
    for s in ("tr_t", "va_t", "te_t"):
        write_asap_xml(tmp_path / "annotations" / f"{s}.xml", [lesion])
    annotations = {s: (str(tmp_path / "annotations" / f"{s}.xml") if labels[s] else None) for s in labels}
    return run, feats, annotations


FROC_KEYS = ["froc", "froc_sens_at_0.25", "froc_sens_at_0.5", "froc_sens_at_1", "froc_sens_at_2", "froc_sens_at_4",
             "froc_sens_at_8", "froc_n_slides", "froc_n_lesions", "froc_n_itc_lesions", "froc_skipped_reason"]


def test_evaluate_run_froc_perfect_and_inverted_heatmaps(tmp_path):
    run, feats, ann = _froc_run(tmp_path / "a")
    m = evaluate_run(run, feats, n_boot=10, annotations=ann)
    on_disk = json.loads((run / "metrics.json").read_text())
    assert set(FROC_KEYS) <= set(on_disk)
    assert m["froc"] == 1.0 and m["froc_sens_at_0.25"] == 1.0 and m["froc_sens_at_8"] == 1.0
    assert (m["froc_n_slides"], m["froc_n_lesions"], m["froc_n_itc_lesions"]) == (2, 1, 0)
    assert m["froc_skipped_reason"] is None and on_disk["froc"] == 1.0
    run, feats, ann = _froc_run(tmp_path / "b", inverted=True)
    m = evaluate_run(run, feats, n_boot=10, annotations=ann)
    assert m["froc"] == 0.0 and m["froc_sens_at_8"] == 0.0


def test_evaluate_run_froc_skipped_with_reasons(tmp_path):
    run, feats, ann = _froc_run(tmp_path / "a")
    m = evaluate_run(run, feats, n_boot=10)  # no annotations
    assert math.isnan(m["froc"]) and "--sheet" in m["froc_skipped_reason"]
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["froc"] is None and on_disk["froc_sens_at_1"] is None and on_disk["froc_n_slides"] is None
    # the tumour slide without annotation is left out; no annotated tumour slide remains
    m = evaluate_run(run, feats, n_boot=10, annotations={**ann, "te_t": None})
    assert math.isnan(m["froc"]) and "no annotated tumour slide" in m["froc_skipped_reason"]
    # a feature file without level-0 geometry (e.g. a CLAM export)
    run, feats, ann = _froc_run(tmp_path / "b", attrs=False)
    m = evaluate_run(run, feats, n_boot=10, annotations=ann)
    assert math.isnan(m["froc"]) and "te_" in m["froc_skipped_reason"] and "level0_size" in m["froc_skipped_reason"]
    assert m["slide_auc"] == 1.0  # the rest of the metrics are still there


def test_evaluate_run_froc_missing_annotation_file_is_named(tmp_path):
    run, feats, ann = _froc_run(tmp_path)
    Path(ann["te_t"]).unlink()
    with pytest.raises(WsimilError, match="te_t.xml"):
        evaluate_run(run, feats, n_boot=10, annotations=ann)


def test_cli_evaluate_with_sheet(tmp_path, capsys):
    from wsimil.cli import main

    run, feats, ann = _froc_run(tmp_path)
    rows = [{"slide_id": s, "label": int(a is not None), "split": "test", "center": "0", "path": f"slides/{s}.tif",
             "annotation": f"annotations/{s}.xml" if a else ""} for s, a in ann.items()]
    pd.DataFrame(rows).to_csv(tmp_path / "slides.csv", index=False)
    assert main(["evaluate", str(run), "--features", str(feats), "--sheet", str(tmp_path / "slides.csv")]) == 0
    assert json.loads((run / "metrics.json").read_text())["froc"] == 1.0
    assert main(["evaluate", str(run), "--features", str(feats)]) == 0  # backward compatible: no FROC
    assert json.loads((run / "metrics.json").read_text())["froc"] is None
    assert main(["evaluate", str(run), "--features", str(feats), "--sheet", str(tmp_path / "nope.csv")]) == 2
    assert "sample sheet not found" in capsys.readouterr().err


def test_evaluate_run_tier1_auc_over_pseudo_bags(tmp_path):
    run, feats = _fake_run(tmp_path)
    rows = []
    # test: tumour pseudo-bags 0.9, 0.4 / 0.8, 0.3; normal 0.5, 0.2 / 0.1, 0.6 -> AUC over 4 x 4 pairs
    bags = (("te_t1", 1, [0.9, 0.4]), ("te_t2", 1, [0.8, 0.3]), ("te_n1", 0, [0.5, 0.2]), ("te_n2", 0, [0.1, 0.6]),
            ("tr_t", 1, [0.7]), ("tr_n", 0, [0.2]))
    for sid, lab, scores in bags:
        split = "test" if sid.startswith("te") else "train"
        rows += [{"slide_id": sid, "label": lab, "split": split, "pseudo_bag": k, "score": v}
                 for k, v in enumerate(scores)]
    pd.DataFrame(rows).to_csv(run / "pseudo_bags.csv", index=False)
    m = evaluate_run(run, feats, n_boot=10)
    pos, neg = [0.9, 0.4, 0.8, 0.3], [0.5, 0.2, 0.1, 0.6]
    assert m["tier1_test_auc"] == pytest.approx(roc_auc_score([1] * 4 + [0] * 4, pos + neg))
    assert m["tier1_test_n"] == 8 and m["tier1_train_auc"] == 1.0
    assert math.isnan(m["tier1_val_auc"]) and m["tier1_val_n"] == 0
    assert m["tier1_val_auc_nan_reason"] == "no val pseudo-bags"
    assert m["tier1_auc_source"].startswith("pseudo_bags.csv")
    pd.DataFrame(rows).drop(columns="pseudo_bag").to_csv(run / "pseudo_bags.csv", index=False)
    with pytest.raises(WsimilError, match=r"pseudo_bags.csv: missing columns \['pseudo_bag'\]"):
        evaluate_run(run, feats, n_boot=10)


def test_cli_evaluate_with_an_annotation_manifest_gives_the_sheets_metrics(tmp_path, capsys):
    """The workflow's evaluation reads the lesions through one manifest (rules/evaluate.smk): the same
    metrics.json as through the sheet; an edited annotation, a relative path, a bad header or a duplicate slide
    are refused naming the manifest and the line."""
    from wsimil.cli import main
    from wsimil.evaluation.evaluate import annotations_from_manifest, write_annotation_manifest

    run, feats, ann = _froc_run(tmp_path)
    rows = [{"slide_id": s, "label": int(a is not None), "split": "test", "center": "0", "path": f"slides/{s}.tif",
             "annotation": f"annotations/{s}.xml" if a else ""} for s, a in ann.items()]
    pd.DataFrame(rows).to_csv(tmp_path / "slides.csv", index=False)
    assert main(["evaluate", str(run), "--features", str(feats), "--sheet", str(tmp_path / "slides.csv")]) == 0
    by_sheet = json.loads((run / "metrics.json").read_text())
    manifest = write_annotation_manifest({s: a for s, a in ann.items() if a}, tmp_path / "annotations.tsv")
    assert main(["evaluate", str(run), "--features", str(feats), "--annotations", str(manifest)]) == 0
    by_manifest = json.loads((run / "metrics.json").read_text())
    assert by_manifest["froc"] == 1.0
    assert {k: v for k, v in by_manifest.items() if k != "evaluated_at"} == \
        {k: v for k, v in by_sheet.items() if k != "evaluated_at"}
    lines = manifest.read_text().splitlines()
    bad = tmp_path / "bad.tsv"
    for text, message in [
        ("slide\tannotation\tbytes\n", "the first line must be"),
        (lines[0] + "\n" + lines[1] + "\n" + lines[1] + "\n", "line 3: slide '\\w+' listed twice"),
        (lines[0] + "\nte_t\tannotations/te_t.xml\t10\n", "line 2: the path is not absolute"),
    ]:
        bad.write_text(text)
        with pytest.raises(WsimilError, match=message):
            annotations_from_manifest(bad)
    with open(ann["te_t"], "a") as f:  # the annotation edited after the manifest was written
        f.write("\n")
    assert main(["evaluate", str(run), "--features", str(feats), "--annotations", str(manifest)]) == 2
    assert "the manifest is stale (the annotation of slide 'te_t'" in capsys.readouterr().err
