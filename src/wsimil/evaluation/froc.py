"""Lesion-level FROC of the CAMELYON16 challenge, computed from a method's patch heatmap.

The rules follow the challenge's evaluation script (``Evaluation_FROC.py``, B. Ehteshami Bejnordi, 2016;
Bejnordi et al., JAMA 2017), re-implemented on vector geometry in level-0 pixels instead of a raster mask at
pyramid level 5 (see ``docs/metrics.md`` for every difference):

* **Lesions**: the tumour annotation (tumour groups minus ``_2`` exclusions) grown by half of
  ``dilation_um`` (75 um) on every side — the script thresholds a distance transform at
  ``75 / (2 * pixel size)``, so a lesion's diameter grows by 75 um — with holes filled; each connected
  region is one lesion, so tumour foci closer than 75 um merge into one.
* **ITC**: a lesion whose major axis (the moment-equivalent ellipse's, as skimage ``regionprops``
  ``major_axis_length`` in the script) is below ``itc_um`` = 275 um (200 um + the 75 um growth) is an
  isolated tumour cell cluster: a detection in it is neither a true nor a false positive, and it is not
  counted in the sensitivity's denominator.
* **Scoring**: a detection inside a non-ITC lesion is a hit for that lesion; only the highest-probability hit
  of a lesion counts (the others are ignored, not false positives); a detection outside every lesion is a
  false positive (every detection on a normal slide is one).
* **FROC**: sensitivity (detected non-ITC lesions / all non-ITC lesions) against the average number of
  false positives per slide over *all* evaluated slides, normal slides included, sweeping the detection
  threshold; the score is the mean sensitivity at 1/4, 1/2, 1, 2, 4 and 8 false positives per slide,
  linearly interpolated on the curve as the script's ``np.interp``.

Detections come from a patch heatmap by :func:`detections_from_heatmap`: the local maxima of the scores on
the patch grid (8-neighbourhood, plateaus count once), one detection per maximum at its patch centre.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage
from shapely import STRtree, points
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from wsimil.slides.annotations import tumour_region

FROC_RATES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
DILATION_UM = 75.0
ITC_UM = 275.0
MAX_GRID_CELLS = 200_000_000
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Lesion:
    """One evaluated lesion: its grown, hole-free outline in level-0 px, and whether it is an ITC."""

    geometry: Polygon
    is_itc: bool
    major_axis_um: float


# ---------------------------------------------------------------------------------------------- lesions
def _polygons(geom: BaseGeometry) -> list[Polygon]:
    """The non-empty polygons of a geometry (lines and points have no area and are dropped)."""
    if geom is None or geom.is_empty:
        return []
    if isinstance(geom, Polygon):
        return [geom]
    if hasattr(geom, "geoms"):
        return [p for g in geom.geoms for p in _polygons(g)]
    return []


def major_axis_length(poly: Polygon) -> float:
    """Major axis (in the polygon's units) of the ellipse with the same second moments as ``poly``.

    ``4 * sqrt(largest eigenvalue of the area covariance)``, the definition of skimage's ``regionprops``
    ``major_axis_length``, computed exactly from the outline (Green's theorem) instead of from pixels. A
    disc of diameter d gives d.
    """
    origin = np.asarray(poly.exterior.coords[0], dtype=np.float64)  # shift for numerical stability

    def ring_moments(ring) -> np.ndarray:
        """Area and first/second area moments of a ring, signed by its orientation."""
        xy = np.asarray(ring.coords, dtype=np.float64) - origin
        x0, y0, x1, y1 = xy[:-1, 0], xy[:-1, 1], xy[1:, 0], xy[1:, 1]
        c = x0 * y1 - x1 * y0
        return np.array([
            c.sum() / 2,
            ((x0 + x1) * c).sum() / 6,
            ((y0 + y1) * c).sum() / 6,
            ((x0 * x0 + x0 * x1 + x1 * x1) * c).sum() / 12,
            ((y0 * y0 + y0 * y1 + y1 * y1) * c).sum() / 12,
            ((x0 * y1 + 2 * x0 * y0 + 2 * x1 * y1 + x1 * y0) * c).sum() / 24,
        ])

    m = ring_moments(poly.exterior)
    m = m if m[0] > 0 else -m  # orientation-free
    for hole in poly.interiors:
        h = ring_moments(hole)
        m = m - (h if h[0] > 0 else -h)
    area, sx, sy, sxx, syy, sxy = m
    if area <= 0:
        return 0.0
    cx, cy = sx / area, sy / area
    mu20, mu02, mu11 = sxx / area - cx * cx, syy / area - cy * cy, sxy / area - cx * cy
    lam = (mu20 + mu02) / 2 + np.sqrt(((mu20 - mu02) / 2) ** 2 + mu11**2)
    return float(4 * np.sqrt(max(lam, 0.0)))


def lesions_from_region(
    region: BaseGeometry, mpp: float, *, dilation_um: float = DILATION_UM, itc_um: float = ITC_UM
) -> list[Lesion]:
    """Evaluation lesions of a tumour region (shapely geometry in level-0 px) of a slide with ``mpp`` um/px.

    The region grows by ``dilation_um / 2`` on every side, holes are filled, and each connected part is one
    lesion; ``is_itc`` when its major axis is below ``itc_um``. Ordered top to bottom, left to right.
    """
    if not mpp > 0:
        raise ValueError(f"mpp must be > 0 um/px, got {mpp}")
    if region is None or region.is_empty:
        return []
    grown = region.buffer(dilation_um / 2 / mpp) if dilation_um > 0 else region
    filled = unary_union([Polygon(p.exterior) for p in _polygons(grown)])  # fill holes, merge nested parts
    out = []
    for poly in _polygons(filled):
        poly = Polygon(poly.exterior)
        major_um = major_axis_length(poly) * mpp
        out.append(Lesion(geometry=poly, is_itc=bool(major_um < itc_um), major_axis_um=major_um))
    return sorted(out, key=lambda les: (les.geometry.bounds[1], les.geometry.bounds[0]))


def lesions_from_xml(
    path: str | os.PathLike | None, mpp: float, *, dilation_um: float = DILATION_UM, itc_um: float = ITC_UM
) -> list[Lesion]:
    """Evaluation lesions of one slide from its ASAP XML annotation (``None``: a normal slide, no lesion).

    Raises :class:`~wsimil.io.WsimilError` naming the file when it is missing or unreadable.
    """
    if path is None:
        return []
    return lesions_from_region(tumour_region(path), mpp, dilation_um=dilation_um, itc_um=itc_um)


# ---------------------------------------------------------------------------------------------- detections
def detections_from_heatmap(
    scores: np.ndarray, coords: np.ndarray, patch_size_level0: float, *, min_score: float = -np.inf
) -> np.ndarray:
    """Detections (K, 3) ``x, y, prob`` (level-0 px, patch centres) from patch scores, highest first.

    The scores are placed on the patch grid (cell = ``round((coords - coords.min()) / patch_size_level0)``;
    two patches in one cell keep the higher score; cells without a patch are empty). A detection is a local
    maximum: a connected set of equal-valued cells (8-neighbourhood) none of whose neighbours is higher and
    that touches no equal-valued non-maximal cell — so a plateau gives one detection, at its cell nearest
    the plateau's centroid. Maxima below ``min_score`` are dropped.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    if len(scores) != len(coords):
        raise ValueError(f"{len(scores)} patch scores but {len(coords)} coordinates")
    if not patch_size_level0 > 0:
        raise ValueError(f"patch_size_level0 must be > 0, got {patch_size_level0}")
    if not np.isfinite(scores).all():
        raise ValueError(f"{int((~np.isfinite(scores)).sum())} patch scores are NaN or infinite")
    if len(scores) == 0:
        return np.zeros((0, 3))
    cell = np.rint((coords - coords.min(axis=0)) / patch_size_level0).astype(np.int64)
    w, h = int(cell[:, 0].max()) + 1, int(cell[:, 1].max()) + 1
    if w * h > MAX_GRID_CELLS:
        raise ValueError(f"patch grid of {w} x {h} cells is too large: is patch_size_level0={patch_size_level0} right?")
    key = cell[:, 1] * w + cell[:, 0]
    order = np.lexsort((-scores, key))  # by cell, highest score first
    first = order[np.r_[True, key[order][1:] != key[order][:-1]]]
    grid = np.full((h, w), -np.inf)
    owner = np.full((h, w), -1, dtype=np.int64)
    grid[cell[first, 1], cell[first, 0]] = scores[first]
    owner[cell[first, 1], cell[first, 0]] = first

    present = owner >= 0
    cand = present & (grid == ndimage.maximum_filter(grid, size=3, mode="constant", cval=-np.inf))
    # a candidate touching an equal-valued non-candidate lies on a plateau that has a higher neighbour
    gp = np.pad(grid, 1, constant_values=-np.inf)
    cp = np.pad(cand, 1, constant_values=False)
    bad = np.zeros_like(cand)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                nb = gp[1 + dy: 1 + dy + h, 1 + dx: 1 + dx + w]
                nbc = cp[1 + dy: 1 + dy + h, 1 + dx: 1 + dx + w]
                bad |= cand & (nb == grid) & ~nbc
    lab, n = ndimage.label(cand, structure=_EIGHT)
    if n == 0:
        return np.zeros((0, 3))
    drop = np.unique(lab[bad])
    ys, xs = np.nonzero(cand)
    ls = lab[ys, xs]
    centroid = np.asarray(ndimage.center_of_mass(cand, lab, np.arange(1, n + 1)), dtype=np.float64).reshape(-1, 2)
    dist = (ys - centroid[ls - 1, 0]) ** 2 + (xs - centroid[ls - 1, 1]) ** 2
    pick = np.lexsort((xs, ys, dist, ls))  # per label: nearest the centroid, then row-major
    ls_sorted = ls[pick]
    first_of_label = pick[np.r_[True, ls_sorted[1:] != ls_sorted[:-1]]]
    keep = first_of_label[~np.isin(ls[first_of_label], drop)]
    idx = owner[ys[keep], xs[keep]]
    out = np.column_stack([coords[idx] + patch_size_level0 / 2, scores[idx]])
    out = out[out[:, 2] >= min_score]
    return out[np.argsort(-out[:, 2], kind="stable")]


# ---------------------------------------------------------------------------------------------- scoring
def match_detections(detections: np.ndarray, lesions: Sequence[Lesion]) -> tuple[np.ndarray, np.ndarray, int]:
    """Score one slide's detections (K, 3) against its lesions.

    Returns ``lesion_probs`` (one per non-ITC lesion, in ``lesions`` order: the highest probability of a
    detection inside it, ``-inf`` when missed), ``fp_probs`` (detections outside every lesion) and the number
    of ignored detections (in ITC lesions, or not the best hit of their lesion).
    """
    det = np.asarray(detections, dtype=np.float64).reshape(-1, 3)
    if not np.isfinite(det).all():
        raise ValueError("detections contain NaN or infinite values")
    nonitc = [i for i, les in enumerate(lesions) if not les.is_itc]
    lesion_probs = np.full(len(nonitc), -np.inf)
    if not lesions or len(det) == 0:
        return lesion_probs, det[:, 2].copy(), 0
    tree = STRtree([les.geometry for les in lesions])
    det_idx, les_idx = tree.query(points(det[:, :2]), predicate="intersects")
    hit = np.full(len(det), -1, dtype=np.int64)
    hit[det_idx[::-1]] = les_idx[::-1]  # lesions are disjoint; a point on a shared vertex takes the first
    fp_probs = det[hit < 0, 2]
    slot = {les: k for k, les in enumerate(nonitc)}
    n_ignored = 0
    for d in np.flatnonzero(hit >= 0):
        k = slot.get(int(hit[d]))
        if k is None:
            n_ignored += 1  # inside an ITC: neither TP nor FP
        else:
            if lesion_probs[k] > -np.inf:
                n_ignored += 1  # a second hit on the same lesion
            lesion_probs[k] = max(lesion_probs[k], det[d, 2])
    return lesion_probs, fp_probs, n_ignored


def _rate_key(rate: float) -> str:
    return f"{rate:g}"


def froc(
    per_slide_detections: Mapping[str, np.ndarray],
    per_slide_lesions: Mapping[str, Sequence[Lesion]],
    n_slides: int | None = None,
    rates: Sequence[float] = FROC_RATES,
) -> dict:
    """The CAMELYON16 FROC over a set of slides.

    ``per_slide_detections``: slide id -> (K, 3) ``x, y, prob``; ``per_slide_lesions``: slide id -> lesions
    (empty for a normal slide). A slide in only one mapping has no detections / no lesions. ``n_slides``
    (default: the slides in either mapping) divides the false-positive count; it may exceed that number
    (slides with neither), never fall below it.

    Returns ``froc`` (mean sensitivity at ``rates``, NaN with ``nan_reason`` when there is no non-ITC
    lesion), ``sensitivity`` (rate -> sensitivity, keyed ``"0.25"``, ``"1"``...), the curve ``fps`` /
    ``sens`` / ``thresholds`` (threshold descending; ``fps[0] = sens[0] = 0`` at an infinite threshold),
    and counts ``n_slides``, ``n_lesions`` (non-ITC), ``n_itc_lesions``, ``n_detected_lesions``,
    ``n_false_positives`` (at the lowest threshold) and ``n_ignored_detections``.
    """
    slides = sorted(set(per_slide_detections) | set(per_slide_lesions))
    n = len(slides) if n_slides is None else int(n_slides)
    if n < len(slides) or n <= 0:
        raise ValueError(f"n_slides={n_slides} but {len(slides)} slides have detections or lesions (need >= 1)")
    hits, fps, n_lesions, n_itc, n_ignored = [], [], 0, 0, 0
    for s in slides:
        lesions = list(per_slide_lesions.get(s, []))
        det = per_slide_detections.get(s, np.zeros((0, 3)))
        try:
            lp, fp, ign = match_detections(det, lesions)
        except ValueError as exc:
            raise ValueError(f"slide {s}: {exc}") from exc
        hits.append(lp[np.isfinite(lp)])
        fps.append(fp)
        n_lesions += len(lp)
        n_itc += len(lesions) - len(lp)
        n_ignored += ign
    hit = np.sort(np.concatenate(hits)) if hits else np.zeros(0)
    fp = np.sort(np.concatenate(fps)) if fps else np.zeros(0)
    thresholds = np.unique(np.concatenate([hit, fp]))[::-1]
    # counts of scores >= t for every threshold, via the sorted arrays
    tp_counts = len(hit) - np.searchsorted(hit, thresholds, side="left")
    fp_counts = len(fp) - np.searchsorted(fp, thresholds, side="left")
    out: dict = {
        "n_slides": n,
        "n_lesions": n_lesions,
        "n_itc_lesions": n_itc,
        "n_detected_lesions": len(hit),
        "n_false_positives": len(fp),
        "n_ignored_detections": n_ignored,
        "rates": [float(r) for r in rates],
        "thresholds": np.r_[np.inf, thresholds],
        "fps": np.r_[0.0, fp_counts / n],
    }
    if n_lesions == 0:
        out["sens"] = np.full(len(out["fps"]), np.nan)
        out["sensitivity"] = {_rate_key(r): float("nan") for r in rates}
        out["froc"] = float("nan")
        out["nan_reason"] = f"no non-ITC lesion on the {n} slides ({n_itc} ITC lesions): sensitivity undefined"
        return out
    sens = np.r_[0.0, tp_counts / n_lesions]
    out["sens"] = sens
    # The curve rises in both axes as the threshold falls; at a repeated FP rate keep the highest
    # sensitivity (what np.interp on the script's reversed arrays does) and interpolate linearly.
    ufps, inv = np.unique(out["fps"], return_inverse=True)
    usens = np.full(len(ufps), -np.inf)
    np.maximum.at(usens, inv, sens)
    at = np.interp(np.asarray(rates, dtype=np.float64), ufps, usens)
    out["sensitivity"] = {_rate_key(r): float(v) for r, v in zip(rates, at)}
    out["froc"] = float(np.mean(at))
    out["nan_reason"] = None
    return out


# ---------------------------------------------------------------------------------------------- resampling
def slide_matches(
    per_slide_detections: Mapping[str, np.ndarray], per_slide_lesions: Mapping[str, Sequence[Lesion]],
    slides: Sequence[str],
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per slide of ``slides`` (in that order): ``(lesion_probs, fp_probs)`` of :func:`match_detections`."""
    out = []
    for s in slides:
        try:
            lp, fp, _ = match_detections(per_slide_detections.get(s, np.zeros((0, 3))), list(per_slide_lesions.get(s, [])))
        except ValueError as exc:
            raise ValueError(f"slide {s}: {exc}") from exc
        out.append((lp, fp))
    return out


def resampled_froc(
    matches: Sequence[tuple[np.ndarray, np.ndarray]], counts: np.ndarray, rates: Sequence[float] = FROC_RATES,
    chunk: int = 64,
) -> np.ndarray:
    """The FROC of resamples of the slides: slide ``s`` enters resample ``b`` ``counts[b, s]`` times.

    ``matches``: per slide ``(lesion_probs, fp_probs)`` (:func:`slide_matches`); ``counts`` (n_boot, n_slides).
    A drawn slide brings all its lesions and false positives, so a resample's FROC is :func:`froc` on the
    slides it holds, repeats included (row of ones -> the FROC of the slides as they are). Returns (n_boot,),
    NaN where a resample holds no non-ITC lesion.
    """
    counts = np.atleast_2d(np.asarray(counts, dtype=np.float64))
    if counts.shape[1] != len(matches):
        raise ValueError(f"counts has {counts.shape[1]} slides, matches {len(matches)}")
    slide_of, prob, is_hit = [], [], []
    n_lesions = np.zeros(len(matches))
    for k, (lp, fp) in enumerate(matches):
        lp, fp = np.asarray(lp, dtype=np.float64), np.asarray(fp, dtype=np.float64)
        n_lesions[k] = len(lp)
        hit = lp[np.isfinite(lp)]
        slide_of += [np.full(len(hit) + len(fp), k)]
        prob += [hit, fp]
        is_hit += [np.ones(len(hit), bool), np.zeros(len(fp), bool)]
    slide_of = np.concatenate(slide_of) if slide_of else np.zeros(0, int)
    prob, is_hit = (np.concatenate(prob), np.concatenate(is_hit)) if prob else (np.zeros(0), np.zeros(0, bool))
    order = np.argsort(-prob, kind="stable")
    slide_of, prob, is_hit = slide_of[order], prob[order], is_hit[order]
    # the curve's points are the thresholds where the score changes: the last entry of every run of ties
    last = np.r_[prob[1:] != prob[:-1], True] if len(prob) else np.zeros(0, bool)
    rates = np.asarray(rates, dtype=np.float64)
    out = np.full(len(counts), np.nan)
    for start in range(0, len(counts), chunk):
        c = counts[start:start + chunk]
        w = c[:, slide_of]  # (b, entries): each entry weighted by its slide's draws
        tp = np.cumsum(w * is_hit, axis=1)[:, last]
        fp = np.cumsum(w * ~is_hit, axis=1)[:, last]
        n_les = c @ n_lesions
        n_sl = c.sum(axis=1)
        for i in range(len(c)):
            if n_les[i] == 0:
                continue
            fps = np.r_[0.0, fp[i] / n_sl[i]]  # non-decreasing, as is sens, as the threshold falls
            sens = np.r_[0.0, tp[i] / n_les[i]]
            # np.interp on the curve with one point per FP rate, the highest sensitivity at that rate (as
            # froc()): the last point of a run of equal rates is its highest
            left = np.searchsorted(fps, rates, side="right") - 1
            right = np.minimum(left + 1, len(fps) - 1)
            right = np.searchsorted(fps, fps[right], side="right") - 1
            x0, x1, y0, y1 = fps[left], fps[right], sens[left], sens[right]
            span = np.where(x1 > x0, x1 - x0, 1.0)
            at = np.where(x1 > x0, y0 + (rates - x0) / span * (y1 - y0), y0)
            out[start + i] = float(np.mean(at))
    return out


__all__ = [
    "FROC_RATES",
    "Lesion",
    "detections_from_heatmap",
    "froc",
    "lesions_from_region",
    "lesions_from_xml",
    "major_axis_length",
    "match_detections",
    "resampled_froc",
    "slide_matches",
]
