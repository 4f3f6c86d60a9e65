"""Evaluate one finished training run directory and write its ``metrics.json``.

Reads, from ``results/<dataset>/runs/<experiment>/<method>/seed<k>/``: ``predictions.csv`` (slide scores of
every split), ``instance_scores.h5`` (one score per patch, feature-file order) and ``run.json`` (method, seed,
experiment; optional: the path names them too), plus the ``tumor_fraction`` of the evaluated slides' feature
files. Writes ``metrics.json`` beside them, atomically.

How each metric is computed, with sources: ``docs/metrics.md``.

``metrics.json`` is one flat object (one row of the results table):

- ``slide_*``: metrics on the evaluated split (``split``, default test): ``slide_auc`` with its stratified
  bootstrap CI ``slide_auc_ci_low`` / ``slide_auc_ci_high``, ``slide_accuracy``, ``slide_f1``,
  ``slide_balanced_accuracy`` at ``threshold``, ``slide_n``, ``slide_n_pos``.
- ``slide_threshold_val`` (+ ``slide_threshold_val_reason``): the Youden threshold of the *validation*
  split's predictions (0.5 when validation is absent or one-class, with the reason), and
  ``slide_accuracy_valthr``, ``slide_f1_valthr``, ``slide_balanced_accuracy_valthr`` on the evaluated split.
- ``slide_threshold_youden_test`` (+ ``_reason``), ``slide_accuracy_youden_test``, ``slide_f1_youden_test``,
  ``slide_balanced_accuracy_youden_test``: the Youden threshold of the evaluated split itself, as the
  official DTFD-MIL / DSMIL code reports Acc / F1 — optimistic (the threshold sees the test labels).
- ``<name>_<split>_auc`` (+ ``_n``, ``_auc_nan_reason``, ``<name>_auc_source``) for every extra
  ``<name>_score`` column of ``predictions.csv`` (e.g. DTFD's ``tier1_score`` -> ``tier1_test_auc``), on
  each split; a ``pseudo_bags.csv`` (DTFD-MIL: slide_id,label,split,pseudo_bag,score) gives the ``tier1_*``
  keys over pseudo-bags instead, as the official First-Tier AUC.
- ``train_auc``, ``val_auc``, ``test_auc`` (+ ``*_n``, ``*_auc_nan_reason``): the slide AUC of every split
  in ``predictions.csv`` (a split with no slides is null).
- ``patch_*_tumour_slides``: patch AUC / AP / mean per-slide AUC / counts over the evaluated split's tumour
  slides (label 1) — the FocusMIL / DTFD localisation protocol; ``patch_*_all_slides``: the same over all of
  the split's slides (normal slides add only negatives). A patch is positive at ``tumor_fraction >=
  positive_fraction`` (0.5); the ``patch_*_any`` keys count every patch with any tumour as positive (so the
  isolated-tumour-cell patches count too), and ``patch_n_partial_*`` counts the patches with some tumour
  below the positive fraction.
- ``patch_metrics_skipped_reason``: null, or why the patch metrics are null (no ``tumor_fraction``).
- ``froc``, ``froc_sens_at_0.25`` ... ``froc_sens_at_8``, ``froc_n_slides``, ``froc_n_lesions``,
  ``froc_n_itc_lesions``, ``froc_skipped_reason``, ``froc_note``: the CAMELYON16 lesion-level FROC of the
  instance-score heatmaps (:mod:`wsimil.evaluation.froc`) when annotations are given, else null with the
  reason.
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
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from wsimil import __version__
from wsimil.evaluation.froc import FROC_RATES, detections_from_heatmap, froc, lesions_from_xml
from wsimil.evaluation.metrics import (
    bootstrap_auc_ci,
    patch_metrics,
    score_auc,
    slide_metrics,
    youden_threshold,
)
from wsimil.features.store import feature_path
from wsimil.h5gate import dataset, open_h5
from wsimil.io import WsimilError, check_slide_id, read_error, write_json_atomic

PREDICTION_COLUMNS = ("slide_id", "label", "split", "score")
SPLITS = ("train", "val", "test")
_SEED_DIR = re.compile(r"^seed(\d+)$")
_EXTRA_SCORE = re.compile(r"^(?P<name>[A-Za-z0-9_]+)_score$")


def extra_score_columns(df: pd.DataFrame) -> dict[str, str]:
    """Extra score columns of a predictions table: ``{"tier1": "tier1_score", ...}`` (``score`` itself excluded)."""
    out = {}
    for col in df.columns:
        m = _EXTRA_SCORE.match(str(col))
        if m and col not in PREDICTION_COLUMNS:
            out[m.group("name")] = str(col)
    return out


def _read_csv(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """A run's CSV with slide ids and splits as text; an unreadable file or a missing column names the file."""
    try:
        df = pd.read_csv(path, dtype={"slide_id": str, "split": str})
    except (OSError, ValueError) as exc:
        raise WsimilError(f"cannot read {path}: {read_error(exc)}") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise WsimilError(f"{path}: missing columns {missing} (expected {','.join(columns)})")
    return df


def read_predictions(path: str | os.PathLike) -> pd.DataFrame:
    """Read and check ``predictions.csv``: the contract's columns, unique ids, 0/1 labels, scores in [0, 1].

    Other columns are kept. An extra ``<name>_score`` column must be numeric (an empty cell is NaN: no
    score for that slide) and is returned as float.
    """
    path = Path(path)
    if not path.is_file():
        raise WsimilError(f"predictions file not found: {path} (has the training run finished?)")
    df = _read_csv(path, PREDICTION_COLUMNS)
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
    extra = {}
    for col in extra_score_columns(df).values():
        values = pd.to_numeric(df[col], errors="coerce")
        bad = df["slide_id"][values.isna() & df[col].notna()].tolist()
        bad += df["slide_id"][np.isinf(values.to_numpy(dtype=np.float64, na_value=np.nan))].tolist()
        if bad:
            raise WsimilError(
                f"{path}: column {col!r} must hold finite numbers (or be empty); bad for slides {bad[:5]}"
            )
        extra[col] = values.astype(np.float64)
    return df.assign(label=labels.astype(np.int64), score=scores.astype(np.float64), **extra)


def read_instance_scores(path: str | os.PathLike, slide_ids: list[str]) -> dict[str, np.ndarray]:
    """Read the per-patch scores of ``slide_ids`` from ``instance_scores.h5`` (one dataset per slide id)."""
    out = {}
    with open_h5(path, "instance scores file") as f:
        missing = [s for s in slide_ids if s not in f]
        if missing:
            raise WsimilError(f"{path}: no instance scores for slides {missing[:5]} ({len(missing)} missing)")
        for s in slide_ids:
            out[s] = np.asarray(dataset(f, s, path)[()], dtype=np.float64).reshape(-1)
    return out


def read_tumor_fraction(path: str | os.PathLike) -> np.ndarray | None:
    """``tumor_fraction`` of one feature file (None when the file has none), checked against its patch count.

    Reads only that dataset and the shape of ``features``: evaluation needs no feature values, and loading
    them (``read_features``) would read gigabytes on a real test set.
    """
    with open_h5(path) as f:
        if "tumor_fraction" not in f:
            return None
        tf = np.asarray(dataset(f, "tumor_fraction", path)[()], dtype=np.float64).reshape(-1)
        n = dataset(f, "features", path).shape[-2] if "features" in f else len(tf)
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
    annotations: Mapping[str, str | os.PathLike | None] | None = None,
) -> dict[str, Any]:
    """Compute the slide, patch and lesion (FROC) metrics of one run, write ``<run_dir>/metrics.json`` and return them.

    ``annotations``: slide id -> ASAP XML path (None or absent: no annotation, i.e. no lesion on a normal
    slide) for the FROC; None skips it. The returned dict holds NaN where ``metrics.json`` holds null.
    Raises :class:`WsimilError` naming the file for a missing or malformed input.
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
    out.update(_threshold_block(preds, labels, scores, split))
    out.update(_extra_score_block(preds))
    out.update(_pseudo_bag_block(run_dir / "pseudo_bags.csv"))

    # Patch level.
    slide_ids = ev["slide_id"].tolist()
    ev_labels = dict(zip(slide_ids, ev["label"].tolist()))
    fractions = {s: read_tumor_fraction(feature_path(features_dir, s)) for s in slide_ids}
    out.update(_patch_block(run_dir, slide_ids, ev_labels, fractions, positive_fraction))
    out.update(_froc_block(run_dir, features_dir, slide_ids, ev_labels, annotations))

    write_json_atomic(run_dir / "metrics.json", _nan_to_none(out))
    return out


#: the positive fraction of the "any tumour" patch metrics: a patch is positive when tumor_fraction > 0
ANY_TUMOUR = float(np.nextafter(0.0, 1.0))
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
    empty = {f"patch_{k}_{group}{suffix}": math.nan for group in ("tumour_slides", "all_slides")
             for k in _PATCH_KEYS for suffix in ("", "_any")}
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
        for suffix, fraction in (("", positive_fraction), ("_any", ANY_TUMOUR)):
            try:
                pm = patch_metrics({s: scores[s] for s in ids}, {s: tf[s] for s in ids}, fraction)
            except ValueError as exc:
                raise WsimilError(f"{run_dir / 'instance_scores.h5'}: {exc}") from exc
            out.update({f"patch_{k}_{group}{suffix}": pm[k] for k in _PATCH_KEYS})
            out[f"patch_auc_nan_reason_{group}{suffix}"] = pm["auc_nan_reason"]
        # isolated-tumour-cell-like patches: some tumour, less than the positive fraction (negatives above,
        # positives in the *_any metrics)
        out[f"patch_n_partial_{group}"] = int(sum(((tf[s] > 0) & (tf[s] < positive_fraction)).sum() for s in ids))
    if unannotated:
        out["patch_metrics_note"] = f"tumour slides without tumor_fraction left out: {unannotated[:10]}"
    return out


def _threshold_block(preds: pd.DataFrame, labels: np.ndarray, scores: np.ndarray, split: str) -> dict[str, Any]:
    """Accuracy / F1 / balanced accuracy at the validation-chosen and at the evaluated split's own Youden threshold."""
    out: dict[str, Any] = {}
    val = preds[preds["split"] == "val"]
    if val.empty:
        thr, reason = 0.5, "no validation slides in predictions.csv: fell back to 0.5"
    else:
        thr, why = youden_threshold(val["label"].to_numpy(), val["score"].to_numpy())
        reason = None if why is None else f"validation split: {why}; fell back to 0.5"
        thr = 0.5 if why else thr
    m = slide_metrics(labels, scores, thr)
    out.update({
        "slide_threshold_val": thr,
        "slide_threshold_val_reason": reason,
        "slide_accuracy_valthr": m["accuracy"],
        "slide_f1_valthr": m["f1"],
        "slide_balanced_accuracy_valthr": m["balanced_accuracy"],
    })
    thr, why = youden_threshold(labels, scores)
    m = slide_metrics(labels, scores, thr) if why is None else {}
    out.update({
        "slide_threshold_youden_test": thr,
        "slide_threshold_youden_test_reason": None if why is None else f"{split} split: {why}",
        "slide_accuracy_youden_test": m.get("accuracy", math.nan),
        "slide_f1_youden_test": m.get("f1", math.nan),
        "slide_balanced_accuracy_youden_test": m.get("balanced_accuracy", math.nan),
    })
    return out


def _extra_score_block(preds: pd.DataFrame) -> dict[str, Any]:
    """``<name>_<split>_auc`` for every extra ``<name>_score`` column (slides without a value left out)."""
    out: dict[str, Any] = {}
    for name, col in extra_score_columns(preds).items():
        out[f"{name}_auc_source"] = f"predictions.csv column {col}: one score per slide"
        for s in SPLITS:
            part = preds[(preds["split"] == s) & preds[col].notna()]
            auc, reason = score_auc(part["label"].to_numpy(), part[col].to_numpy(), f"{s} slides with a {col}")
            out[f"{name}_{s}_auc"], out[f"{name}_{s}_n"] = auc, len(part)
            out[f"{name}_{s}_auc_nan_reason"] = reason
    return out


PSEUDO_BAG_COLUMNS = ("slide_id", "label", "split", "pseudo_bag", "score")


def _pseudo_bag_block(path: Path) -> dict[str, Any]:
    """``tier1_<split>_auc`` over the pseudo-bags of ``pseudo_bags.csv`` (DTFD-MIL), when the file has rows.

    Each pseudo-bag carries its slide's label, as in the official test loop's First-Tier AUC
    (``Main_DTFD_MIL.py``). Takes the place of the same keys from a ``tier1_score`` column of
    ``predictions.csv``; ``tier1_auc_source`` says which one was used.
    """
    if not path.is_file():
        return {}
    df = _read_csv(path, PSEUDO_BAG_COLUMNS)
    if df.empty:  # a model without pseudo-bags writes the columns alone
        return {}
    labels = pd.to_numeric(df["label"], errors="coerce")
    scores = pd.to_numeric(df["score"], errors="coerce")
    bad = df["slide_id"][~labels.isin([0, 1]) | ~np.isfinite(scores.to_numpy(dtype=np.float64, na_value=np.nan))]
    if len(bad):
        raise WsimilError(f"{path}: label must be 0/1 and score finite; bad rows for slides {bad.tolist()[:5]}")
    out: dict[str, Any] = {"tier1_auc_source": f"{path.name}: one score per pseudo-bag, labelled with its slide"}
    for s in SPLITS:
        part = df["split"] == s
        auc, reason = score_auc(labels[part].to_numpy(np.int64), scores[part].to_numpy(np.float64), f"{s} pseudo-bags")
        out[f"tier1_{s}_auc"], out[f"tier1_{s}_n"], out[f"tier1_{s}_auc_nan_reason"] = auc, int(part.sum()), reason
    return out


def annotations_from_sheet(sheet_path: str | os.PathLike) -> dict[str, str | None]:
    """Slide id -> annotation XML path (resolved against the sheet's folder; None when empty) from ``slides.csv``."""
    from wsimil.datasets.sheet import read_sheet, resolve

    sheet = read_sheet(sheet_path)
    out = {}
    for sid, ann in zip(sheet["slide_id"], sheet["annotation"]):
        p = resolve(sheet_path, str(ann).strip())
        out[str(sid)] = None if p is None else str(p)
    return out


ANNOTATION_MANIFEST_HEADER = ("slide_id", "annotation", "bytes")
#: the largest annotation manifest read (a row per annotated slide: ~100 bytes)
MAX_ANNOTATION_MANIFEST_BYTES = 64 * 2**20


def write_annotation_manifest(paths: Mapping[str, str | os.PathLike], out: str | os.PathLike) -> Path:
    """One file standing for the annotation XMLs of a run's slides: tab-separated ``slide_id``, ``annotation``
    (absolute) and ``bytes``, one row per annotated slide in the order given. The workflow's evaluation jobs
    declare it and read the annotations through it (``wsimil evaluate --annotations``), so that an edited
    annotation makes every evaluation stale while each job names one input rather than one per slide."""
    from wsimil.io import write_text_atomic

    lines = ["\t".join(ANNOTATION_MANIFEST_HEADER)]
    for sid, p in paths.items():
        p = Path(p).resolve()
        if not p.is_file():
            raise WsimilError(f"annotation file not found: {p}")
        if "\t" in str(p) or "\n" in str(p):
            raise WsimilError(f"annotation of slide {sid}: a path with a tab or a line break cannot be listed")
        lines.append(f"{check_slide_id(sid)}\t{p}\t{p.stat().st_size}")
    out = Path(out)
    write_text_atomic(out, "\n".join(lines) + "\n")
    return out


def annotations_from_manifest(path: str | os.PathLike) -> dict[str, str]:
    """Slide id -> annotation XML path from :func:`write_annotation_manifest`'s file; a slide it does not list has
    no annotation. Refused, naming the manifest and the line: a wrong header, a duplicate slide, a relative path,
    a file whose size no longer matches its row (the manifest is stale), a manifest over 64 MiB."""
    path = Path(path)
    if not path.is_file():
        raise WsimilError(f"annotation manifest not found: {path}")
    if path.stat().st_size > MAX_ANNOTATION_MANIFEST_BYTES:
        raise WsimilError(f"annotation manifest {path}: larger than {MAX_ANNOTATION_MANIFEST_BYTES} bytes")
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise WsimilError(f"annotation manifest {path}: not UTF-8 text") from None
    if not lines or tuple(lines[0].split("\t")) != ANNOTATION_MANIFEST_HEADER:
        raise WsimilError(f"annotation manifest {path}: the first line must be {'<tab>'.join(ANNOTATION_MANIFEST_HEADER)}")
    out: dict[str, str] = {}
    for i, line in enumerate(lines[1:], start=2):
        parts = line.split("\t")
        if len(parts) != 3 or not parts[2].isdigit():
            raise WsimilError(f"annotation manifest {path}, line {i}: expected slide_id, annotation, bytes")
        sid, ann, size = parts
        try:
            sid = check_slide_id(sid)
        except WsimilError as exc:
            raise WsimilError(f"annotation manifest {path}, line {i}: {exc}") from None
        if sid in out:
            raise WsimilError(f"annotation manifest {path}, line {i}: slide {sid!r} listed twice")
        p = Path(ann)
        if not p.is_absolute():
            raise WsimilError(f"annotation manifest {path}, line {i}: the path is not absolute")
        if not p.is_file() or p.stat().st_size != int(size):
            raise WsimilError(f"annotation manifest {path}, line {i}: the manifest is stale (the annotation of "
                              f"slide {sid!r} is missing or changed since it was written); rerun the workflow")
        out[sid] = str(p)
    return out


_FROC_GEOMETRY_ATTRS = ("level0_size", "mpp_level0")


def read_patch_geometry(path: str | os.PathLike) -> tuple[np.ndarray | None, float, float, str | None]:
    """``coords`` (N, 2), level-0 patch side and level-0 um/px of a feature file, or a reason they are missing.

    The attributes are those :mod:`wsimil.features.extract` writes (``level0_size``, ``mpp_level0``), on
    the file or on its ``coords`` dataset. Returns ``(coords, level0_size, mpp_level0, None)`` or
    ``(None, nan, nan, reason)``.
    """
    with open_h5(path) as f:
        if "coords" not in f:
            return None, math.nan, math.nan, f"{path}: no 'coords' dataset"
        attrs = {**dict(dataset(f, "coords", path).attrs), **dict(f.attrs)}
        missing = [k for k in _FROC_GEOMETRY_ATTRS if k not in attrs]
        if missing:
            return None, math.nan, math.nan, (
                f"{path}: attribute(s) {missing} missing (needed for patch geometry in level-0 px and um; "
                "feature files written by `wsimil extract` have them)"
            )
        coords = np.asarray(f["coords"][()], dtype=np.float64).reshape(-1, 2)
        size, mpp = float(attrs["level0_size"]), float(attrs["mpp_level0"])
    if not (size > 0 and mpp > 0):
        return None, math.nan, math.nan, f"{path}: level0_size={size}, mpp_level0={mpp} must be > 0"
    return coords, size, mpp, None


def _froc_empty(reason: str) -> dict[str, Any]:
    out: dict[str, Any] = {"froc": math.nan, "froc_skipped_reason": reason, "froc_note": None}
    out.update({f"froc_sens_at_{r:g}": math.nan for r in FROC_RATES})
    out.update({"froc_n_slides": math.nan, "froc_n_lesions": math.nan, "froc_n_itc_lesions": math.nan})
    return out


def froc_inputs(
    run_dir: Path,
    features_dir: Path,
    slide_ids: list[str],
    labels: dict[str, int],
    annotations: Mapping[str, str | os.PathLike | None] | None,
    lesion_cache: dict[tuple[Path | None, float], list] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, list], list[str]] | str:
    """The detections and lesions of the evaluated slides that the FROC can score, and the tumour slides left
    out for want of an annotation; or the reason no FROC can be computed.

    A normal slide without annotation has no lesion; a tumour slide without annotation cannot be scored
    and is left out. Returns ``(detections, lesions, unannotated)`` keyed by the usable slides (in
    ``slide_ids`` order), or a string. ``lesion_cache`` (keyed by annotation file and mpp) lets a caller that
    scores many runs on the same slides parse each annotation once.
    """
    if annotations is None:
        return "no annotations given (pass `--annotations` or `--sheet slides.csv` to `wsimil evaluate`)"
    ann = {s: (None if annotations.get(s) in (None, "") else Path(annotations[s])) for s in slide_ids}
    unannotated = [s for s in slide_ids if labels[s] == 1 and ann[s] is None]
    usable = [s for s in slide_ids if s not in unannotated]
    if not any(labels[s] == 1 for s in usable):
        return (f"no annotated tumour slide among the {len(slide_ids)} evaluated slides "
                f"({len(unannotated)} tumour slides without annotation)")
    geometry = {}
    for s in usable:
        coords, size, mpp, why = read_patch_geometry(feature_path(features_dir, s))
        if why:
            return why
        geometry[s] = (coords, size, mpp)
    scores_path = run_dir / "instance_scores.h5"
    scores = read_instance_scores(scores_path, usable)
    detections, lesions = {}, {}
    cache = {} if lesion_cache is None else lesion_cache
    for s in usable:
        coords, size, mpp = geometry[s]
        if len(scores[s]) != len(coords):
            raise WsimilError(
                f"{scores_path}: slide {s}: {len(scores[s])} instance scores but {len(coords)} coords in "
                f"{feature_path(features_dir, s)} (instance scores must follow the feature file's patch order)"
            )
        try:
            detections[s] = detections_from_heatmap(scores[s], coords, size)
        except ValueError as exc:
            raise WsimilError(f"{scores_path}: slide {s}: {exc}") from exc
        key = (ann[s], float(mpp))
        if key not in cache:
            cache[key] = lesions_from_xml(ann[s], mpp)
        lesions[s] = cache[key]
    return detections, lesions, unannotated


def _froc_block(
    run_dir: Path,
    features_dir: Path,
    slide_ids: list[str],
    labels: dict[str, int],
    annotations: Mapping[str, str | os.PathLike | None] | None,
) -> dict[str, Any]:
    """The CAMELYON16 FROC of the instance-score heatmaps of the evaluated slides (:func:`froc_inputs`;
    the tumour slides left out are named in ``froc_note``)."""
    inputs = froc_inputs(run_dir, features_dir, slide_ids, labels, annotations)
    if isinstance(inputs, str):
        return _froc_empty(inputs)
    detections, lesions, unannotated = inputs
    res = froc(detections, lesions, n_slides=len(detections))
    out: dict[str, Any] = {
        "froc": res["froc"],
        "froc_skipped_reason": res["nan_reason"],
        "froc_note": f"tumour slides without annotation left out: {unannotated[:10]}" if unannotated else None,
    }
    out.update({f"froc_sens_at_{k}": v for k, v in res["sensitivity"].items()})
    out.update({"froc_n_slides": res["n_slides"], "froc_n_lesions": res["n_lesions"],
                "froc_n_itc_lesions": res["n_itc_lesions"]})
    return out
