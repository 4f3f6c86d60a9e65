"""Slide- and patch-level metrics: pure functions of arrays, no files.

Conventions shared by every function here:

- ``labels`` are 0 (normal) / 1 (tumour); ``scores`` are finite and higher means more tumour-like.
- A metric that cannot be computed (an AUC on one class) is ``NaN`` and the dict says why in a
  ``*_nan_reason`` entry; it is never silently 0.5 or 0.
- Slide predictions are positive when ``score >= threshold``.
"""

from __future__ import annotations

import math
import warnings
from typing import Mapping

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    roc_auc_score,
    roc_curve,
)

NAN = float("nan")


def _check_labels_scores(labels, scores, what: str = "") -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    where = f" ({what})" if what else ""
    if labels.ndim != 1 or scores.ndim != 1:
        raise ValueError(f"labels and scores must be 1-d{where}, got {labels.shape} and {scores.shape}")
    if len(labels) != len(scores):
        raise ValueError(f"{len(labels)} labels but {len(scores)} scores{where}")
    if len(labels) and not np.isin(labels, (0, 1)).all():
        bad = sorted(set(np.unique(labels).tolist()) - {0, 1})
        raise ValueError(f"labels must be 0 or 1{where}, found {bad[:5]}")
    if not np.isfinite(scores).all():
        raise ValueError(f"{int((~np.isfinite(scores)).sum())} scores are NaN or infinite{where}")
    return labels.astype(np.int64), scores


def _one_class_reason(labels: np.ndarray, what: str) -> str | None:
    """Why an AUC over ``labels`` is undefined, or None when both classes are present."""
    if len(labels) == 0:
        return f"no {what}"
    n_pos = int(labels.sum())
    if n_pos == 0:
        return f"AUC undefined: all {len(labels)} {what} are negative (label 0)"
    if n_pos == len(labels):
        return f"AUC undefined: all {len(labels)} {what} are positive (label 1)"
    return None


def slide_metrics(labels, scores, threshold: float = 0.5) -> dict:
    """Slide-level AUC (threshold-free) and accuracy, F1, balanced accuracy at ``score >= threshold``.

    Returns ``auc, auc_nan_reason, accuracy, f1, balanced_accuracy, n, n_pos, threshold``. ``auc`` is NaN,
    with the reason in ``auc_nan_reason``, when only one class is present; with no slides at all every
    metric is NaN. F1 is 0 when nothing is predicted positive and nothing is positive (sklearn's
    ``zero_division=0``).
    """
    labels, scores = _check_labels_scores(labels, scores, "slide metrics")
    n, n_pos = len(labels), int(labels.sum())
    out = {"n": n, "n_pos": n_pos, "threshold": float(threshold)}
    reason = _one_class_reason(labels, "slides")
    if n == 0:
        return {**out, "auc": NAN, "auc_nan_reason": reason, "accuracy": NAN, "f1": NAN, "balanced_accuracy": NAN}
    pred = (scores >= threshold).astype(np.int64)
    with warnings.catch_warnings():
        # balanced accuracy on one class warns "y_pred contains classes not in y_true"; the value
        # (recall of the class present) is still what it says.
        warnings.simplefilter("ignore", UserWarning)
        bacc = float(balanced_accuracy_score(labels, pred))
    return {
        **out,
        "auc": NAN if reason else float(roc_auc_score(labels, scores)),
        "auc_nan_reason": reason,
        "accuracy": float(accuracy_score(labels, pred)),
        "f1": float(f1_score(labels, pred, zero_division=0)),
        "balanced_accuracy": bacc,
    }


def youden_threshold(labels, scores, prefer: float = 0.5) -> tuple[float, str | None]:
    """The score threshold that maximises Youden's J = TPR - FPR, and None; or ``(NaN, reason)`` on one class.

    Candidates are the finite thresholds of ``sklearn.metrics.roc_curve`` (every distinct score, with
    ``drop_intermediate=False`` so no tied point is dropped); a slide is positive when ``score >= threshold``,
    as in ``roc_curve``. Ties in J go to the threshold closest to ``prefer`` (0.5), and a remaining tie (two
    thresholds equally far from it) to the higher one. The official DTFD-MIL / DSMIL ``optimal_thresh`` takes
    the first maximum of ``roc_curve``'s list instead, i.e. the highest tied threshold.
    """
    labels, scores = _check_labels_scores(labels, scores, "Youden threshold")
    reason = _one_class_reason(labels, "slides")
    if reason:
        return NAN, reason.replace("AUC undefined", "Youden threshold undefined")
    fpr, tpr, thr = roc_curve(labels, scores, drop_intermediate=False)
    finite = np.isfinite(thr)
    fpr, tpr, thr = fpr[finite], tpr[finite], thr[finite]
    j = tpr - fpr
    tied = np.flatnonzero(np.isclose(j, j.max(), rtol=0.0, atol=1e-12))
    # lexicographic: smallest distance to `prefer`, then the highest threshold
    best = min(tied, key=lambda i: (abs(float(thr[i]) - prefer), -float(thr[i])))
    return float(thr[best]), None


def score_auc(labels, scores, what: str = "slides") -> tuple[float, str | None]:
    """ROC AUC of ``scores`` against ``labels`` and None, or ``(NaN, reason)`` when a class is missing."""
    labels, scores = _check_labels_scores(labels, scores, what)
    reason = _one_class_reason(labels, what)
    return (NAN, reason) if reason else (float(roc_auc_score(labels, scores)), None)


def _auc_rows(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC of every row of ``scores`` (B, n) against ``labels`` (B, n), Mann-Whitney with mid-ranks.

    Equal to ``roc_auc_score`` row by row (ties count one half), in one vectorised pass.
    """
    ranks = rankdata(scores, axis=1)
    n_pos = labels.sum(axis=1)
    n_neg = labels.shape[1] - n_pos
    rank_sum = (ranks * labels).sum(axis=1)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def bootstrap_auc_ci(
    labels, scores, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile ``1 - alpha`` confidence interval of the ROC AUC by stratified bootstrap.

    Positives and negatives are resampled with replacement separately, so every replicate keeps the
    class counts and has a defined AUC. Deterministic for a given ``seed``. ``(NaN, NaN)`` when a class
    is missing.
    """
    labels, scores = _check_labels_scores(labels, scores, "bootstrap")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if _one_class_reason(labels, "slides"):
        return NAN, NAN
    rng = np.random.default_rng(seed)
    pos, neg = scores[labels == 1], scores[labels == 0]
    boot_pos = pos[rng.integers(0, len(pos), size=(n_boot, len(pos)))]
    boot_neg = neg[rng.integers(0, len(neg), size=(n_boot, len(neg)))]
    boot_scores = np.concatenate([boot_pos, boot_neg], axis=1)
    boot_labels = np.broadcast_to(
        np.concatenate([np.ones(len(pos)), np.zeros(len(neg))]), boot_scores.shape
    )
    aucs = _auc_rows(boot_labels, boot_scores)
    low, high = np.quantile(aucs, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def patch_metrics(
    scores_per_slide: Mapping[str, np.ndarray],
    tumor_fraction_per_slide: Mapping[str, np.ndarray],
    positive_fraction: float = 0.5,
) -> dict:
    """Patch-level localisation metrics over the given slides.

    A patch is tumour when its ``tumor_fraction >= positive_fraction``. Scores of all slides are pooled
    (one model scores every patch, so they share a scale): ``auc`` (ROC AUC) and ``ap`` (average
    precision) on the pool; ``mean_slide_auc`` averages the AUC of each slide that holds both classes
    (on tumour slides this asks "does the model rank tumour above the normal tissue of the same slide",
    free of between-slide scale differences). Counts: ``n_slides``, ``n_slides_both_classes``,
    ``n_patches``, ``n_pos``. Undefined values are NaN with ``auc_nan_reason`` /
    ``mean_slide_auc_nan_reason``.

    The two mappings must hold the same slide ids and, per slide, arrays of the same length (the
    instance-score order is the feature-file order); a mismatch raises ``ValueError`` naming the slide.
    """
    missing_tf = sorted(set(scores_per_slide) - set(tumor_fraction_per_slide))
    missing_scores = sorted(set(tumor_fraction_per_slide) - set(scores_per_slide))
    if missing_tf or missing_scores:
        raise ValueError(
            f"patch metrics: slides with scores but no tumor_fraction: {missing_tf[:5]}; "
            f"with tumor_fraction but no scores: {missing_scores[:5]}"
        )
    all_scores, all_labels, slide_aucs = [], [], []
    for slide_id in scores_per_slide:
        s = np.asarray(scores_per_slide[slide_id], dtype=np.float64).reshape(-1)
        tf = np.asarray(tumor_fraction_per_slide[slide_id], dtype=np.float64).reshape(-1)
        if len(s) != len(tf):
            raise ValueError(
                f"slide {slide_id}: {len(s)} instance scores but {len(tf)} tumor_fraction values "
                "(instance scores must follow the feature file's patch order)"
            )
        if not np.isfinite(s).all():
            raise ValueError(f"slide {slide_id}: instance scores contain NaN or infinite values")
        if not np.isfinite(tf).all():
            raise ValueError(f"slide {slide_id}: tumor_fraction contains NaN or infinite values")
        y = (tf >= positive_fraction).astype(np.int64)
        all_scores.append(s)
        all_labels.append(y)
        if 0 < y.sum() < len(y):
            slide_aucs.append(float(roc_auc_score(y, s)))
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    labels = np.concatenate(all_labels) if all_labels else np.zeros(0, dtype=np.int64)
    reason = _one_class_reason(labels, "patches")
    return {
        "auc": NAN if reason else float(roc_auc_score(labels, scores)),
        "ap": NAN if reason else float(average_precision_score(labels, scores)),
        "auc_nan_reason": reason,
        "mean_slide_auc": float(np.mean(slide_aucs)) if slide_aucs else NAN,
        "mean_slide_auc_nan_reason": None if slide_aucs else "no slide holds both tumour and normal patches",
        "n_slides": len(scores_per_slide),
        "n_slides_both_classes": len(slide_aucs),
        "n_patches": int(len(labels)),
        "n_pos": int(labels.sum()),
        "positive_fraction": float(positive_fraction),
    }


def is_nan(x) -> bool:
    """True for a float NaN (or None, which is how NaN is stored in JSON)."""
    return x is None or (isinstance(x, float) and math.isnan(x))
