"""Bootstrap intervals for slide AUCs and for paired contrasts of AUCs.

Design (fixed before any run; the report's claims are judged by it):

- **Unit of resampling: the test slide.** A method's score of a slide is the *mean over its
  seeds' scores* (:func:`seed_averaged`), so the interval describes the uncertainty that comes
  from which slides were drawn, for the seed-averaged classifier. Seed-to-seed variation is
  averaged out first, not bootstrapped.
- **Stratified.** Tumour (1) and normal (0) slides are resampled separately with replacement,
  so every resample has both classes with the original counts and every resample AUC is
  defined (:func:`stratified_counts`).
- **Paired.** Every AUC that enters a contrast is computed on the *same* resample of slides:
  the columns of one slide set share its resamples, and slide sets given the same ``pair_key``
  (the same slides: clean vs poisoned features of the test slides, the same tissue re-stained
  by another hospital) share their resample counts. Slide sets with different keys (different
  slides) are resampled independently.
- **Percentile intervals** of the contrast over ``n_boot`` resamples (``numpy.quantile``,
  linear interpolation), at ``level`` (default 0.95).
- **Deterministic** given ``seed``: one ``numpy.random.default_rng(seed)`` draws the counts of
  each pair key in the order the keys first appear.
- **AUC** is the Mann-Whitney AUC: ties count 1/2 (as ``sklearn.metrics.roc_auc_score``). For a
  column with positive scores ``s_pos`` (n_pos,) and negative scores ``s_neg`` (n_neg,), the
  comparison matrix ``C[i, j] = 1 if s_pos[i] > s_neg[j], 0.5 if equal, 0 otherwise``; a
  resample that draws positive i ``w_pos[i]`` times and negative j ``w_neg[j]`` times has
  ``AUC = w_pos @ C @ w_neg / (n_pos * n_neg)``: no re-sorting per resample.
- **Verdicts** (:func:`verdict`) read only the interval and a margin chosen in advance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Sequence

import numpy as np
import pandas as pd

__all__ = [
    "Interval",
    "auc_interval",
    "bootstrap_aucs",
    "cluster_auc_matrix",
    "cluster_aucs",
    "contrast_interval",
    "paired_difference",
    "seed_averaged",
    "stratified_counts",
    "verdict",
]

VERDICTS = ("supported", "contradicted", "inconclusive")


def _fmt(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.3f}"


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile bootstrap interval ``[low, high]`` at ``level``."""

    estimate: float
    low: float
    high: float
    level: float = 0.95
    n_boot: int = 0

    @property
    def width(self) -> float:
        """``high - low`` (NaN when a bound is NaN)."""
        return float(self.high - self.low)

    def __str__(self) -> str:
        if all(not math.isfinite(v) for v in (self.estimate, self.low, self.high)):
            return "n/a"
        return f"{_fmt(self.estimate)} [{_fmt(self.low)}, {_fmt(self.high)}]"


# ----------------------------------------------------------------------------- validation


def _check_labels(labels, what: str = "") -> np.ndarray:
    where = f" ({what})" if what else ""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-d{where}, got shape {labels.shape}")
    if labels.dtype.kind not in "biuf":
        raise ValueError(f"labels must be 0/1 numbers{where}, got dtype {labels.dtype}")
    if not np.isin(labels, (0, 1)).all():
        bad = sorted(set(np.unique(labels).tolist()) - {0, 1})
        raise ValueError(f"labels must be 0 (normal) or 1 (tumour){where}, found {bad[:5]}")
    labels = labels.astype(np.int8)
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == len(labels):
        only = "tumour (1)" if n_pos else "normal (0)"
        raise ValueError(
            f"an AUC needs both classes{where}: all {len(labels)} slides are {only}"
        )
    return labels


def _check_scores(labels: np.ndarray, scores, what: str = "") -> np.ndarray:
    where = f" ({what})" if what else ""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[:, None]
    if scores.ndim != 2:
        raise ValueError(f"scores must be (n,) or (n, k){where}, got shape {scores.shape}")
    if scores.shape[0] != len(labels):
        raise ValueError(f"{len(labels)} labels but {scores.shape[0]} score rows{where}")
    if scores.shape[1] == 0:
        raise ValueError(f"scores have no columns{where}")
    bad = ~np.isfinite(scores)
    if bad.any():
        rows, cols = np.nonzero(bad)
        raise ValueError(
            f"scores must be finite{where}: {int(bad.sum())} non-finite value(s), "
            f"first at slide row {rows[0]}, column {cols[0]} ({scores[rows[0], cols[0]]})"
        )
    return scores


def _check_n_boot_level(n_boot: int, level: float | None = None) -> None:
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    if level is not None and not (0.0 < level < 1.0):
        raise ValueError(f"level must be in (0, 1), got {level!r}")


# ----------------------------------------------------------------------------- resampling


def stratified_counts(labels: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """How many times each slide is drawn in each stratified resample.

    ``labels`` (n,) of 0/1; returns an int array (n_boot, n) whose rows sum to n_pos over the
    positives and to n_neg over the negatives (multinomial, uniform, within each class).
    """
    labels = _check_labels(labels)
    _check_n_boot_level(n_boot)
    counts = np.zeros((int(n_boot), len(labels)), dtype=np.int64)
    for cls in (1, 0):
        idx = np.flatnonzero(labels == cls)
        m = len(idx)
        counts[:, idx] = rng.multinomial(m, np.full(m, 1.0 / m), size=int(n_boot))
    return counts


def _comparison(s_pos: np.ndarray, s_neg: np.ndarray) -> np.ndarray:
    """(n_pos, n_neg) matrix: 1 where s_pos > s_neg, 0.5 where equal, 0 otherwise."""
    d = s_pos[:, None] - s_neg[None, :]
    return (d > 0).astype(np.float64) + 0.5 * (d == 0)


def _aucs_on_counts(
    labels: np.ndarray, scores: np.ndarray, counts: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Point AUCs (k,) and, if ``counts`` (n_boot, n) is given, resample AUCs (n_boot, k)."""
    pos, neg = labels == 1, labels == 0
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    denom = float(n_pos * n_neg)
    k = scores.shape[1]
    point = np.empty(k)
    boot = None
    if counts is not None:
        w_pos = counts[:, pos].astype(np.float64)  # (n_boot, n_pos)
        w_neg = counts[:, neg].astype(np.float64)  # (n_boot, n_neg)
        boot = np.empty((counts.shape[0], k))
    for c in range(k):
        cmp = _comparison(scores[pos, c], scores[neg, c])
        point[c] = cmp.sum() / denom
        if boot is not None:
            boot[:, c] = np.einsum("bj,bj->b", w_pos @ cmp, w_neg) / denom
    return point, boot


def bootstrap_aucs(
    labels: np.ndarray, scores: np.ndarray, n_boot: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of k score columns on the same stratified resamples.

    ``labels`` (n,) 0/1, ``scores`` (n, k) or (n,). Returns ``(point (k,), boot (n_boot, k))``:
    the AUCs on the original slides and on each resample (row b of every column uses the same
    resample b).
    """
    labels = _check_labels(labels)
    scores = _check_scores(labels, scores)
    counts = stratified_counts(labels, n_boot, np.random.default_rng(seed))
    point, boot = _aucs_on_counts(labels, scores, counts)
    return point, boot


def _percentile(estimate: float, draws: np.ndarray, level: float, n_boot: int) -> Interval:
    alpha = 1.0 - level
    if not np.isfinite(draws).all():
        return Interval(float(estimate), math.nan, math.nan, level, n_boot)
    low, high = np.quantile(draws, [alpha / 2.0, 1.0 - alpha / 2.0])
    return Interval(float(estimate), float(low), float(high), float(level), int(n_boot))


def auc_interval(
    labels: np.ndarray, scores: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> Interval:
    """Percentile interval of the AUC of one score vector ``scores`` (n,) against ``labels`` (n,)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 2 and scores.shape[1] != 1:
        raise ValueError(f"auc_interval takes one score column, got shape {scores.shape}")
    return contrast_interval(
        [(labels, scores)],
        [np.ones(1)],
        n_boot=n_boot,
        seed=seed,
        level=level,
    )


def contrast_interval(
    groups: Sequence[tuple[np.ndarray, np.ndarray]],
    weights: Sequence[np.ndarray],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    pair_keys: Sequence[Hashable] | None = None,
) -> Interval:
    """Interval of the contrast ``sum_g weights[g] @ AUC_g`` over slide sets ``groups``.

    ``groups[g] = (labels (n_g,), scores (n_g, k_g))``; ``weights[g]`` (k_g,) coefficients of
    that set's k_g AUCs (e.g. ``[+1/2, +1/2, -1/2, -1/2]`` for the mean of two max-pooling
    methods minus the mean of two attention methods). ``pair_keys[g]`` (one per group, default
    all different) says which groups are the same slides: groups with equal keys share the same
    resample counts (their labels must then be equal), groups with different keys are resampled
    independently. The columns within a group always share resamples.
    """
    _check_n_boot_level(n_boot, level)
    if len(groups) == 0:
        raise ValueError("contrast_interval needs at least one group")
    if len(weights) != len(groups):
        raise ValueError(f"{len(groups)} groups but {len(weights)} weight arrays")
    if pair_keys is None:
        pair_keys = list(range(len(groups)))
    elif len(pair_keys) != len(groups):
        raise ValueError(f"{len(groups)} groups but {len(pair_keys)} pair keys")

    checked = []
    for g, ((labels, scores), w) in enumerate(zip(groups, weights)):
        labels = _check_labels(labels, f"group {g}")
        scores = _check_scores(labels, scores, f"group {g}")
        w = np.asarray(w, dtype=np.float64).reshape(-1)
        if len(w) != scores.shape[1]:
            raise ValueError(
                f"group {g}: {scores.shape[1]} score columns but {len(w)} weights"
            )
        if not np.isfinite(w).all():
            raise ValueError(f"group {g}: weights must be finite, got {w.tolist()}")
        checked.append((labels, scores, w))

    rng = np.random.default_rng(seed)
    counts_of: dict[Hashable, tuple[int, np.ndarray]] = {}
    estimate = 0.0
    draws = np.zeros(int(n_boot))
    for g, ((labels, scores, w), key) in enumerate(zip(checked, pair_keys)):
        if key in counts_of:
            first, counts = counts_of[key]
            if not np.array_equal(checked[first][0], labels):
                raise ValueError(
                    f"groups {first} and {g} share pair key {key!r} but their labels differ: "
                    "a shared key means the same slides in the same order"
                )
        else:
            counts = stratified_counts(labels, n_boot, rng)
            counts_of[key] = (g, counts)
        point, boot = _aucs_on_counts(labels, scores, counts)
        estimate = estimate + float(point @ w)
        draws = draws + boot @ w
    return _percentile(estimate, draws, level, int(n_boot))


def cluster_auc_matrix(
    labels: np.ndarray, cluster: np.ndarray, scores: np.ndarray, n_clusters: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The AUC of rows grouped in clusters (patches in slides), reduced to cluster pairs.

    ``labels`` (N,) 0/1, ``cluster`` (N,) ints in [0, n_clusters), ``scores`` (N,). Returns
    ``(M (K, K), n_pos (K,), n_neg (K,))`` with ``M[k, l]`` = sum over the positives i of cluster
    k and the negatives j of cluster l of ``1[s_i > s_j] + 0.5 * 1[s_i == s_j]``, so that for
    clusters drawn ``w`` (K,) times the AUC of every row of every drawn cluster (counted with its
    cluster's weight) is ``w @ M @ w / ((w @ n_pos) * (w @ n_neg))`` (:func:`cluster_aucs`). Costs
    O(N log N) per cluster, not O(n_pos * n_neg).
    """
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    cluster = np.asarray(cluster).reshape(-1).astype(np.int64)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not (len(labels) == len(cluster) == len(scores)):
        raise ValueError(f"labels {len(labels)}, cluster {len(cluster)} and scores {len(scores)} differ in length")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if len(cluster) and (cluster.min() < 0 or cluster.max() >= n_clusters):
        raise ValueError(f"cluster indices must lie in [0, {n_clusters})")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    pos, neg = labels == 1, labels == 0
    n_pos = np.bincount(cluster[pos], minlength=n_clusters).astype(np.float64)
    n_neg = np.bincount(cluster[neg], minlength=n_clusters).astype(np.float64)
    m = np.zeros((n_clusters, n_clusters))
    sp, kp = scores[pos], cluster[pos]
    for k_neg in np.flatnonzero(n_neg):
        sn = np.sort(scores[neg & (cluster == k_neg)])
        below = np.searchsorted(sn, sp, side="left")  # negatives < s_i
        ties = np.searchsorted(sn, sp, side="right") - below
        m[:, k_neg] = np.bincount(kp, weights=below + 0.5 * ties, minlength=n_clusters)
    return m, n_pos, n_neg


def cluster_aucs(m: np.ndarray, n_pos: np.ndarray, n_neg: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """AUCs (n_boot,) of the clustered rows when the clusters are drawn ``counts`` (n_boot, K) times, from
    :func:`cluster_auc_matrix`; NaN for a resample without a positive or a negative row."""
    w = np.asarray(counts, dtype=np.float64)
    if w.ndim == 1:
        w = w[None, :]
    denom = (w @ n_pos) * (w @ n_neg)
    num = np.einsum("bk,kl,bl->b", w, m, w)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, num / np.where(denom > 0, denom, 1.0), np.nan)


def paired_difference(
    labels: np.ndarray,
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """Interval of ``AUC(b) - AUC(a)`` for two score vectors (n,) of the same slides,
    both AUCs computed on the same resamples."""
    a = np.asarray(scores_a, dtype=np.float64).reshape(-1)
    b = np.asarray(scores_b, dtype=np.float64).reshape(-1)
    if len(a) != len(b):
        raise ValueError(f"scores_a has {len(a)} slides but scores_b has {len(b)}")
    return contrast_interval(
        [(labels, np.column_stack([a, b]))],
        [np.array([-1.0, 1.0])],
        n_boot=n_boot,
        seed=seed,
        level=level,
    )


def verdict(interval: Interval, margin: float, direction: int = +1) -> str:
    """The verdict on a claim about a difference, from its interval only.

    Rule, fixed before any run: let ``d = direction * difference`` (``direction=+1`` when the
    claim is that the difference is positive, ``-1`` when it is negative), so the interval of
    ``d`` is ``[low, high]`` for +1 and ``[-high, -low]`` for -1. Then

    - ``"supported"`` when the whole interval of d lies above ``+margin`` (its low > margin),
    - ``"contradicted"`` when the whole interval of d lies below ``-margin`` (its high < -margin),
    - ``"inconclusive"`` otherwise: the interval touches or overlaps ``[-margin, +margin]``
      (a bound exactly on the margin is inconclusive), or a bound is NaN.

    ``margin >= 0``: the smallest difference that counts as a real difference.
    """
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, got {direction!r}")
    if not (isinstance(margin, (int, float, np.floating, np.integer)) and math.isfinite(margin)):
        raise ValueError(f"margin must be a finite number, got {margin!r}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    low, high = float(interval.low), float(interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):
        return "inconclusive"
    if direction == -1:
        low, high = -high, -low
    if low > margin:
        return "supported"
    if high < -margin:
        return "contradicted"
    return "inconclusive"


# ----------------------------------------------------------------------------- tables


def seed_averaged(predictions: pd.DataFrame) -> pd.DataFrame:
    """Each method's seed-averaged score of each slide.

    ``predictions``: long table with columns ``slide_id, label, method, seed, score`` (others
    ignored), one row per (method, seed, slide). Returns a wide table indexed by ``slide_id``
    (sorted) with an int ``label`` column and one column per method (in order of appearance)
    holding the mean over that method's seeds of the score.

    Raises ``ValueError`` naming the method and slide when a slide's label differs between rows,
    a score is not finite, a (method, seed, slide) row is repeated, a seed of a method lacks a
    slide another seed of it has, or a method lacks a slide some other method has.
    """
    need = ["slide_id", "label", "method", "seed", "score"]
    missing = [c for c in need if c not in predictions.columns]
    if missing:
        raise ValueError(f"predictions lack column(s) {missing}; have {list(predictions.columns)}")
    df = predictions[need].copy()
    if df.empty:
        raise ValueError("predictions are empty")

    scores = pd.to_numeric(df["score"], errors="coerce").astype(np.float64)
    bad = ~np.isfinite(scores.to_numpy())
    if bad.any():
        row = df[bad].iloc[0]
        raise ValueError(
            f"non-finite score for method {row['method']!r}, seed {row['seed']!r}, "
            f"slide {row['slide_id']!r}"
        )
    df["score"] = scores

    n_labels = df.groupby(["method", "slide_id"], sort=False)["label"].nunique()
    if (n_labels > 1).any():
        method, slide = n_labels[n_labels > 1].index[0]
        seen = sorted(df.loc[(df["method"] == method) & (df["slide_id"] == slide), "label"].unique())
        raise ValueError(
            f"method {method!r}: the seeds disagree on the label of slide {slide!r} ({seen})"
        )
    per_slide = df.groupby("slide_id", sort=False)["label"].nunique()
    if (per_slide > 1).any():
        slide = per_slide[per_slide > 1].index[0]
        rows = df[df["slide_id"] == slide].drop_duplicates(["method", "label"])
        seen = ", ".join(f"{m!r}: {lab}" for m, lab in zip(rows["method"], rows["label"]))
        raise ValueError(f"methods disagree on the label of slide {slide!r} ({seen})")

    dup = df.duplicated(["method", "seed", "slide_id"])
    if dup.any():
        row = df[dup].iloc[0]
        raise ValueError(
            f"method {row['method']!r}, seed {row['seed']!r} has slide {row['slide_id']!r} "
            "more than once"
        )

    methods = list(pd.unique(df["method"]))
    all_slides = set(df["slide_id"])
    for method in methods:
        sub = df[df["method"] == method]
        have = set(sub["slide_id"])
        lacking = sorted(all_slides - have, key=str)
        if lacking:
            raise ValueError(
                f"method {method!r} lacks slide {lacking[0]!r} that another method has "
                f"({len(lacking)} slide(s) missing)"
            )
        for seed, ss in sub.groupby("seed", sort=False):
            gap = sorted(have - set(ss["slide_id"]), key=str)
            if gap:
                raise ValueError(
                    f"method {method!r}, seed {seed!r} lacks slide {gap[0]!r} that its other "
                    f"seeds have ({len(gap)} slide(s) missing)"
                )

    wide = df.pivot_table(index="slide_id", columns="method", values="score", aggfunc="mean")
    wide = wide[methods]
    wide.columns.name = None
    labels = df.groupby("slide_id")["label"].first().astype(int)
    out = pd.concat([labels.rename("label"), wide], axis=1).sort_index()
    out.index.name = "slide_id"
    return out
