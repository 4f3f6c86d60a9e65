"""Patch-score heatmaps: one row per slide, the slide with its tumour annotation, then one heatmap per method.

    plot_heatmaps(
        [{"slide_id": "test_003", "path": "slides/test_003.tif", "annotation": "annotations/test_003.xml",
          "coords": coords, "patch_size_level0": 256}],
        ["maxpool", "abmil"],
        {("test_003", "maxpool"): s1, ("test_003", "abmil"): s2},
        "figures/heatmaps.png",
    )

Slides are read through :mod:`wsimil.slides.reader` (a low-resolution pyramid level only) and annotations with
:func:`wsimil.slides.annotations.read_asap_xml`. Scores are rank-normalised per slide and method: methods
score on unrelated scales (attention weights, logits, probabilities), and a rank shows where each method
puts its highest patches whatever the scale or a single extreme value.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib import colormaps, patheffects
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Colormap, Normalize
from matplotlib.lines import Line2D

from wsimil.reporting.figures import _PAPER_RC, PAGE_IN, FigureInputError, _figure, _save, _wrap_name
from wsimil.slides.annotations import EXCLUDED_GROUPS, read_asap_xml
from wsimil.slides.reader import open_slide

#: the longest side of a thumbnail, in pixels (enough for a ~1 in panel at 200 dpi, several times over)
THUMB_SIDE = 640
CMAP = "viridis"
HEAT_ALPHA = 0.8  # opacity of the heat colours over the faded slide
_SLIDE_KEYS = ("slide_id", "path", "annotation", "coords", "patch_size_level0")
#: the annotation outline: black with a white halo, visible on H&E, on white glass and on every viridis shade
_OUTLINE = {"color": "black", "lw": 0.9,
            "path_effects": [patheffects.withStroke(linewidth=2.0, foreground="white")]}


_MARK_COLOUR = "#e7298a"
#: ``score_maps.h5`` maps that are assignments, not scores (DTFD-MIL's ``pseudo_bag``, the pseudo-bag of each
#: patch): a column ``"<method> (<map>)"`` of one of them is not drawn
NOT_SCORES = ("pseudo_bag",)


def _mark(ax, coords: np.ndarray, size: int, mask: np.ndarray) -> None:
    """Outline the patches of ``mask`` (N,) bool at their level-0 ``coords`` (N, 2)."""
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    mask = np.asarray(mask, dtype=bool).reshape(-1)
    if len(mask) != len(coords):
        raise FigureInputError(f"{len(mask)} marks for {len(coords)} patches")
    boxes = [Rectangle((x, y), size, size) for x, y in np.asarray(coords)[mask]]
    ax.add_collection(PatchCollection(boxes, facecolor="none", edgecolor=_MARK_COLOUR, linewidth=0.4))


def rank_normalise(scores: np.ndarray) -> np.ndarray:
    """Scores (N,) -> their rank in [0, 1] (0 the lowest patch, 1 the highest; ties share their mean rank)."""
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=float).ravel()
    if len(s) == 1:
        return np.full(1, 0.5)
    return (rankdata(s, method="average") - 1.0) / (len(s) - 1.0)


def _thumbnail(path: str | os.PathLike) -> tuple[np.ndarray, tuple[int, int]]:
    """An RGB thumbnail (longest side about :data:`THUMB_SIDE`) and the slide's level-0 (width, height)."""
    import cv2

    from wsimil.slides.reader import MAX_WHOLE_LEVEL_PX
    from wsimil.slides.tissue import read_downsampled

    with open_slide(path) as slide:
        w0, h0 = slide.dimensions
        level = slide.level_for_downsample(max(w0, h0) / THUMB_SIDE)
        wl, hl = slide.level_dimensions[level]
        if wl * hl <= MAX_WHOLE_LEVEL_PX:
            img = slide.read_level(level)
        else:  # no pyramid level near the thumbnail: read in tiles and average down, memory bounded
            img = read_downsampled(slide, max(w0, h0) / THUMB_SIDE)[0]
    side = max(img.shape[:2])
    if side > 2 * THUMB_SIDE:  # a pyramid without a level near the thumbnail size
        f = THUMB_SIDE / side
        img = cv2.resize(img, (max(1, round(img.shape[1] * f)), max(1, round(img.shape[0] * f))),
                         interpolation=cv2.INTER_AREA)
    return img, (int(w0), int(h0))


def _heat_image(coords: np.ndarray, size0: int, values: np.ndarray, shape: tuple[int, int],
                level0: tuple[int, int]) -> np.ndarray:
    """Patch values painted at thumbnail resolution (mean where patches overlap); NaN where no patch lies."""
    h, w = shape
    sx, sy = level0[0] / w, level0[1] / h
    acc = np.zeros((h, w))
    cnt = np.zeros((h, w))
    x0 = np.clip(np.floor(coords[:, 0] / sx).astype(int), 0, w)
    y0 = np.clip(np.floor(coords[:, 1] / sy).astype(int), 0, h)
    x1 = np.clip(np.maximum(np.ceil((coords[:, 0] + size0) / sx).astype(int), x0 + 1), 0, w)
    y1 = np.clip(np.maximum(np.ceil((coords[:, 1] + size0) / sy).astype(int), y0 + 1), 0, h)
    for a, b, c, d, v in zip(y0, y1, x0, x1, values):
        acc[a:b, c:d] += v
        cnt[a:b, c:d] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, acc / cnt, np.nan)


def _overlay(faded: np.ndarray, heat: np.ndarray, cmap: Colormap, alpha: float = HEAT_ALPHA) -> np.ndarray:
    """``heat`` (H, W) in [0, 1], NaN where no patch, blended over the RGB ``faded`` thumbnail (one image)."""
    out = faded.astype(float) / 255.0
    has = np.isfinite(heat)
    colours = cmap(np.where(has, heat, 0.0))[..., :3]
    out[has] = (1.0 - alpha) * out[has] + alpha * colours[has]
    return out


def _outlines(annotation: str | os.PathLike | None) -> list[tuple[np.ndarray, bool]]:
    """Closed polygons (K+1, 2) in level-0 px, each with True for tumour, False for an excluded region."""
    if annotation is None or str(annotation).strip() in ("", "nan", "None"):
        return []
    out = []
    for group, polys in read_asap_xml(annotation).items():
        for p in polys:
            out.append((np.vstack([p, p[:1]]), group not in EXCLUDED_GROUPS))
    return out


def _check(slides: Sequence[Mapping], methods: Sequence[str],
           scores: Mapping[tuple[str, str], np.ndarray]) -> None:
    if not slides:
        raise FigureInputError("cannot plot heatmaps: no slides given")
    if not methods:
        raise FigureInputError("cannot plot heatmaps: no methods given")
    for i, s in enumerate(slides):
        missing = [k for k in _SLIDE_KEYS if k not in s]
        if missing:
            raise FigureInputError(f"cannot plot heatmaps: slide entry {i} lacks key(s) {missing}")
        coords = np.asarray(s["coords"])
        if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) == 0:
            raise FigureInputError(f"cannot plot heatmaps: slide {s['slide_id']}: coords must be (N>0, 2), "
                                   f"got {coords.shape}")
        if not int(s["patch_size_level0"]) > 0:
            raise FigureInputError(f"cannot plot heatmaps: slide {s['slide_id']}: patch_size_level0 must be > 0")
        for m in methods:
            key = (s["slide_id"], m)
            if key not in scores:
                raise FigureInputError(f"cannot plot heatmaps: no scores for slide {key[0]!r} and method {m!r}")
            v = np.asarray(scores[key], dtype=float).ravel()
            if len(v) != len(coords):
                raise FigureInputError(f"cannot plot heatmaps: slide {key[0]!r}, method {m!r}: {len(v)} scores "
                                       f"for {len(coords)} patches")
            if not np.isfinite(v).all():
                raise FigureInputError(f"cannot plot heatmaps: slide {key[0]!r}, method {m!r}: NaN/inf scores")


def plot_heatmaps(
    slides: list[dict],
    methods: list[str],
    scores: dict[tuple[str, str], np.ndarray],
    out_png: str | os.PathLike,
    *,
    dpi: int = 200,
    marked: Mapping[str, np.ndarray] | None = None,
    marked_label: str = "poisoned patch",
) -> list[Path]:
    """Per-patch score heatmaps: one row per slide, one column per method after the slide itself.

    ``slides``: dicts with ``slide_id``, ``path`` (a slide the project's reader opens), ``annotation`` (ASAP
    XML path or None), ``coords`` ((N, 2) level-0 top-left corners) and ``patch_size_level0``.
    ``scores[(slide_id, method)]``: (N,) patch scores in ``coords`` order, on any scale.

    Normalisation: **rank**, per slide and method — each patch is shown by its score's rank among the slide's
    patches, scaled to [0, 1] (0 lowest, 1 highest patch; ties share their mean rank). So methods on different
    scales (attention weights, logits, probabilities) compare, and one extreme attention weight does not
    flatten the rest; but a slide where a method finds nothing still shows its top-ranked patches in yellow.
    The colour bar says so, and each panel prints the raw maximum of its scores (a normal slide's low
    probabilities read as such). The first column is the slide with its annotation outlined (black, white halo;
    excluded regions dotted), the heatmaps lie over a faded copy with the same outline; viridis colour map.
    The figure is 7 in wide up to 5 columns and widens by about 1 in per column beyond.
    ``marked[slide_id]``: (N,) bool, patches outlined in magenta in every panel of that slide, labelled
    ``marked_label`` (the poisoned patches, so that a reader sees whether a method's high scores follow them).
    Columns ``"<method> (<map>)"`` of a map in :data:`NOT_SCORES` are left out. Returns the PNG and PDF paths.
    """
    methods = [m for m in methods if not m.endswith(tuple(f" ({n})" for n in NOT_SCORES))]
    _check(slides, methods, scores)
    ncols = 1 + len(methods)
    thumbs = [_thumbnail(s["path"]) for s in slides]
    aspect = max(img.shape[0] / img.shape[1] for img, _ in thumbs)  # tallest slide sets the row height
    label_w = 0.35
    panel_w = max(1.0, (PAGE_IN - label_w) / ncols)
    width = label_w + panel_w * ncols
    title_lines = 2 if any(" (" in m for m in methods) else 1
    height = len(slides) * panel_w * aspect + 0.15 * title_lines + 0.75  # titles; colour bar below
    outlines = [_outlines(s["annotation"]) for s in slides]
    cmap = colormaps[CMAP]
    with matplotlib.rc_context(_PAPER_RC):
        fig = _figure(width, height)
        axes = fig.subplots(len(slides), ncols, squeeze=False, gridspec_kw={"wspace": 0.02, "hspace": 0.02})
        for r, (s, (thumb, level0), polys) in enumerate(zip(slides, thumbs, outlines)):
            coords = np.asarray(s["coords"], dtype=float)
            extent = (0, level0[0], level0[1], 0)  # draw in level-0 px: coords and polygons need no scaling
            faded = (0.35 * thumb.astype(float) + 0.65 * 255).astype(np.uint8)
            for c in range(ncols):
                ax = axes[r, c]
                if c == 0:
                    ax.imshow(thumb, extent=extent, interpolation="antialiased")
                else:
                    raw = np.asarray(scores[(s["slide_id"], methods[c - 1])], dtype=float)
                    heat = _heat_image(coords, int(s["patch_size_level0"]), rank_normalise(raw), thumb.shape[:2],
                                       level0)
                    ax.imshow(_overlay(faded, heat, cmap), extent=extent, interpolation="antialiased")
                    # the raw maximum: a rank map looks alike on a slide where the method finds nothing
                    ax.text(0.03, 0.03, f"max {np.nanmax(raw):.2g}", transform=ax.transAxes, fontsize=5, va="bottom",
                            bbox={"boxstyle": "square,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
                for poly, tumour in polys:
                    ax.plot(poly[:, 0], poly[:, 1], ls="-" if tumour else ":", **_OUTLINE)
                if marked is not None and s["slide_id"] in marked:
                    _mark(ax, coords, int(s["patch_size_level0"]), marked[s["slide_id"]])
                ax.set_xlim(0, level0[0])
                ax.set_ylim(level0[1], 0)
                ax.set_xticks([])
                ax.set_yticks([])
                for side in ax.spines.values():
                    side.set_visible(True)
                    side.set_color("0.8")
                    side.set_linewidth(0.5)
                if r == 0:
                    ax.set_title("slide" if c == 0 else _wrap_name(methods[c - 1]), fontsize=7.5, pad=3)
            row_label = str(s["slide_id"]) + ("" if polys else "\n(no annotation)")
            axes[r, 0].set_ylabel(row_label, fontsize=7.5, labelpad=3)
        image = ScalarMappable(norm=Normalize(0, 1), cmap=cmap)
        bar = fig.colorbar(image, ax=axes, location="bottom", shrink=min(0.5, 3.0 / width), aspect=30,
                           pad=0.02, ticks=[0, 0.5, 1], alpha=HEAT_ALPHA)
        bar.set_label("patch score, rank within slide and method (0 lowest, 1 highest patch)")
        bar.outline.set_linewidth(0.5)
        handles = [Line2D([], [], **_OUTLINE, label="tumour annotation")] if any(outlines) else []
        if marked is not None and any(np.asarray(v).any() for v in marked.values()):
            handles.append(Line2D([], [], color=_MARK_COLOUR, lw=0.8, label=marked_label))
        if handles:  # beside the colour bar, not on a row of its own
            bar.ax.legend(handles=handles, loc="center right", bbox_to_anchor=(-0.04, 0.5), frameon=False,
                          handlelength=2.0)
        return _save(fig, Path(out_png), dpi)
