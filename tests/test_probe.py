"""The supervised patch probe (wsimil.evaluation.probe): known answers on hand-made feature files, the
slide-bootstrap interval, clear errors for bad input."""

import math

import h5py
import numpy as np
import pandas as pd
import pytest

from wsimil.evaluation.probe import load_probe_data, probe, slide_bootstrap_auc


def _write(folder, slide_id, x, tf=None):
    with h5py.File(folder / f"{slide_id}.h5", "w") as f:
        f["features"] = x.astype(np.float32)
        if tf is not None:
            f["tumor_fraction"] = np.asarray(tf, dtype=np.float32)


def _dataset(folder, shift: float, seed: int = 0, n: int = 60):
    """4 train + 4 test slides, half tumour; tumour patches (fraction 1) shifted by ``shift`` along dim 0,
    and partial patches (fraction 0.3) shifted by shift / 2."""
    rng = np.random.default_rng(seed)
    rows = []
    for split in ("train", "test"):
        for k in range(4):
            sid, label = f"{split}_{k:03d}", k % 2
            x = rng.normal(size=(n, 8))
            tf = np.zeros(n)
            if label:
                tf[:10], tf[10:15] = 1.0, 0.3
                x[:10, 0] += shift
                x[10:15, 0] += shift / 2
            _write(folder, sid, x, tf if label else None)
            rows.append({"slide_id": sid, "label": label, "split": split})
    return pd.DataFrame(rows)


def test_separable_tumour_patches_give_auc_one_and_the_counts(tmp_path):
    sheet = _dataset(tmp_path, shift=20.0)
    res = probe(load_probe_data(tmp_path, sheet))
    assert res["auc_half"] == pytest.approx(1.0) and res["ap_half"] == pytest.approx(1.0)
    assert res["bacc_half"] > 0.95  # the partial patches (negatives here) sit halfway: some cross the line
    assert res["auc_half_lo"] == pytest.approx(1.0) and res["auc_half_hi"] == pytest.approx(1.0)
    assert (res["test_pos_half"], res["test_neg_half"]) == (20, 220)  # 2 tumour slides x 10; the rest
    assert (res["test_pos_any"], res["test_partial"], res["train_partial"]) == (30, 10, 10)
    assert (res["train_slides"], res["test_slides"], res["feature_dim"]) == (4, 4, 8)
    assert res["auc_any"] > 0.99  # the partial patches sit between normal and tumour


def test_uninformative_features_give_chance_and_harder_data_a_lower_auc(tmp_path):
    (tmp_path / "none").mkdir()
    (tmp_path / "weak").mkdir()
    chance = probe(load_probe_data(tmp_path / "none", _dataset(tmp_path / "none", shift=0.0, n=400)))
    assert abs(chance["auc_half"] - 0.5) < 0.12 and abs(chance["bacc_half"] - 0.5) < 0.12
    assert chance["auc_half_lo"] < 0.5 < chance["auc_half_hi"]
    weak = probe(load_probe_data(tmp_path / "weak", _dataset(tmp_path / "weak", shift=1.5, n=400)))
    assert 0.75 < weak["auc_half"] < 0.97  # Phi(1.5 / sqrt 2) = 0.86 for a perfect linear score


def test_a_class_missing_from_a_part_gives_nan_not_an_error(tmp_path):
    sheet = _dataset(tmp_path, shift=5.0)
    sheet.loc[sheet.split == "test", "label"] = 0
    for sid in sheet.slide_id[sheet.split == "test"]:
        _write(tmp_path, sid, np.zeros((5, 8)))
    res = probe(load_probe_data(tmp_path, sheet))
    assert math.isnan(res["auc_half"]) and res["test_pos_half"] == 0


def test_bad_input_names_the_file(tmp_path):
    sheet = _dataset(tmp_path, shift=5.0)
    _write(tmp_path, "test_001", np.zeros((5, 8)))  # a tumour slide without patch labels
    with pytest.raises(ValueError, match=r"test_001\.h5.*no tumor_fraction"):
        load_probe_data(tmp_path, sheet)
    _write(tmp_path, "test_001", np.zeros((5, 8)), tf=np.zeros(4))
    with pytest.raises(ValueError, match=r"test_001\.h5: 4 tumor_fraction values"):
        load_probe_data(tmp_path, sheet)
    (tmp_path / "test_001.h5").unlink()
    with pytest.raises(FileNotFoundError, match="test_001"):
        load_probe_data(tmp_path, sheet)
    with pytest.raises(ValueError, match="missing columns"):
        load_probe_data(tmp_path, sheet.drop(columns="split"))
    with pytest.raises(ValueError, match="no patches in the train splits"):
        probe(load_probe_data(tmp_path, sheet[sheet.split == "train"]))


def test_slide_bootstrap_interval_covers_the_estimate_and_is_deterministic():
    rng = np.random.default_rng(1)
    slide = np.repeat(np.arange(10), 30)
    y = (rng.random(300) < 0.3).astype(int)
    s = y + rng.normal(0, 1.0, 300)
    lo, hi = slide_bootstrap_auc(y, s, slide, n_boot=300, seed=4)
    from sklearn.metrics import roc_auc_score

    assert lo < roc_auc_score(y, s) < hi and hi - lo < 0.25
    assert (lo, hi) == slide_bootstrap_auc(y, s, slide, n_boot=300, seed=4)
    assert all(math.isnan(v) for v in slide_bootstrap_auc(np.zeros(300, int), s, slide))


def test_probe_script_on_a_tiny_generated_set(tmp_path):
    """benchmarks/synthetic_stats.py probe --synth: renders, patches and extracts 8 small slides, probes them and
    writes its row (not into benchmarks/results: --no-record)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    before = (root / "benchmarks/results/probe_calibration.csv").read_bytes()
    proc = subprocess.run(
        [sys.executable, str(root / "benchmarks/synthetic_stats.py"), "probe", "--synth", "--name", "tiny",
         "--train", "2", "2", "--test", "2", "2", "--set", "size_um=[1200,960]", "--set", "seed=11",
         "--work", str(tmp_path / "work"), "--no-record", "--csv", str(tmp_path / "row.csv")],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = pd.read_csv(tmp_path / "row.csv").iloc[0]
    assert row["name"] == "tiny" and (row["train_slides"], row["test_slides"]) == (4, 4)
    assert row["test_pos_any"] >= row["test_pos_half"] and row["test_pos_any"] > 0
    assert row["test_neg_half"] > 10 * max(row["test_pos_half"], 1)  # tumour is a small share of the tissue
    assert 0.5 < row["auc_any"] <= 1.0 and 0.0 <= row["bacc_any"] <= 1.0  # tumour is visible to a supervised probe
    assert "positives = any tumour" in proc.stdout
    assert len(list((tmp_path / "work" / "features").glob("*.h5"))) == 8
    assert (root / "benchmarks/results/probe_calibration.csv").read_bytes() == before
