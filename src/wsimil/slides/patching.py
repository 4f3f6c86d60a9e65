"""The patch grid of one slide: tissue patches at a target resolution, with their tumour fraction.

    params = PatchingParams.from_config(config["patching"])
    patches = run_patching("slide.tif", "tumor_001", "tumor_001.xml", "patches/tumor_001.h5", params,
                           label=1, qc_png="qc/tumor_001.png")

The grid is CLAM's ``create_patches_fp.py`` with two deliberate differences (docs/methods):

* Resolution is a physical size, ``patch_size`` px at ``target_mpp`` um/px, never a pyramid level index (level 0
  is 40x on CAMELYON16 but 20x on other slides). :meth:`Slide.best_level_for_mpp` says where to read
  (``read_size`` px at ``level``, resized to ``patch_size``) and how many level-0 px a patch covers
  (``level0_size``); the grid steps by ``level0_size`` (non-overlapping).
* One global grid anchored at level-0 (0, 0), not one grid per contour anchored at the contour's bounding
  box: patches of neighbouring contours never overlap or repeat, and every coordinate is a multiple of the
  step. Only patches that lie wholly inside the slide are kept.

A grid cell is kept by ``contour_check`` evaluated on the tissue mask (holes already cut out):

* ``four_pt`` (CLAM's default ``isInContourV3_Easy``): any of the 4 points at the patch centre +- a quarter
  of the patch side is tissue;
* ``four_pt_hard`` (``isInContourV3_Hard``): all 4 are;
* ``center`` (``isInContourV2``): the centre is;
* ``min_fraction``: at least ``min_tissue_fraction`` of the patch footprint is tissue on the mask.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np

from wsimil.features.store import PatchSet, PatchSpec, write_patches
from wsimil.io import WsimilError, atomic_path, check_slide_id
from wsimil.slides.annotations import annotation_file, tumour_fraction, tumour_region
from wsimil.slides.reader import open_slide
from wsimil.slides.tissue import TissueMask, TissueParams, segment_tissue

log = logging.getLogger(__name__)

CONTOUR_CHECKS = ("four_pt", "four_pt_hard", "center", "min_fraction")
BACKENDS = ("auto", "openslide", "tiffslide")
QC_MAX_SIDE = 2048
QC_MIN_SIDE = 768


@dataclass(frozen=True)
class PatchingParams:
    """The config's ``patching:`` section (see ``schemas/patching.schema.yaml`` for every key)."""

    target_mpp: float = 1.0
    patch_size: int = 128
    contour_check: str = "four_pt"
    min_tissue_fraction: float = 0.25
    mpp_override: float | None = None
    backend: str = "auto"
    tissue: TissueParams = field(default_factory=TissueParams)

    def __post_init__(self) -> None:
        if not self.target_mpp > 0:
            raise WsimilError(f"patching.target_mpp must be > 0, got {self.target_mpp}")
        if self.patch_size < 8:
            raise WsimilError(f"patching.patch_size must be >= 8 px, got {self.patch_size}")
        if self.contour_check not in CONTOUR_CHECKS:
            raise WsimilError(f"patching.contour_check must be one of {CONTOUR_CHECKS}, got {self.contour_check!r}")
        if not 0 < self.min_tissue_fraction <= 1:
            raise WsimilError(f"patching.min_tissue_fraction must be in (0, 1], got {self.min_tissue_fraction}")
        if self.mpp_override is not None and not self.mpp_override > 0:
            raise WsimilError(f"patching.mpp_override must be > 0 or null, got {self.mpp_override}")
        if self.backend not in BACKENDS:
            raise WsimilError(f"patching.backend must be one of {BACKENDS}, got {self.backend!r}")

    @classmethod
    def from_config(cls, d: Mapping[str, Any] | None) -> "PatchingParams":
        """Build from the ``patching:`` config section; unknown keys are an error (a typo must not pass silently)."""
        d = dict(d or {})
        own = {f.name for f in fields(cls)} - {"tissue"}
        tissue_keys = {f.name for f in fields(TissueParams)}
        unknown = sorted(set(d) - own - tissue_keys)
        if unknown:
            raise WsimilError(f"unknown key(s) in the patching config: {unknown}; known: {sorted(own | tissue_keys)}")
        kw: dict[str, Any] = {}
        try:
            if d.get("target_mpp") is not None:
                kw["target_mpp"] = float(d["target_mpp"])
            if d.get("patch_size") is not None:
                kw["patch_size"] = int(d["patch_size"])
            if d.get("contour_check") is not None:
                kw["contour_check"] = str(d["contour_check"])
            if d.get("min_tissue_fraction") is not None:
                kw["min_tissue_fraction"] = float(d["min_tissue_fraction"])
            if d.get("mpp_override") is not None:
                kw["mpp_override"] = float(d["mpp_override"])
            if d.get("backend") is not None:
                kw["backend"] = str(d["backend"])
        except (TypeError, ValueError) as exc:
            raise WsimilError(f"bad value in the patching config: {exc}") from exc
        return cls(**kw, tissue=TissueParams.from_config({k: v for k, v in d.items() if k in tissue_keys}))

    def to_config(self) -> dict[str, Any]:
        """The flat ``patching:`` dict (inverse of :meth:`from_config`)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "tissue"}
        out.update({f.name: getattr(self.tissue, f.name) for f in fields(self.tissue)})
        return out


@dataclass
class PatchingResult:
    """What :func:`patch_slide_full` knows: the patches, the tissue mask and the tumour region (or None)."""

    patches: PatchSet
    tissue: TissueMask
    tumour: Any = None  # shapely geometry in level-0 px, or None


# ----------------------------------------------------------------------------------------------------------
def grid_coords(level0_dimensions: tuple[int, int], step: int) -> np.ndarray:
    """Top-left corners (N, 2) int64 of the non-overlapping ``step`` px cells that lie wholly inside the slide, row-major."""
    w, h = level0_dimensions
    xs = np.arange(0, w - step + 1, step, dtype=np.int64)
    ys = np.arange(0, h - step + 1, step, dtype=np.int64)
    if len(xs) == 0 or len(ys) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def _mask_at(tissue: TissueMask, pts: np.ndarray) -> np.ndarray:
    """Mask values at level-0 points (N, 2) (points outside the mask are background)."""
    m = tissue.mask
    xy = np.floor(tissue.to_mask_xy(pts)).astype(np.int64)
    inside = (xy[:, 0] >= 0) & (xy[:, 1] >= 0) & (xy[:, 0] < m.shape[1]) & (xy[:, 1] < m.shape[0])
    out = np.zeros(len(pts), dtype=bool)
    out[inside] = m[xy[inside, 1], xy[inside, 0]]
    return out


def tissue_fraction_of_patches(tissue: TissueMask, coords: np.ndarray, size_level0: int) -> np.ndarray:
    """Share (N,) of each patch footprint that is tissue on the mask (mask pixels by nearest rounding of the edges)."""
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    m = tissue.mask.astype(np.int64)
    integral = np.zeros((m.shape[0] + 1, m.shape[1] + 1), dtype=np.int64)
    integral[1:, 1:] = m.cumsum(0).cumsum(1)
    sx, sy = tissue.scale
    x0 = np.clip(np.round(coords[:, 0] / sx).astype(np.int64), 0, m.shape[1])
    y0 = np.clip(np.round(coords[:, 1] / sy).astype(np.int64), 0, m.shape[0])
    x1 = np.clip(np.round((coords[:, 0] + size_level0) / sx).astype(np.int64), 0, m.shape[1])
    y1 = np.clip(np.round((coords[:, 1] + size_level0) / sy).astype(np.int64), 0, m.shape[0])
    x1 = np.maximum(x1, np.minimum(x0 + 1, m.shape[1]))
    y1 = np.maximum(y1, np.minimum(y0 + 1, m.shape[0]))
    area = (x1 - x0) * (y1 - y0)
    s = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return np.where(area > 0, s / np.maximum(area, 1), 0.0).astype(np.float32)


def select_patches(
    tissue: TissueMask, coords: np.ndarray, size_level0: int, contour_check: str = "four_pt", min_tissue_fraction: float = 0.25
) -> np.ndarray:
    """Boolean (N,): which grid cells ``coords`` pass ``contour_check`` on the tissue mask."""
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    if contour_check == "min_fraction":
        return tissue_fraction_of_patches(tissue, coords, size_level0) >= min_tissue_fraction
    half = size_level0 // 2
    centre = coords + half
    if contour_check == "center":
        return _mask_at(tissue, centre)
    if contour_check not in ("four_pt", "four_pt_hard"):
        raise WsimilError(f"unknown contour_check {contour_check!r}; one of {CONTOUR_CHECKS}")
    shift = int(half * 0.5)  # CLAM: int(patch_size // 2 * center_shift), center_shift = 0.5
    offsets = np.array([(-shift, -shift), (shift, shift), (shift, -shift), (-shift, shift)], dtype=np.int64)
    hits = np.stack([_mask_at(tissue, centre + o) for o in offsets], axis=1)
    return hits.all(axis=1) if contour_check == "four_pt_hard" else hits.any(axis=1)


# ----------------------------------------------------------------------------------------------------------
def patch_slide_full(
    slide_path: str | os.PathLike,
    slide_id: str,
    annotation_path: str | os.PathLike | None,
    params: PatchingParams | None = None,
    label: int | None = None,
) -> PatchingResult:
    """:func:`patch_slide`, also returning the tissue mask and tumour region (for QC pictures)."""
    params = params or PatchingParams()
    check_slide_id(slide_id, slide_path)
    ann = annotation_file(annotation_path)
    with open_slide(slide_path, backend=params.backend, mpp=params.mpp_override) as slide:
        choice = slide.best_level_for_mpp(params.target_mpp, params.patch_size)
        mpp0 = slide.mpp
        tissue = segment_tissue(slide, params.tissue)
        backend = slide.backend
    step = choice.level0_size
    grid = grid_coords(tissue.level0_dimensions, step)
    keep = select_patches(tissue, grid, step, params.contour_check, params.min_tissue_fraction)
    coords = grid[keep]
    if len(coords) == 0:
        raise WsimilError(
            f"no patch of slide {slide_path} passes the '{params.contour_check}' tissue check: the tissue found "
            f"({tissue.tissue_fraction:.1%} of the slide) is smaller than a {params.patch_size} px patch at "
            f"{params.target_mpp} um/px ({step} level-0 px). Lower patching.patch_size or patching.target_mpp, "
            "or use contour_check: four_pt."
        )
    region = None
    if ann is not None:
        region = tumour_region(ann)
        tf: np.ndarray | None = tumour_fraction(region, coords, step)
        source = "annotation"
        if label == 0 and float(tf.max(initial=0.0)) > 0:
            log.warning("%s: slide labelled normal but its annotation %s marks tumour", slide_path, ann)
    elif label is not None and int(label) == 0:
        tf, source = np.zeros(len(coords), dtype=np.float32), "normal slide"
    else:
        tf, source = None, "unknown"
    spec = PatchSpec(
        slide_id=slide_id,
        patch_size=int(params.patch_size),
        target_mpp=float(params.target_mpp),
        level=int(choice.level),
        read_size=int(choice.read_size),
        level0_size=int(step),
        mpp_level0=float(mpp0),
    )
    attrs: dict[str, Any] = {
        "slide_path": str(slide_path),
        "backend": backend,
        "contour_check": params.contour_check,
        "seg_level": int(tissue.level),
        "seg_downsample": float(tissue.downsample),
        "tissue_threshold": float(tissue.threshold),
        "tissue_method": tissue.method,
        "tissue_fraction": float(tissue.tissue_fraction),
        "tumor_fraction_source": source,
    }
    if ann is not None:
        attrs["annotation_path"] = str(ann)
    return PatchingResult(PatchSet(coords=coords.astype(np.int64), tumor_fraction=tf, spec=spec, attrs=attrs), tissue, region)


def patch_slide(
    slide_path: str | os.PathLike,
    slide_id: str,
    annotation_path: str | os.PathLike | None,
    params: PatchingParams | None = None,
    label: int | None = None,
) -> PatchSet:
    """Tissue patches of one slide at ``params.target_mpp``.

    ``tumor_fraction``: from the ASAP XML when ``annotation_path`` is given (tumour groups minus ``_2``
    exclusions, exact polygon area per patch); zeros when there is no annotation and ``label == 0`` (a normal
    slide); ``None`` (unknown, not written) otherwise, e.g. a tumour slide without annotation.
    Raises :class:`WsimilError` naming the file for an unreadable slide, a missing annotation, a slide without
    mpp (unless ``mpp_override``) and a slide without tissue.
    """
    return patch_slide_full(slide_path, slide_id, annotation_path, params, label).patches


def run_patching(
    slide_path: str | os.PathLike,
    slide_id: str,
    annotation: str | os.PathLike | None,
    out_h5: str | os.PathLike,
    params: PatchingParams | None = None,
    qc_png: str | os.PathLike | None = None,
    label: int | None = None,
) -> PatchSet:
    """Patch one slide and write its patch file (and, with ``qc_png``, a QC thumbnail), each atomically."""
    res = patch_slide_full(slide_path, slide_id, annotation, params, label)
    write_patches(out_h5, res.patches)
    if qc_png is not None:
        write_qc_png(qc_png, res)
    log.info("%s: %d patches -> %s", slide_id, len(res.patches.coords), out_h5)
    return res.patches


# ----------------------------------------------------------------------------------------------------------
def _polygon_rings(geom) -> list[np.ndarray]:
    """Exterior and interior rings (K, 2) of every polygon in a shapely geometry."""
    rings: list[np.ndarray] = []
    if geom is None or geom.is_empty:
        return rings
    if hasattr(geom, "geoms"):
        for g in geom.geoms:
            rings.extend(_polygon_rings(g))
        return rings
    if geom.geom_type == "Polygon":
        rings.append(np.asarray(geom.exterior.coords))
        rings.extend(np.asarray(r.coords) for r in geom.interiors)
    return rings


def qc_image(res: PatchingResult) -> np.ndarray:
    """RGB QC picture: the slide at the segmentation level, tissue contours green (holes blue), kept patches
    as a thin yellow grid, tumour outline red."""
    tissue = res.tissue
    img = tissue.image if tissue.image is not None else np.full((*tissue.mask.shape, 3), 255, np.uint8)
    side = max(img.shape[:2])
    f = min(QC_MAX_SIDE / side, max(1, QC_MIN_SIDE // side))  # shrink huge levels, blow up tiny ones
    if f != 1.0:
        interp = cv2.INTER_AREA if f < 1 else cv2.INTER_NEAREST
        img = cv2.resize(img, (max(1, int(img.shape[1] * f)), max(1, int(img.shape[0] * f))), interpolation=interp)
    img = np.ascontiguousarray(img.copy())
    sx, sy = tissue.scale[0] / f, tissue.scale[1] / f  # level-0 px per QC px
    thick = max(1, int(round(max(img.shape[:2]) / 500)))

    def pts(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, dtype=np.float64).reshape(-1, 2)
        return np.round(a / (sx, sy)).astype(np.int32).reshape(-1, 1, 2)

    step = res.patches.spec.level0_size
    for x, y in res.patches.coords:
        cv2.rectangle(img, (int(x / sx), int(y / sy)), (int((x + step) / sx) - 1, int((y + step) / sy) - 1), (230, 200, 0), 1)
    cv2.polylines(img, [pts(c) for c in tissue.contours], True, (0, 200, 0), thick)
    holes = [pts(h) for hs in tissue.holes for h in hs]
    if holes:
        cv2.polylines(img, holes, True, (0, 0, 255), thick)
    rings = [pts(r) for r in _polygon_rings(res.tumour)]
    if rings:
        cv2.polylines(img, rings, True, (255, 0, 0), thick)
    return img


def write_qc_png(path: str | os.PathLike, res: PatchingResult) -> None:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(qc_image(res), cv2.COLOR_RGB2BGR))
    if not ok:
        raise WsimilError(f"cannot encode the QC picture {path}")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.tobytes())
