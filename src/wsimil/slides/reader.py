"""One slide abstraction over OpenSlide and tiffslide: lazy, closed by a context manager, mpp-aware.

    with open_slide("slide.tif") as s:
        tile = s.read_region((x0, y0), level=1, size=(224, 224))   # (224, 224, 3) uint8 RGB

A slide comes from outside, so what it declares is checked before anything is allocated:

- the path must be a regular file (not a folder, FIFO or device; :func:`wsimil.io.check_input_file`);
- level 0 may declare at most ``limits.max_slide_side_px`` px per side (:mod:`wsimil.limits`), and every
  level must be non-empty and no larger than level 0;
- one read is at most :data:`MAX_REGION_PX` px and a whole level is read only up to :data:`MAX_WHOLE_LEVEL_PX`
  px (larger levels are read in tiles, :func:`wsimil.slides.tissue.read_downsampled`); RGBA is composited on
  white in uint8/uint16 arithmetic;
- the resolution of an OME-TIFF comes from its OME-XML (at most :data:`MAX_OME_XML_BYTES`, parsed with
  defusedxml);
- error messages name the file and the backend's exception *type*, never the backend's text, which may
  quote the file's bytes.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from wsimil.io import WsimilError, check_input_file, excerpt, file_kind

Backend = Literal["auto", "openslide", "tiffslide"]

log = logging.getLogger(__name__)

MAX_WHOLE_LEVEL_PX = 8192 * 8192  # 64 Mi px: 256 MiB as RGBA, the most read_level reads at once
MAX_REGION_PX = 2**28  # one read_region (1 GiB as RGBA); a patch is ~2**16 - 2**20 px
MAX_OME_XML_BYTES = 10 * 2**20
_COMPOSITE_PX = 2**22  # px composited per block, so the uint16 temporaries stay small
_BACKEND_NAMES = {"openslide": "OpenSlide", "tiffslide": "tiffslide"}
# OME length units -> micrometres (OME's default unit for PhysicalSizeX is the micrometre)
_OME_UNITS_UM = {"m": 1e6, "cm": 1e4, "mm": 1e3, "µm": 1.0, "μm": 1.0, "um": 1.0, "nm": 1e-3, "pm": 1e-6,
                 "Å": 1e-4}


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
        check_input_file(self.path, "slide file", _folder_hint(self.path) if file_kind(self.path) == "a folder" else "")
        self._osr, self.backend = _open(self.path, backend)
        self._mpp_override = mpp
        self._ome_mpp: float | None | bool = False  # False: not looked up yet

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
            mpp = _positive(props.get(key))
            if mpp is not None:
                return mpp
        if self._ome_mpp is False:
            self._ome_mpp = ome_mpp(self.path)
        if self._ome_mpp is not None:
            return float(self._ome_mpp)
        raise WsimilError(
            f"unable to read the microns per pixel of {self.path}: the file has none of openslide.mpp-x, "
            "tiffslide.mpp-x, aperio.MPP, nor an OME-XML PhysicalSizeX. Set the slide's mpp explicitly "
            "(patching.mpp_override in the config)."
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
        if level0_size > max(self.dimensions):
            raise WsimilError(
                f"{self.path}: a {patch_size}-px patch at {target_mpp} um/px covers {level0_size} px of level 0, more "
                f"than the whole slide ({self.dimensions[0]} x {self.dimensions[1]} px): its resolution "
                f"{base:.4g} um/px is implausible; set patching.mpp_override"
            )
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
        """RGB pixels (H, W, 3) uint8; ``location`` is the level-0 top-left corner, ``size`` is (w, h) at ``level``.

        At most :data:`MAX_REGION_PX` px per read."""
        w, h = int(size[0]), int(size[1])
        if w * h > MAX_REGION_PX:
            raise WsimilError(f"{self.path}: a read of {w} x {h} px at level {level} is more than {MAX_REGION_PX} px; "
                              "read it in tiles")
        img = self._osr.read_region((int(location[0]), int(location[1])), int(level), (w, h))
        arr = np.asarray(img)
        del img  # the backend's copy
        if arr.ndim == 3 and arr.shape[2] == 4:  # RGBA: composite on white as OpenSlide does for background
            return rgba_on_white(arr)
        return np.ascontiguousarray(arr[..., :3])

    def read_level(self, level: int) -> np.ndarray:
        """The whole of one pyramid level as (H, W, 3) uint8 RGB, for levels of at most :data:`MAX_WHOLE_LEVEL_PX`
        px (read larger ones with :func:`wsimil.slides.tissue.read_downsampled`)."""
        w, h = self.level_dimensions[level]
        if w * h > MAX_WHOLE_LEVEL_PX:
            raise WsimilError(f"{self.path}: level {level} is {w} x {h} px, more than the {MAX_WHOLE_LEVEL_PX} px "
                              "read whole; read it in tiles (wsimil.slides.tissue.read_downsampled)")
        return self.read_region((0, 0), level, (w, h))


def rgba_on_white(arr: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 RGBA composited on white -> (H, W, 3) uint8: ``round(c * a / 255 + 255 * (1 - a / 255))``.

    With ``v = c * a + 255 * (255 - a) + 127``, ``v // 255`` is that rounding exactly (``v - 127`` is an integer, so
    no value lies half-way) and ``v < 2**16``, so uint16 suffices; ``v // 255 == (v + 1 + (v >> 8)) >> 8`` for
    ``v < 65535`` avoids a slow integer division. Done in row blocks to bound the temporaries; opaque blocks
    are copied.
    """
    h, w = arr.shape[:2]
    out = np.empty((h, w, 3), dtype=np.uint8)
    rows = max(1, _COMPOSITE_PX // max(1, w))
    for y in range(0, h, rows):
        block = arr[y : y + rows]
        if block[..., 3].min(initial=255) == 255:
            out[y : y + rows] = block[..., :3]
            continue
        a = block[..., 3:4].astype(np.uint16)
        v = block[..., :3].astype(np.uint16)
        v *= a
        a = 255 - a
        a *= 255
        v += a
        v += 127
        v += (v >> 8) + 1
        v >>= 8
        out[y : y + rows] = v
    return out


def _positive(value: Any) -> float | None:
    """``value`` as a finite positive float, else None (missing, empty, unparsable, <= 0, inf, nan)."""
    if value in (None, "", "None"):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) and x > 0 else None


def ome_mpp(path: str | os.PathLike) -> float | None:
    """Microns per pixel (x) from an OME-TIFF's first Image's Pixels ``PhysicalSizeX`` / ``PhysicalSizeXUnit``
    (default µm); None when the file is not an OME-TIFF or does not say. Refuses OME-XML over
    :data:`MAX_OME_XML_BYTES` and units it does not know."""
    import tifffile
    from defusedxml import ElementTree as SafeET

    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.is_ome:
                return None
            tag = tif.pages.first.tags.get(270)  # ImageDescription, where OME-TIFF keeps its OME-XML
            if tag is not None and tag.valuebytecount > MAX_OME_XML_BYTES:
                raise WsimilError(f"{path}: its OME-XML is {tag.valuebytecount} bytes, more than the "
                                  f"{MAX_OME_XML_BYTES} bytes parsed; set patching.mpp_override instead")
            xml = tif.ome_metadata
    except WsimilError:
        raise
    except Exception:  # not a TIFF (MIRAX, DICOM, ...) or unreadable: no OME resolution
        return None
    if not xml:
        return None
    try:
        root = SafeET.fromstring(xml)
    except Exception as exc:  # ParseError, defusedxml's EntitiesForbidden, ...
        log.warning("%s: its OME-XML does not parse (%s); no resolution read from it", path, type(exc).__name__)
        return None
    image = next((el for el in root if _local(el.tag) == "Image"), None)
    pixels = None if image is None else next((el for el in image if _local(el.tag) == "Pixels"), None)
    if pixels is None:
        return None
    size = _positive(pixels.get("PhysicalSizeX"))
    if size is None:
        return None
    unit = pixels.get("PhysicalSizeXUnit") or "µm"
    if unit not in _OME_UNITS_UM:
        raise WsimilError(f"{path}: OME-XML PhysicalSizeXUnit {excerpt(unit, 12)} is not a length unit wsimil knows "
                          f"({', '.join(_OME_UNITS_UM)}); set patching.mpp_override")
    return size * _OME_UNITS_UM[unit]


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _folder_hint(path: Path) -> str:
    """What to pass instead of a folder: one .dcm file of a DICOM series, else one file."""
    try:
        with os.scandir(path) as it:
            for i, entry in enumerate(it):
                if entry.name.lower().endswith(".dcm"):
                    return (": it holds .dcm files; for a DICOM whole-slide image pass one .dcm file of the series "
                            "(OpenSlide 4 reads the rest of the series from the same folder)")
                if i >= 10_000:
                    break
    except OSError:
        pass
    return ": a slide is one file (.svs, .tif, .ndpi, .mrxs, a .dcm of a DICOM series, ...)"


def check_declared_geometry(path: Path, level_dimensions: list[tuple[int, int]]) -> None:
    """Refuse a slide whose level 0 declares more than ``limits.max_slide_side_px`` per side, or a level that is
    empty or larger than level 0: such sizes are claims that would drive allocations, not real slides."""
    from wsimil.limits import current

    if not level_dimensions:
        raise WsimilError(f"slide {path} declares no pyramid level")
    limit = current().max_slide_side_px
    w0, h0 = (int(v) for v in level_dimensions[0])
    if w0 > limit or h0 > limit:
        raise WsimilError(
            f"slide {path} declares {w0} x {h0} px at level 0, more than the limit of {limit} px per side: refused "
            "(a real slide is at most ~220,000 px a side). If this slide is real, raise the config's "
            "limits.max_slide_side_px (or pass wsimil --limits '{\"max_slide_side_px\": N}')"
        )
    for i, (w, h) in enumerate(level_dimensions):
        w, h = int(w), int(h)
        if w <= 0 or h <= 0 or w > w0 or h > h0:
            raise WsimilError(f"slide {path} declares level {i} as {w} x {h} px, "
                              + ("an empty level" if w <= 0 or h <= 0 else f"larger than its level 0 ({w0} x {h0} px)")
                              + ": the file is damaged or not a whole-slide image")


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
    """Open ``path`` with the first backend that reads it; our own refusals (declared size, truncation) end the
    search. The backends' messages are not repeated: they may quote the file's bytes."""
    failed: list[str] = []  # "OpenSlide (OpenSlideUnsupportedFormatError)"
    order = ["openslide", "tiffslide"] if backend == "auto" else [backend]
    for name in order:
        label = _BACKEND_NAMES.get(name, name)
        try:
            if name == "openslide":
                import openslide

                osr = openslide.OpenSlide(str(path))
            else:
                import tiffslide

                osr = tiffslide.TiffSlide(str(path))
        except ImportError:
            failed.append(f"{label} (not installed)")
            continue
        except Exception as exc:  # each backend raises its own error types for unreadable files
            failed.append(f"{label} ({type(exc).__name__})")
            continue
        try:  # tiffslide parses lazily: touch the geometry now so a corrupt file fails here, not later
            _ = (osr.dimensions, osr.level_count, osr.level_downsamples, dict(osr.properties))
            check_declared_geometry(path, [tuple(d) for d in osr.level_dimensions])
            if name == "tiffslide":
                _check_extent(path)
        except WsimilError:
            osr.close()
            raise
        except Exception as exc:
            osr.close()
            failed.append(f"{label} ({type(exc).__name__})")
            continue
        if failed:  # OpenSlide refused a file tiffslide reads: say so, do not drop it
            log.warning("%s: read with %s; %s did not read it", path, label, ", ".join(failed))
        return osr, name
    if len(failed) == 1:
        why = f"{failed[0]} does not read it"
    else:
        why = "neither " + " nor ".join(failed) + " reads it"
    raise WsimilError(f"cannot open slide {path}: {why} as a whole-slide image")


def open_slide(path: str | os.PathLike, backend: Backend = "auto", mpp: float | None = None) -> Slide:
    """Open a slide; use as a context manager so it is always closed."""
    return Slide(path, backend=backend, mpp=mpp)
