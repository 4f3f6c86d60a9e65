"""One slide abstraction over OpenSlide and tiffslide: lazy, closed by a context manager, mpp-aware.

    with open_slide("slide.tif") as s:
        tile = s.read_region((x0, y0), level=1, size=(224, 224))   # (224, 224, 3) uint8 RGB
"""

from __future__ import annotations

import logging

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from wsimil.io import WsimilError

Backend = Literal["auto", "openslide", "tiffslide"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LevelChoice:
    """Where to read a patch of ``size`` px at ``target_mpp``: ``read_size`` px at pyramid ``level``."""

    level: int
    read_size: int
    level0_size: int  # footprint of the patch in level-0 pixels


class Slide:
    """A whole-slide image opened with OpenSlide or tiffslide (same API, one object)."""

    def __init__(self, path: str | os.PathLike, backend: Backend = "auto", mpp: float | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise WsimilError(f"slide file not found: {self.path}")
        self._osr, self.backend = _open(self.path, backend)
        self._mpp_override = mpp

    # -- context manager -------------------------------------------------------------------------
    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._osr is not None:
            self._osr.close()
            self._osr = None

    # -- geometry --------------------------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height) in pixels."""
        return tuple(self._osr.dimensions)

    @property
    def level_count(self) -> int:
        return self._osr.level_count

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return [tuple(d) for d in self._osr.level_dimensions]

    @property
    def level_downsamples(self) -> list[float]:
        return [float(d) for d in self._osr.level_downsamples]

    @property
    def properties(self) -> dict[str, str]:
        return dict(self._osr.properties)

    @property
    def mpp(self) -> float:
        """Microns per pixel at level 0 (x); raises a clear error when the file does not say."""
        if self._mpp_override is not None:
            return float(self._mpp_override)
        props = self._osr.properties
        for key in ("openslide.mpp-x", "tiffslide.mpp-x", "aperio.MPP"):
            value = props.get(key)
            if value not in (None, "", "None"):
                mpp = float(value)
                if mpp > 0:
                    return mpp
        raise WsimilError(
            f"unable to read the microns per pixel of {self.path}: the file has none of openslide.mpp-x, "
            "tiffslide.mpp-x, aperio.MPP. Set the slide's mpp explicitly (patching.mpp_override in the config)."
        )

    def best_level_for_mpp(self, target_mpp: float, patch_size: int) -> LevelChoice:
        """The pyramid level to read a ``patch_size`` px patch at ``target_mpp`` from.

        Picks the deepest level that is not coarser than the target (never upsamples beyond 1%), so
        a 20x patch on a 40x slide is read at the 2x-downsampled level, or at level 0 and resized.
        """
        base = self.mpp
        scale = target_mpp / base  # level-0 px per output px
        if scale < 0.99:
            raise WsimilError(
                f"{self.path}: target {target_mpp} um/px is finer than the slide's level 0 ({base:.4f} um/px)"
            )
        level0_size = int(round(patch_size * scale))
        best = 0
        for i, ds in enumerate(self.level_downsamples):
            if ds <= scale * 1.01:
                best = i
        read_size = int(round(level0_size / self.level_downsamples[best]))
        return LevelChoice(level=best, read_size=read_size, level0_size=level0_size)

    def level_for_downsample(self, downsample: float) -> int:
        """The level whose downsample is closest (in log scale) to ``downsample``."""
        ds = np.asarray(self.level_downsamples)
        return int(np.argmin(np.abs(np.log(ds) - np.log(downsample))))

    # -- pixels ----------------------------------------------------------------------------------
    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB pixels (H, W, 3) uint8; ``location`` is the level-0 top-left corner, ``size`` is (w, h) at ``level``."""
        img = self._osr.read_region((int(location[0]), int(location[1])), int(level), (int(size[0]), int(size[1])))
        arr = np.asarray(img)
        if arr.ndim == 3 and arr.shape[2] == 4:  # RGBA: composite on white as OpenSlide does for background
            alpha = arr[..., 3:4].astype(np.float32) / 255.0
            arr = (arr[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
        return np.ascontiguousarray(arr[..., :3])

    def read_level(self, level: int) -> np.ndarray:
        """The whole of one pyramid level as (H, W, 3) uint8 RGB (use only on low-resolution levels)."""
        w, h = self.level_dimensions[level]
        return self.read_region((0, 0), level, (w, h))


def _check_extent(path: Path) -> None:
    """Refuse a TIFF whose tiles or strips lie past its end (a cut download): tiffslide opens it and would
    read zeros or fail mid-slide; OpenSlide refuses it."""
    import tifffile

    size = path.stat().st_size
    with tifffile.TiffFile(path) as tif:
        for i, page in enumerate(tif.pages):
            ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts) if n]
            if ends and max(ends) > size:
                raise WsimilError(f"{path}: the file is truncated: page {i}'s image data ends at byte {max(ends)}, "
                                  f"the file has {size} bytes (copy or download it again)")


def _open(path: Path, backend: Backend):
    errors: list[str] = []
    order = ["openslide", "tiffslide"] if backend == "auto" else [backend]
    for name in order:
        try:
            if name == "openslide":
                import openslide

                osr = openslide.OpenSlide(str(path))
            else:
                import tiffslide

                osr = tiffslide.TiffSlide(str(path))
            try:  # tiffslide parses lazily: touch the geometry now so a corrupt file fails here, not later
                _ = (osr.dimensions, osr.level_count, osr.level_downsamples, dict(osr.properties))
                if name == "tiffslide":
                    _check_extent(path)
            except Exception:
                osr.close()
                raise
            if errors:  # OpenSlide refused a file tiffslide reads: say why, do not drop it
                log.warning("%s: read with %s; %s", path, name, "; ".join(errors))
            return osr, name
        except ImportError as exc:
            errors.append(f"{name}: not installed ({exc})")
        except Exception as exc:  # each backend raises its own error types for unreadable files
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    raise WsimilError(f"cannot open slide {path}: " + "; ".join(errors))


def open_slide(path: str | os.PathLike, backend: Backend = "auto", mpp: float | None = None) -> Slide:
    """Open a slide; use as a context manager so it is always closed."""
    return Slide(path, backend=backend, mpp=mpp)
