"""Write an RGB image as a tiled, multi-resolution (pyramidal) TIFF that OpenSlide and tiffslide both open.

The file imitates an Aperio SVS, the layout both readers know best:

    page 0   level 0, tiled, ImageDescription "Aperio Image Library ... |AppMag = 20|MPP = 0.5"
    page 1   thumbnail, stripped (not tiled), at most ``thumbnail_size`` px on its longer side
    page 2.. levels 1, 2, ... (downsample 2, 4, ...), tiled, each its own page in the main IFD chain

Every page is written with ``metadata=None`` (no tifffile JSON/ImageJ description that would hide the Aperio
one) and NewSubfileType 0 for the levels (tifffile stops reading SVS levels at a "reduced" page). Lower levels
are area averages of the level above (``cv2.INTER_AREA``: an exact 2x2 block mean for even sizes).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from wsimil.io import WsimilError, atomic_path


def pyramid_sizes(width: int, height: int, min_level_size: int = 512) -> list[tuple[int, int]]:
    """(width, height) of every level: halve while the next level's longer side stays >= ``min_level_size``."""
    sizes = [(int(width), int(height))]
    while True:
        w, h = sizes[-1]
        nw, nh = w // 2, h // 2
        if max(nw, nh) < min_level_size or min(nw, nh) < 1:
            return sizes
        sizes.append((nw, nh))


def downsample2(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-average ``rgb`` (H, W, 3) uint8 to ``size`` = (width, height)."""
    import cv2

    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def write_pyramidal_tiff(
    path: str | os.PathLike,
    rgb: np.ndarray,
    mpp: float,
    tile: int = 256,
    min_level_size: int = 512,
    compression: str | None = "jpeg",
    quality: int = 90,
    magnification: float | None = None,
    thumbnail_size: int = 512,
) -> Path:
    """Write ``rgb`` ((H, W, 3) uint8) as an Aperio-like pyramidal TIFF at ``path``, atomically.

    ``mpp`` is the level-0 microns per pixel (both readers report it as ``openslide.mpp-x`` /
    ``tiffslide.mpp-x``); ``magnification`` defaults to ``10 / mpp`` (0.5 um/px -> 20x, as scanners label
    it). ``compression`` is ``"jpeg"`` (with ``quality``), ``"deflate"``, ``"lzw"`` or ``None``.
    Returns ``path``.
    """
    import tifffile

    path = Path(path)
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise WsimilError(f"{path}: expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    if not (mpp > 0):
        raise WsimilError(f"{path}: mpp must be > 0, got {mpp}")
    if tile % 16 or tile <= 0:
        raise WsimilError(f"{path}: tile size must be a positive multiple of 16, got {tile}")
    height, width = rgb.shape[:2]
    if magnification is None:
        magnification = 10.0 / mpp
    mag = f"{magnification:g}"
    comp = None if compression in (None, "none", "None") else compression
    compressionargs = {"level": int(quality)} if comp == "jpeg" else None

    sizes = pyramid_sizes(width, height, min_level_size)
    levels = [np.ascontiguousarray(rgb)]
    for size in sizes[1:]:
        levels.append(downsample2(levels[-1], size))
    scale = thumbnail_size / max(width, height)
    thumb_size = (max(1, int(round(width * scale))), max(1, int(round(height * scale))))
    thumb = downsample2(levels[-1], thumb_size) if scale < 1 else levels[-1]

    comp_name = {"jpeg": "JPEG/RGB Q=%d" % quality}.get(comp or "", (comp or "RAW").upper())
    header = f"Aperio Image Library v12.0.15 (wsimil synthetic)\r\n{width}x{height} [0,0 {width}x{height}]"
    props = f"|AppMag = {mag}|MPP = {mpp:.6g}|ScanScope ID = WSIMIL|Filename = {path.stem}"
    res = (1e4 / mpp, 1e4 / mpp)  # pixels per centimetre

    common = dict(photometric="rgb", metadata=None, compression=comp, compressionargs=compressionargs,
                  resolutionunit="CENTIMETER", maxworkers=1)
    with atomic_path(path, suffix=".tif") as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=rgb.nbytes > 2**31) as tw:
            tw.write(levels[0], tile=(tile, tile), description=header + f" ({tile}x{tile}) {comp_name}" + props,
                     resolution=res, subfiletype=0, **common)
            tw.write(thumb, description=header + f" -> {thumb_size[0]}x{thumb_size[1]} - " + props,
                     photometric="rgb", metadata=None, compression=None, subfiletype=0)
            for level, (w, h) in zip(levels[1:], sizes[1:]):
                ds = width / w
                tw.write(level, tile=(tile, tile),
                         description=header + f" -> {w}x{h} - ({tile}x{tile}) {comp_name}" + props,
                         resolution=(res[0] / ds, res[1] / ds), subfiletype=0, **common)
    return path
