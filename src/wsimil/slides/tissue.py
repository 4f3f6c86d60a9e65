"""CLAM-style tissue segmentation: HSV saturation, median blur, threshold, close, contours with holes.

This follows ``segmentTissue`` of CLAM's ``wsi_core/WholeSlideImage.py`` (Lu et al. 2021):

1. read the pyramid level nearest ``seg_downsample`` (CLAM: 64; our synthetic slides are small, so the
   value comes from the config). When the slide has no level near it (a single-level file), the nearest
   finer level is read tile by tile and area-averaged down, so the whole of level 0 never sits in memory;
2. RGB -> HSV, keep the saturation channel, median blur with a ``mthresh`` px kernel;
3. binary threshold at ``sthresh`` (or Otsu's threshold with ``use_otsu``), morphological close with a
   ``close`` x ``close`` kernel;
4. ``cv2.findContours(..., RETR_CCOMP)``: outer contours (tissue) and their children (holes). A tissue contour is
   kept when its area minus its holes exceeds ``a_t``; of its holes the ``max_n_holes`` largest are kept when
   larger than ``a_h``.

**Area units (CLAM's convention, kept on purpose).** ``a_t`` and ``a_h`` count *reference patches* of
512 x 512 level-0 pixels: the thresholds in mask pixels are ``a * 512**2 / (sx * sy)`` where ``sx, sy`` are the
level-0 pixels per mask pixel. CLAM's ``create_patches_fp.py`` uses ``a_t = 100, a_h = 16`` for 40x
CAMELYON slides (100 reference patches = 1.6 mm^2 at 0.25 um/px); a small synthetic slide of a few mm^2 would
lose all of its tissue to that, so our default is ``a_t = 1, a_h = 1``: debris smaller than one 512^2 level-0
area (0.066 mm^2 at 0.5 um/px, four 128 px patches at 1 um/px) is dropped and holes larger than that are cut
out. Note the unit is level-0 *pixels*, so the same number means a 4x larger area on a 20x slide than on a 40x
one, as in CLAM.

**Memory is bounded whatever the slide declares** (:func:`read_downsampled`): the segmentation image's
longest side is at most :data:`SEG_MAX_SIDE` px (a slide larger than ``SEG_MAX_SIDE * seg_downsample`` px a side
is segmented at a coarser downsample, logged; with CLAM's 64 this never happens below the 250,000 px limit of
:mod:`wsimil.limits`), a level is read whole only when it fits in that image, and otherwise it is read in tiles of
at most ``max(2048, f)^2`` level px (``f`` the averaging factor), composited in uint8/uint16.

A slide where nothing survives raises :class:`~wsimil.io.WsimilError` naming the file. With
``fallback_otsu`` the fixed threshold is retried once with Otsu's (logged as a warning) before giving up; the
Otsu retry is accepted only if the saturation histogram is clearly two-class (Otsu's separability
``eta >= 0.8`` and class means >= max(4, 4 x glass std) apart, see :func:`otsu_is_trustworthy`), so glass
noise on an empty slide is not mistaken for tissue.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import cv2
import numpy as np

from wsimil.io import WsimilError
from wsimil.slides.reader import Slide

log = logging.getLogger(__name__)

REF_PATCH_SIZE = 512  # CLAM's reference patch (level-0 px) for the a_t / a_h area units
MIN_OTSU_SEPARABILITY = 0.8  # Otsu's eta = between-class / total variance; ~0.64 for unimodal noise
MIN_OTSU_GAP = 4.0  # saturation units between Otsu's class means for the fallback to be trusted
SEG_MAX_SIDE = 8192  # longest side of the segmentation image (8192^2 RGB = 192 MiB)
_TILE_LEVEL_PX = 2048  # level px per side of one tile read (rounded down to a multiple of f, at least f)


@dataclass(frozen=True)
class TissueParams:
    """Segmentation parameters (the tissue part of the config's ``patching:`` section)."""

    seg_downsample: float = 16.0
    sthresh: int = 8
    mthresh: int = 7
    use_otsu: bool = False
    close: int = 4
    a_t: float = 1.0  # tissue area threshold, in 512x512 level-0 reference patches (CLAM's unit)
    a_h: float = 1.0  # hole area threshold, same unit
    max_n_holes: int = 8
    fallback_otsu: bool = True

    def __post_init__(self) -> None:
        if not self.seg_downsample >= 1:
            raise WsimilError(f"patching.seg_downsample must be >= 1, got {self.seg_downsample}")
        if not 0 <= self.sthresh <= 255:
            raise WsimilError(f"patching.sthresh must be in [0, 255], got {self.sthresh}")
        if self.mthresh < 1 or self.mthresh % 2 == 0:
            raise WsimilError(f"patching.mthresh must be an odd kernel size >= 1, got {self.mthresh}")
        if self.close < 0:
            raise WsimilError(f"patching.close must be >= 0, got {self.close}")
        if self.a_t < 0 or self.a_h < 0:
            raise WsimilError(f"patching.a_t and a_h must be >= 0, got {self.a_t}, {self.a_h}")
        if self.max_n_holes < 0:
            raise WsimilError(f"patching.max_n_holes must be >= 0, got {self.max_n_holes}")

    @classmethod
    def from_config(cls, d: Mapping[str, Any] | None) -> "TissueParams":
        """Build from the config's ``patching:`` section (keys that are not tissue parameters are ignored)."""
        d = dict(d or {})
        kw = {f.name: d[f.name] for f in fields(cls) if f.name in d and d[f.name] is not None}
        casts = {"seg_downsample": float, "sthresh": int, "mthresh": int, "use_otsu": bool, "close": int,
                 "a_t": float, "a_h": float, "max_n_holes": int, "fallback_otsu": bool}
        try:
            kw = {k: casts[k](v) for k, v in kw.items()}
        except (TypeError, ValueError) as exc:
            raise WsimilError(f"bad value in the patching config: {exc}") from exc
        return cls(**kw)


@dataclass
class TissueMask:
    """Where the tissue is on one slide.

    ``mask`` (H, W) bool at the segmentation resolution: True inside a kept tissue contour and outside its kept
    holes. ``scale`` = (sx, sy) level-0 px per mask px; ``downsample`` their mean. ``contours`` (K, 2) int and
    ``holes`` (one list per contour) are in level-0 (x, y) pixels, like CLAM's ``contours_tissue`` /
    ``holes_tissue``. ``image`` is the RGB picture the mask was computed on (for QC thumbnails).
    """

    mask: np.ndarray
    level: int
    scale: tuple[float, float]
    level0_dimensions: tuple[int, int]
    contours: list[np.ndarray]
    holes: list[list[np.ndarray]]
    threshold: float
    method: str  # "fixed" or "otsu"
    image: np.ndarray | None = field(default=None, repr=False)

    @property
    def downsample(self) -> float:
        return float(np.mean(self.scale))

    @property
    def tissue_fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    def to_mask_xy(self, xy_level0: np.ndarray) -> np.ndarray:
        """Level-0 (x, y) float coordinates -> (column, row) float coordinates on the mask."""
        xy = np.asarray(xy_level0, dtype=np.float64)
        return xy / np.asarray(self.scale, dtype=np.float64)


# ----------------------------------------------------------------------------------------------------------
def read_downsampled(slide: Slide, downsample: float) -> tuple[np.ndarray, int, tuple[float, float]]:
    """The slide as one RGB image at about ``downsample``; returns (image, level read, (sx, sy) level-0 px per px).

    Reads the level nearest ``downsample`` (log scale) whole, as CLAM does, when it is at most
    :data:`SEG_MAX_SIDE` px a side. When that level is more than 1.5x finer than asked (a slide without a deep
    pyramid), or too large to read whole, it is read in tiles of at most ``max(2048, f)`` level px a side and
    area-averaged down by an integer factor ``f``. A slide so large that the image would exceed
    :data:`SEG_MAX_SIDE` px a side is read at a coarser downsample (logged), so memory is bounded whatever the
    slide declares.
    """
    w0, h0 = slide.dimensions
    asked = downsample
    downsample = max(downsample, max(w0, h0) / SEG_MAX_SIDE)
    capped = downsample > asked
    level = slide.level_for_downsample(downsample)
    ds = slide.level_downsamples[level]
    wl, hl = slide.level_dimensions[level]
    f = int(round(downsample / ds))
    whole = f <= 1 or downsample / ds < 1.5
    try:
        if whole and max(wl, hl) <= SEG_MAX_SIDE:
            img = slide.read_level(level)
            if capped:
                _log_capped(slide, asked, (w0 / wl + h0 / hl) / 2)
            return img, level, (w0 / wl, h0 / hl)
        f_cap = -(-max(wl, hl) // SEG_MAX_SIDE)  # rounding f down, or a whole level too large, must not break the cap
        if capped or f_cap > f:
            f = max(f, f_cap)
            _log_capped(slide, asked, f * ds)
        ow, oh = -(-wl // f), -(-hl // f)
        out = np.full((oh, ow, 3), 255, dtype=np.uint8)
        step = max(1, _TILE_LEVEL_PX // f) * f  # level px per tile, a multiple of f
        for yl in range(0, hl, step):
            for xl in range(0, wl, step):
                rw, rh = min(step, wl - xl), min(step, hl - yl)
                tile = slide.read_region((int(round(xl * ds)), int(round(yl * ds))), level, (rw, rh))
                pw, ph = -(-rw // f) * f, -(-rh // f) * f
                if (pw, ph) != (rw, rh):  # pad the edge tile with white glass to a multiple of f
                    padded = np.full((ph, pw, 3), 255, dtype=np.uint8)
                    padded[:rh, :rw] = tile
                    tile = padded
                small = cv2.resize(tile, (pw // f, ph // f), interpolation=cv2.INTER_AREA)
                oy, ox = yl // f, xl // f
                out[oy : oy + small.shape[0], ox : ox + small.shape[1]] = small
        return out, level, (f * w0 / wl, f * h0 / hl)
    except WsimilError:
        raise
    except Exception as exc:  # corrupt tiles, truncated files: the backends raise their own types
        # their text is not repeated: it may quote the file's bytes
        raise WsimilError(f"cannot read the pixels of slide {slide.path} at level {level}: the backend failed with "
                          f"{type(exc).__name__} (the file is damaged or not what it declares)") from None


def _log_capped(slide: Slide, asked: float, got: float) -> None:
    w0, h0 = slide.dimensions
    log.warning("%s: %d x %d px is read at downsample %.1f, not %g, so the image's side stays within %d px",
                slide.path, w0, h0, got, asked, SEG_MAX_SIDE)


def otsu_separation(img: np.ndarray) -> tuple[float, float, float, float]:
    """Otsu's threshold of a uint8 image (as cv2 computes it), its separability eta = between-class / total
    variance, the gap between the two class means, and the spread (std) of the lower (glass) class."""
    t, _ = cv2.threshold(img, 0, 255, cv2.THRESH_OTSU + cv2.THRESH_BINARY)
    v = img.astype(np.float64).ravel()
    fg = v > t
    w1 = fg.mean()
    if v.var() <= 0 or w1 in (0.0, 1.0):
        return float(t), 0.0, 0.0, 0.0
    gap = v[fg].mean() - v[~fg].mean()
    return float(t), float(w1 * (1 - w1) * gap**2 / v.var()), float(gap), float(v[~fg].std())


def otsu_is_trustworthy(img: np.ndarray) -> bool:
    """Whether Otsu's split of a saturation image is two real classes, not glass noise cut in two.

    Requires a clearly bimodal histogram (eta >= 0.8; a unimodal one gives ~0.64) *and* class means at least
    ``max(4, 4 * std of the glass class)`` saturation units apart: on an empty slide the few discrete noise
    levels (0..4) can split with a high eta, but the two halves sit only ~2 units apart.
    """
    _, eta, gap, sd0 = otsu_separation(img)
    return eta >= MIN_OTSU_SEPARABILITY and gap >= max(MIN_OTSU_GAP, 4.0 * sd0)


def _filter_contours(contours, hierarchy: np.ndarray, a_t: float, a_h: float, max_n_holes: int):
    """CLAM's ``_filter_contours``: keep outer contours with net area > a_t, and their largest holes > a_h."""
    kept: list[np.ndarray] = []
    kept_holes: list[list[np.ndarray]] = []
    if hierarchy is None or len(contours) == 0:
        return kept, kept_holes
    parent = hierarchy[:, 3]
    for idx in np.flatnonzero(parent == -1):
        cont = contours[idx]
        hole_ids = np.flatnonzero(parent == idx)
        hole_areas = [cv2.contourArea(contours[h]) for h in hole_ids]
        a = cv2.contourArea(cont) - float(np.sum(hole_areas))
        if a <= 0 or not a > a_t:
            continue
        holes = sorted((contours[h] for h in hole_ids), key=cv2.contourArea, reverse=True)[:max_n_holes]
        kept.append(cont)
        kept_holes.append([h for h in holes if cv2.contourArea(h) > a_h])
    return kept, kept_holes


def _segment(sat: np.ndarray, thresh: float, use_otsu: bool, params: TissueParams, scale: tuple[float, float]):
    if use_otsu:
        t, binary = cv2.threshold(sat, 0, 255, cv2.THRESH_OTSU + cv2.THRESH_BINARY)
    else:
        t, binary = cv2.threshold(sat, float(thresh), 255, cv2.THRESH_BINARY)
    if params.close > 0:
        binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, np.ones((params.close, params.close), np.uint8))
    ref_area = REF_PATCH_SIZE**2 / (scale[0] * scale[1])  # one reference patch in mask px
    contours, hierarchy = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    hierarchy = None if hierarchy is None else hierarchy[0]
    kept, holes = _filter_contours(contours, hierarchy, params.a_t * ref_area, params.a_h * ref_area, params.max_n_holes)
    mask = np.zeros(sat.shape, dtype=np.uint8)
    if kept:
        cv2.drawContours(mask, kept, -1, 1, thickness=cv2.FILLED)
        all_holes = [h for hs in holes for h in hs]
        if all_holes:
            cv2.drawContours(mask, all_holes, -1, 0, thickness=cv2.FILLED)
    return float(t), mask.astype(bool), kept, holes


def _to_level0(cont: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    return np.round(cont.reshape(-1, 2).astype(np.float64) * np.asarray(scale)).astype(np.int64)


def segment_tissue(slide: Slide, params: TissueParams | None = None) -> TissueMask:
    """Segment the tissue of ``slide`` as CLAM does; raise ``WsimilError`` naming the file if there is none."""
    params = params or TissueParams()
    img, level, scale = read_downsampled(slide, params.seg_downsample)
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    sat = cv2.medianBlur(np.ascontiguousarray(hsv[:, :, 1]), params.mthresh)

    method = "otsu" if params.use_otsu else "fixed"
    t, mask, kept, holes = _segment(sat, params.sthresh, params.use_otsu, params, scale)
    if not kept and params.fallback_otsu and not params.use_otsu:
        if otsu_is_trustworthy(sat):
            t, mask, kept, holes = _segment(sat, 0, True, params, scale)
            if kept:
                method = "otsu"
                log.warning(
                    "%s: no tissue at saturation threshold %s; Otsu's threshold %.0f found %d tissue region(s) "
                    "(patching.fallback_otsu)", slide.path, params.sthresh, t, len(kept),
                )
    if not kept:
        raise WsimilError(
            f"no tissue found in slide {slide.path}: nothing at level {level} (downsample {np.mean(scale):.1f}) has "
            f"median-blurred HSV saturation above {'Otsu' if params.use_otsu else params.sthresh} over more than "
            f"a_t={params.a_t} reference patches of 512^2 level-0 px"
            + ("" if params.use_otsu or params.fallback_otsu else "; Otsu's threshold was not tried")
            + ". If the slide does have tissue, set patching.use_otsu: true, lower patching.sthresh or patching.a_t; "
            "if it is blank, drop it from the sample sheet."
        )
    return TissueMask(
        mask=mask,
        level=level,
        scale=(float(scale[0]), float(scale[1])),
        level0_dimensions=slide.dimensions,
        contours=[_to_level0(c, scale) for c in kept],
        holes=[[_to_level0(h, scale) for h in hs] for hs in holes],
        threshold=t,
        method=method,
        image=img,
    )
