"""Evaluate one finished training run directory and write its ``metrics.json``.

Reads, from ``results/<dataset>/runs/<experiment>/<method>/seed<k>/``: ``predictions.csv`` (slide scores of
every split), ``instance_scores.h5`` (one score per patch, feature-file order) and ``run.json`` (method, seed,
experiment; optional: the path names them too), plus the ``tumor_fraction`` of the evaluated slides' feature
files. Writes ``metrics.json`` beside them, atomically.

``metrics.json`` is one flat object (one row of the results table):

- ``slide_*``: metrics on the evaluated split (``split``, default test): ``slide_auc`` with its stratified
  bootstrap CI ``slide_auc_ci_low`` / ``slide_auc_ci_high``, ``slide_accuracy``, ``slide_f1``,
  ``slide_balanced_accuracy`` at ``threshold``, ``slide_n``, ``slide_n_pos``.
- ``train_auc``, ``val_auc``, ``test_auc`` (+ ``*_n``, ``*_auc_nan_reason``): the slide AUC of every split
  in ``predictions.csv`` (a split with no slides is null).
- ``patch_*_tumour_slides``: patch AUC / AP / mean per-slide AUC / counts over the evaluated split's tumour
  slides (label 1) — the FocusMIL / DTFD localisation protocol; ``patch_*_all_slides``: the same over all of
  the split's slides (normal slides add only negatives).
- ``patch_metrics_skipped_reason``: null, or why the patch metrics are null (no ``tumor_fraction``).
- ``n_excluded_slides``, ``excluded_slides_note``: slides the training run left out (empty bags), from
  ``run.json``, with the reason of each.

A NaN is written as JSON ``null`` (strict JSON, readable by any tool); :func:`read_metrics` turns it back
into NaN.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from wsimil import __version__
from wsimil.evaluation.metrics import bootstrap_auc_ci, patch_metrics, slide_metrics
from wsimil.io import WsimilError, write_json_atomic

PREDICTION_COLUMNS = ("slide_id", "label", "split", "score")
SPLITS = ("train", "val", "test")
_SEED_DIR = re.compile(r"^seed(\d+)$")


def read_predictions(path: str | os.PathLike) -> pd.DataFrame:
    """Read and check ``predictions.csv``: the contract's columns, unique ids, 0/1 labels, scores in [0, 1]."""
    path = Path(path)
    if not path.is_file():
        raise WsimilError(f"predictions file not found: {path} (has the training run finished?)")
    try:
        df = pd.read_csv(path, dtype={"slide_id": str, "split": str})
    except (OSError, ValueError) as exc:
        raise WsimilError(f"cannot read predictions file {path}: {exc}") from exc
    missing = [c for c in PREDICTION_COLUMNS if c not in df.columns]
    if missing:
        raise WsimilError(f"{path}: missing columns {missing} (expected {','.join(PREDICTION_COLUMNS)})")
    dup = df["slide_id"][df["slide_id"].duplicated()].tolist()
    if dup:
        raise WsimilError(f"{path}: duplicated slide ids {dup[:5]}")
    labels = pd.to_numeric(df["label"], errors="coerce")
    bad = df["slide_id"][~labels.isin([0, 1])].tolist()
    if bad:
        raise WsimilError(f"{path}: label must be 0 or 1; bad rows for slides {bad[:5]}")
    scores = pd.to_numeric(df["score"], errors="coerce")
    bad = df["slide_id"][~(scores.between(0.0, 1.0))].tolist()  # NaN fails between() too
    if bad:
        raise WsimilError(f"{path}: score must be a probability in [0, 1]; bad or missing for slides {bad[:5]}")
    bad_split = sorted(set(df["split"].astype(str)) - set(SPLITS))
    if bad_split:
        raise WsimilError(f"{path}: unknown split values {bad_split} (expected {list(SPLITS)})")
    return df.assign(label=labels.astype(np.int64), score=scores.astype(np.float64))


def read_instance_scores(path: str | os.PathLike, slide_ids: list[str]) -> dict[str, np.ndarray]:
    """Read the per-patch scores of ``slide_ids`` from ``instance_scores.h5`` (one dataset per slide id)."""
    path = Path(path)
    if not path.is_file():
        raise WsimilError(f"instance scores file not found: {path}")
    out = {}
    try:
        with h5py.File(path, "r") as f:
            missing = [s for s in slide_ids if s not in f]
            if missing:
                raise WsimilError(f"{path}: no instance scores for slides {missing[:5]} ({len(missing)} missing)")
            for s in slide_ids:
                out[s] = np.asarray(f[s][()], dtype=np.float64).reshape(-1)
    except OSError as exc:
        raise WsimilError(f"cannot read instance scores file {path}: {exc}") from exc
    return out


def read_tumor_fraction(path: str | os.PathLike) -> np.ndarray | None:
    """``tumor_fraction`` of one feature file (None when the file has none), checked against its patch count.

    Reads only that dataset and the shape of ``features``: evaluation needs no feature values, and loading
    them (``read_features``) would read gigabytes on a real test set.
    """
    path = Path(path)
    if not path.is_file():
        raise WsimilError(f"feature file not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            if "tumor_fraction" not in f:
                return None
            tf = np.asarray(f["tumor_fraction"][()], dtype=np.float64).reshape(-1)
            n = f["features"].shape[-2] if "features" in f else len(tf)
    except OSError as exc:
        raise WsimilError(f"cannot read feature file {path}: {exc}") from exc
    if len(tf) != n:
        raise WsimilError(f"{path}: {len(tf)} tumor_fraction values but {n} feature rows")
    return tf


def read_metrics(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``metrics.json``, turning JSON null back into NaN for the numeric entries."""
    path = Path(path)
    if not path.is_file():
        raise WsimilError(f"metrics file not found: {path} (run `wsimil evaluate` on its run directory)")
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WsimilError(f"cannot read metrics file {path}: {exc}") from exc
    return {k: (math.nan if v is None and not _is_text_key(k) else v) for k, v in obj.items()}


def _is_text_key(key: str) -> bool:
    """Entries whose null means "nothing to say" rather than NaN."""
    return "reason" in key or "note" in key or key in ("experiment", "method", "run_dir", "split")


def _run_identity(run_dir: Path) -> dict[str, Any]:
    """method, seed, experiment from ``run.json``, else from the path ``<experiment>/<method>/seed<k>``."""
    from_path: dict[str, Any] = {}
    m = _SEED_DIR.match(run_dir.name)
    if m:
        from_path = {"seed": int(m.group(1)), "method": run_dir.parent.name, "experiment": run_dir.parent.parent.name}
    run_json = run_dir / "run.json"
    from_file: dict[str, Any] = {}
    if run_json.is_file():
        try:
            info = json.loads(run_json.read_text())
        except (OSError, ValueError) as exc:
            raise WsimilError(f"cannot read {run_json}: {exc}") from exc
        from_file = {k: info[k] for k in ("method", "seed", "experiment") if k in info}
        excluded = info.get("excluded_slides") or {}  # empty bags left out of training and scoring
        from_file["n_excluded_slides"] = len(excluded)
        from_file["excluded_slides_note"] = "; ".join(f"{k}: {v}" for k, v in sorted(excluded.items())) or None
    ident = {**from_path, **from_file}
    missing = [k for k in ("method", "seed", "experiment") if k not in ident]
    if missing:
        raise WsimilError(
            f"{run_dir}: cannot tell the run's {missing}: no run.json with them and the path is not "
            "<experiment>/<method>/seed<k>"
        )
    return ident


def _nan_to_none(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in obj.items()}


def evaluate_run(
    run_dir: str | os.PathLike,
    features_dir: str | os.PathLike,
    *,
    split: str = "test",
    threshold: float = 0.5,
    positive_fraction: float = 0.5,
    n_boot: int = 1000,
    bootstrap_seed: int = 0,
) -> dict[str, Any]:
    """Compute the slide and patch metrics of one run, write ``<run_dir>/metrics.json`` and return them.

    The returned dict holds NaN where ``metrics.json`` holds null. Raises :class:`WsimilError` naming the
    file for a missing or malformed input.
    """
    run_dir, features_dir = Path(run_dir), Path(features_dir)
    if split not in SPLITS:
        raise WsimilError(f"unknown split {split!r} (expected one of {list(SPLITS)})")
    if not run_dir.is_dir():
        raise WsimilError(f"run directory not found: {run_dir}")
    ident = _run_identity(run_dir)
    preds = read_predictions(run_dir / "predictions.csv")

    out: dict[str, Any] = {
        **ident,
        "run_dir": str(run_dir),
        "split": split,
        "threshold": float(threshold),
        "positive_fraction": float(positive_fraction),
        "n_boot": int(n_boot),
        "bootstrap_seed": int(bootstrap_seed),
        "wsimil_version": __version__,
    }

    # Slide level: every split's AUC, full metrics + CI on the evaluated split.
    for s in SPLITS:
        part = preds[preds["split"] == s]
        m = slide_metrics(part["label"].to_numpy(), part["score"].to_numpy(), threshold)
        out[f"{s}_auc"], out[f"{s}_n"], out[f"{s}_auc_nan_reason"] = m["auc"], m["n"], m["auc_nan_reason"]
    ev = preds[preds["split"] == split]
    if ev.empty:
        raise WsimilError(f"{run_dir / 'predictions.csv'}: no slides with split {split!r}")
    labels, scores = ev["label"].to_numpy(), ev["score"].to_numpy()
    m = slide_metrics(labels, scores, threshold)
    low, high = bootstrap_auc_ci(labels, scores, n_boot=n_boot, seed=bootstrap_seed)
    out.update({f"slide_{k}": v for k, v in m.items() if k != "threshold"})
    out["slide_auc_ci_low"], out["slide_auc_ci_high"] = low, high

    # Patch level.
    slide_ids = ev["slide_id"].tolist()
    ev_labels = dict(zip(slide_ids, ev["label"].tolist()))
    fractions = {s: read_tumor_fraction(features_dir / f"{s}.h5") for s in slide_ids}
    out.update(_patch_block(run_dir, slide_ids, ev_labels, fractions, positive_fraction))

    write_json_atomic(run_dir / "metrics.json", _nan_to_none(out))
    return out


_PATCH_KEYS = ("auc", "ap", "mean_slide_auc", "n_slides", "n_slides_both_classes", "n_patches", "n_pos")


def _patch_block(
    run_dir: Path,
    slide_ids: list[str],
    labels: dict[str, int],
    fractions: dict[str, np.ndarray | None],
    positive_fraction: float,
) -> dict[str, Any]:
    """Patch metrics on the tumour slides and on all slides of the split.

    A normal slide (label 0) without ``tumor_fraction`` counts as all-normal patches (a negative slide
    has no tumour by definition); a tumour slide without one is left out (counted in
    ``patch_n_tumour_slides_unannotated``), since which of its patches are tumour is unknown.
    """
    tumour = [s for s in slide_ids if labels[s] == 1]
    unannotated = [s for s in tumour if fractions[s] is None]
    annotated_tumour = [s for s in tumour if fractions[s] is not None]
    out: dict[str, Any] = {
        "patch_n_tumour_slides_unannotated": len(unannotated),
        "patch_metrics_skipped_reason": None,
    }
    empty = {f"patch_{k}_{group}": math.nan for group in ("tumour_slides", "all_slides") for k in _PATCH_KEYS}
    if not tumour:
        return {**out, **empty, "patch_metrics_skipped_reason": "no tumour slides in the evaluated split"}
    if not annotated_tumour:
        return {
            **out,
            **empty,
            "patch_metrics_skipped_reason": f"no tumor_fraction in the feature files of the {len(tumour)} tumour "
            "slides (no annotations): patch-level ground truth unknown",
        }
    usable = [s for s in slide_ids if s not in unannotated]
    scores = read_instance_scores(run_dir / "instance_scores.h5", usable)
    tf = {s: (fractions[s] if fractions[s] is not None else np.zeros(len(scores[s]))) for s in usable}
    for group, ids in (("tumour_slides", annotated_tumour), ("all_slides", usable)):
        try:
            pm = patch_metrics({s: scores[s] for s in ids}, {s: tf[s] for s in ids}, positive_fraction)
        except ValueError as exc:
            raise WsimilError(f"{run_dir / 'instance_scores.h5'}: {exc}") from exc
        out.update({f"patch_{k}_{group}": pm[k] for k in _PATCH_KEYS})
        out[f"patch_auc_nan_reason_{group}"] = pm["auc_nan_reason"]
    if unannotated:
        out["patch_metrics_note"] = f"tumour slides without tumor_fraction left out: {unannotated[:10]}"
    return out
