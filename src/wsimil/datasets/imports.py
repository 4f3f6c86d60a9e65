"""Bring your own features: import pre-extracted per-slide features into wsimil's feature store.

Three source layouts (``imported_features.format``), one file per slide named ``<slide_id>.<ext>``:

``h5``  CLAM ``h5_files/`` or TRIDENT ``features_<encoder>/``: datasets ``features`` (N, D) (TRIDENT may keep
        a leading batch axis, (1, N, D)) and ``coords`` (N, 2) level-0 top-left corners. The patch side in
        level-0 pixels is read from the attributes of ``coords`` (TRIDENT: ``patch_size_level0``; CLAM patch
        files: ``patch_size`` at ``patch_level`` times that level's ``downsample``) unless given.
``pt``  CLAM ``pt_files/``: one float tensor (N, D) per slide, saved with ``torch.save``; no coordinates.
        Loaded with ``torch.load(weights_only=True)`` only: nothing but a tensor is ever unpickled.
``csv`` DSMIL ``datasets/<dataset>/<class>/<slide>.csv``: a header row (0 .. D-1), one row per patch, one
        numeric column per feature; no coordinates. A file in a class sub-folder is found too.

Each imported slide becomes ``<out>/<slide_id>.h5`` (:func:`wsimil.features.store.write_features`), so
training and evaluation read it like a feature file of ``wsimil extract``:

- ``features`` (N, D) in ``dtype`` (float16 by default, as ``wsimil extract`` writes);
- ``coords`` (N, 2) int64 when the source has them. Without coordinates there is **no** ``coords`` dataset
  (not zeros, which would put every patch at the slide's corner): readers that need positions (the FROC,
  heatmaps) see that they are missing; ``read_features`` fills zeros for code that ignores them.
- ``tumor_fraction`` (N,): from the slide's ASAP XML (``wsimil.slides.annotations``: tumour groups minus
  ``_2`` exclusions, exact polygon area per patch) when coordinates, the patch side and an annotation are
  all known; zeros for a normal slide (label 0) without annotation, as ``wsimil patch`` writes; otherwise
  absent, with the reason in the attribute ``patch_labels_skipped_reason``.
- attributes: ``slide_id``, ``extractor`` = ``imported:<format>``, ``source_format``, ``source_path``,
  ``source_sha256``, ``feature_dim``, ``n_patches``, ``dtype``, ``coords_available``, ``level0_size`` (the
  patch side in level-0 px, when known with coordinates) with ``patch_size_level0_source``,
  ``tumor_fraction_source`` or ``patch_labels_skipped_reason``, ``wsimil_version``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from wsimil.io import WsimilError, atomic_path, check_input_file, check_slide_id, check_within, excerpt, read_error
from wsimil.slides.annotations import annotation_file

log = logging.getLogger(__name__)

FORMATS = ("h5", "pt", "csv")
EXTENSIONS = {"h5": ".h5", "pt": ".pt", "csv": ".csv"}
DTYPES = {"float16": np.float16, "float32": np.float32}
_NO_COORDS = {"pt": "pt files carry no patch coordinates", "csv": "DSMIL CSV files carry no patch coordinates"}


@dataclass
class SourceBag:
    """One slide as read from its source file, before conversion."""

    features: np.ndarray  # (N, D) float
    coords: np.ndarray | None  # (N, 2) int64 level-0 top-left, or None (format without coordinates)
    geometry: dict[str, Any] = field(default_factory=dict)  # attributes that may give the patch size
    extra_attrs: dict[str, Any] = field(default_factory=dict)  # provenance copied to the output


# -- finding and hashing sources ------------------------------------------------------------------------
def source_path(src_dir: str | os.PathLike, slide_id: str, fmt: str) -> Path:
    """``<src_dir>/<slide_id>.<ext>`` (for csv also ``<src_dir>/<class>/<slide_id>.csv``, DSMIL's layout).

    A missing file is a :class:`WsimilError` naming the expected path and up to 5 files of the folder.
    """
    _check_format(fmt)
    check_slide_id(slide_id)
    src_dir = Path(src_dir)
    name = slide_id + EXTENSIONS[fmt]
    path = src_dir / name
    if os.path.lexists(path):
        return check_within(check_input_file(path, f"slide {slide_id}: feature file"), src_dir, "feature file")
    if fmt == "csv" and src_dir.is_dir():
        hits = sorted(p for p in src_dir.glob(f"*/{name}") if p.is_file())
        if len(hits) == 1:
            return check_within(hits[0], src_dir, "feature file")
        if len(hits) > 1:
            raise WsimilError(f"{name} found in several sub-folders of {src_dir}: {[str(p) for p in hits[:5]]}")
    if not src_dir.is_dir():
        raise WsimilError(f"feature source folder not found: {src_dir} (expected {path} in it)")
    present = sorted(p.name for p in src_dir.iterdir())
    shown = ", ".join(excerpt(n) for n in present[:5]) + (f", ... ({len(present)} in all)" if len(present) > 5 else "")
    where = f" or {src_dir}/<class>/{name}" if fmt == "csv" else ""
    raise WsimilError(
        f"slide {slide_id}: feature file not found: expected {path}{where} (format {fmt}); "
        f"the folder holds: {shown or 'nothing'}"
    )


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise WsimilError(f"unknown feature format {fmt!r} (expected one of {list(FORMATS)})")


# -- readers --------------------------------------------------------------------------------------------
def _as_bag_matrix(arr: np.ndarray, path: Path, what: str = "features") -> np.ndarray:
    """(N, D) from (N, D) or (1, N, D); anything else is an error naming the file."""
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 1 and arr.size == 0:  # TRIDENT saves a slide without patches as features of shape (0,)
        raise WsimilError(f"{path}: empty bag ('{what}' has shape (0,)): nothing to import")
    if arr.ndim != 2:
        raise WsimilError(f"{path}: '{what}' must be (N, D) or (1, N, D), got shape {tuple(arr.shape)}")
    return arr


def _plain(v: Any) -> Any:
    if isinstance(v, bytes):
        v = v.decode(errors="replace")
    if isinstance(v, np.generic):
        v = v.item()
    return v


def read_h5_source(path: str | os.PathLike) -> SourceBag:
    """A CLAM/TRIDENT feature file: ``features`` (N, D) or (1, N, D), ``coords`` (N, 2), their attributes."""
    from wsimil.h5gate import dataset, open_h5

    path = Path(path)
    try:
        with open_h5(path, "HDF5 feature file") as f:
            dset = dataset(f, "features", path)
            if "coords" not in f:
                raise WsimilError(
                    f"{path}: no 'coords' dataset; CLAM/TRIDENT h5 files carry both — a file without coordinates "
                    "can be imported as format pt or csv"
                )
            dataset(f, "coords", path)
            if dset.dtype.kind != "f":
                raise WsimilError(f"{path}: 'features' must be floating point, got {dset.dtype}")
            rows = dset.shape[-2] if len(dset.shape) >= 2 else 0
            if f["coords"].shape[:1] != (rows,):  # checked before either is read
                n_coords = f["coords"].shape[0] if f["coords"].shape else 0
                raise WsimilError(f"{path}: {rows} feature rows but {n_coords} coords")
            feats = _as_bag_matrix(dset[()], path)
            coords = np.asarray(f["coords"][()])
            geometry = {k: _plain(v) for k, v in f.attrs.items()}
            geometry.update({k: _plain(v) for k, v in f["coords"].attrs.items()})
            extra = {}
            encoder = _plain(dset.attrs.get("encoder", None))
            if isinstance(encoder, str) and encoder not in ("", "None"):
                extra["source_encoder"] = encoder  # TRIDENT writes the patch encoder's name here
    except OSError as exc:
        raise WsimilError(f"cannot read HDF5 feature file {path}: {exc}") from exc
    coords = _as_bag_matrix(coords, path, "coords")
    if coords.shape[1] != 2 or coords.dtype.kind not in "iuf":
        raise WsimilError(f"{path}: 'coords' must be numeric (N, 2), got {coords.dtype} {coords.shape}")
    if len(coords) != len(feats):
        raise WsimilError(f"{path}: {len(feats)} feature rows but {len(coords)} coords")
    if coords.dtype.kind == "f":
        if not np.isfinite(coords).all():
            raise WsimilError(f"{path}: 'coords' contain NaN or infinite values")
        coords = np.rint(coords)
    return SourceBag(feats, coords.astype(np.int64), geometry, extra)


def check_pt_archive(path: Path) -> None:
    """Bound a ``torch.save`` file before PyTorch reads it: a zip archive (the format since PyTorch 1.6) whose
    members declare at most ``limits.max_h5_elements`` x 8 bytes in all, no member that expands more than
    ``limits.max_h5_compression`` times (above the floor), no member outside the archive's folder."""
    import zipfile

    from wsimil.limits import current

    lim = current()
    if not zipfile.is_zipfile(path):
        raise WsimilError(f"{path}: not a zip archive: only the torch.save format of PyTorch >= 1.6 is read (load "
                          "the file with your PyTorch and save it again with torch.save(tensor, path))")
    try:
        with zipfile.ZipFile(path) as z:
            members = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise WsimilError(f"{path}: a damaged zip archive ({type(exc).__name__})") from None
    total = 0
    for m in members:
        if m.filename.startswith("/") or ".." in m.filename.split("/"):
            raise WsimilError(f"{path}: archive member {excerpt(m.filename)} points outside the archive: refused")
        total += m.file_size
        if lim.expands_too_much(m.file_size, m.compress_size):
            raise WsimilError(f"{path}: archive member {excerpt(m.filename)} declares {m.file_size:,} bytes "
                              f"compressed in {m.compress_size:,} (over {lim.max_h5_compression:g}x): refused")
    if total > lim.max_h5_elements * 8:
        raise WsimilError(f"{path}: the archive declares {total:,} bytes, over the limit of "
                          f"{lim.max_h5_elements * 8:,} (limits.max_h5_elements x 8): refused before reading")


def read_pt_source(path: str | os.PathLike) -> SourceBag:
    """A CLAM ``pt_files`` tensor (N, D), loaded with ``weights_only=True``: nothing else is unpickled."""
    import torch

    path = Path(path)
    check_pt_archive(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for anything but tensors/containers, RuntimeError for bad zips
        # PyTorch's own advice ("Re-running with weights_only=False will likely succeed") is what we refuse to do
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip() and "weights_only=False" not in ln
                 and "Weights only load failed" not in ln]
        first = lines[0].strip() if lines else type(exc).__name__
        raise WsimilError(
            f"{path}: refused: not a plain tensor loadable with torch.load(weights_only=True) (pickled objects "
            f"are never unpickled; save the features with torch.save(tensor, path)): {first[:300]}"
        ) from None
    if not isinstance(obj, torch.Tensor):
        raise WsimilError(
            f"{path}: holds a {type(obj).__name__}, not a tensor: a pt_files file must be one (N, D) float "
            "tensor saved with torch.save(tensor, path)"
        )
    if not obj.is_floating_point():
        raise WsimilError(f"{path}: the tensor must be floating point, got {obj.dtype}")
    t = obj.detach()
    if t.dtype not in (torch.float16, torch.float32, torch.float64):
        t = t.float()  # bfloat16 has no numpy counterpart
    return SourceBag(_as_bag_matrix(t.numpy(), path), None)


def read_csv_source(path: str | os.PathLike) -> SourceBag:
    """A DSMIL per-slide CSV: header row, one row per patch, one numeric column per feature dimension."""
    import pandas as pd

    path = Path(path)
    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise WsimilError(f"{path}: empty file (no header, no patches): empty bag") from None
    except Exception as exc:  # pandas raises several error types; their text may quote the file
        raise WsimilError(f"cannot read CSV feature file {path}: {read_error(exc)}") from None
    names = [str(c) for c in df.columns]
    unnamed = [c for c in names if c.startswith("Unnamed:")]
    if unnamed:
        raise WsimilError(
            f"{path}: {len(unnamed)} column(s) without a name (a saved row index?): every column must be a "
            "feature, as DSMIL writes them (DataFrame.to_csv(index=False))"
        )
    numeric_names = []
    for c in names:
        try:
            numeric_names.append(float(c))
        except ValueError:
            break
    if len(numeric_names) == len(names) and names != [str(i) for i in range(len(names))]:
        raise WsimilError(
            f"{path}: the first row ({', '.join(excerpt(n, 12) for n in names[:3])}, ...) looks like data, not a "
            "header: DSMIL CSVs "
            "start with a header row 0,1,...,D-1 (add one, or the first patch would be lost)"
        )
    if len(df) == 0:
        raise WsimilError(f"{path}: empty bag (a header, no patch rows): nothing to import")
    for j, col in enumerate(df.columns):
        kind = df[col].dtype.kind
        if kind in "fiu":
            continue
        if kind == "b":
            bad = np.arange(len(df))
        else:
            values = pd.to_numeric(df[col].astype(object), errors="coerce")
            bad = np.flatnonzero((values.isna() & df[col].notna()).to_numpy())
        i = int(bad[0]) if len(bad) else 0
        raise WsimilError(
            f"{path}: non-numeric value {excerpt(df[col].iloc[i], 20)} at row {i + 1} (line {i + 2}), column "
            f"{excerpt(col, 20)} "
            f"(column {j + 1}); every cell must be a number ({len(bad) or len(df)} bad cells in that column)"
        )
    return SourceBag(df.to_numpy(dtype=np.float64), None)


READERS = {"h5": read_h5_source, "pt": read_pt_source, "csv": read_csv_source}


# -- geometry and patch labels --------------------------------------------------------------------------
def _number(v: Any) -> float | None:
    """A positive finite number from an attribute value (TRIDENT stores None as the string 'None')."""
    try:
        x = float(np.asarray(v, dtype=np.float64).reshape(-1)[0])
    except (TypeError, ValueError, IndexError):
        return None
    return x if math.isfinite(x) and x > 0 else None


def patch_size_from_attrs(attrs: dict[str, Any]) -> tuple[int | None, str]:
    """The patch side in level-0 px from a feature file's attributes, and where it came from (or why not).

    In order: ``patch_size_level0`` (TRIDENT's coords attribute), ``level0_size`` (wsimil's), ``patch_size``
    x ``level0_magnification`` / ``target_magnification`` (TRIDENT), ``patch_size`` x ``downsample`` (x
    ``custom_downsample``) (CLAM's patch files: ``downsample`` is the level's (x, y) downsample), ``patch_size``
    at ``patch_level`` 0. A ``patch_level`` > 0 without its ``downsample`` is not guessed.
    """
    for key, who in (("patch_size_level0", "TRIDENT"), ("level0_size", "wsimil")):
        v = _number(attrs.get(key))
        if v is not None:
            return int(round(v)), f"h5 attribute {key} ({who})"
    size = _number(attrs.get("patch_size"))
    if size is None:
        return None, "the h5 file has no patch size attribute (patch_size_level0, or patch_size with downsample)"
    mag0, mag = _number(attrs.get("level0_magnification")), _number(attrs.get("target_magnification"))
    if mag0 is not None and mag is not None:
        return int(round(size * mag0 / mag)), "h5 attributes patch_size x level0_magnification / target_magnification"
    custom = _number(attrs.get("custom_downsample")) or 1.0
    if "downsample" in attrs:
        ds = np.asarray(attrs["downsample"], dtype=np.float64).reshape(-1)
        if len(ds) and np.isfinite(ds).all() and (ds > 0).all():
            if np.ptp(ds) > 1e-3 * ds.max():
                return None, f"h5 attribute downsample {ds.tolist()} differs between x and y (non-square patches)"
            return int(round(size * float(ds[0]) * custom)), "h5 attributes patch_size x downsample (CLAM)"
    try:
        level = int(np.asarray(attrs["patch_level"]).reshape(-1)[0])
    except (KeyError, TypeError, ValueError, IndexError):
        return None, "the h5 file has patch_size but neither a usable patch_level nor downsample (level unknown)"
    if level == 0:
        return int(round(size * custom)), "h5 attribute patch_size at patch_level 0 (CLAM)"
    return None, (
        f"the h5 file has patch_size at patch_level {level} but no downsample: the level's downsample is not "
        "guessed"
    )


def patch_labels(
    coords: np.ndarray | None,
    size_level0: int | None,
    size_reason: str,
    annotation: Path | None,
    label: int,
    fmt: str,
    n_patches: int,
) -> tuple[np.ndarray | None, dict[str, str]]:
    """``tumor_fraction`` (or None) and the attributes saying where it came from or why it is missing.

    Follows ``wsimil patch`` and ``wsimil evaluate``: annotated slide -> exact polygon fractions; normal slide
    without annotation -> zeros (a normal slide has no tumour, wherever its patches lie); otherwise none.
    """
    from wsimil.slides.annotations import tumour_fraction, tumour_region

    if annotation is not None:
        if coords is None:
            why = f"{_NO_COORDS.get(fmt, 'no patch coordinates')}: the annotation cannot be mapped onto patches"
        elif size_level0 is None:
            why = f"patch size in level-0 px unknown ({size_reason}); set imported_features.patch_size_level0"
        else:
            tf = tumour_fraction(tumour_region(annotation), coords, size_level0)
            if label == 0 and float(tf.max(initial=0.0)) > 0:
                log.warning("slide labelled normal but its annotation %s marks tumour", annotation)
            return tf, {"tumor_fraction_source": "annotation", "annotation_path": str(annotation)}
        if label == 0:
            log.warning("normal slide with annotation %s: %s", annotation, why)
        return None, {"patch_labels_skipped_reason": why, "annotation_path": str(annotation)}
    if int(label) == 0:
        return np.zeros(n_patches, dtype=np.float32), {"tumor_fraction_source": "normal slide"}
    return None, {
        "patch_labels_skipped_reason": "tumour slide without annotation in the sample sheet: which patches are "
        "tumour is unknown"
    }


def check_features(path: Path, feats: np.ndarray, expected_dim: int | None) -> None:
    """Empty bag, wrong dimension, NaN/inf: a :class:`WsimilError` naming the file."""
    n, d = feats.shape
    if n == 0:
        raise WsimilError(f"{path}: empty bag (0 patches, dimension {d}): nothing to import")
    if d == 0:
        raise WsimilError(f"{path}: features have dimension 0")
    if expected_dim is not None and d != expected_dim:
        raise WsimilError(f"{path}: feature dimension {d}, but the other slides have {expected_dim}")
    finite = np.isfinite(feats)
    if not finite.all():
        bad = np.argwhere(~finite)
        i, j = bad[0]
        raise WsimilError(
            f"{path}: {len(bad)} NaN or infinite feature values in {int((~finite.all(axis=1)).sum())} of {n} "
            f"patches (first at patch {i}, dimension {j})"
        )


# -- import ---------------------------------------------------------------------------------------------
def import_slide(
    src: str | os.PathLike,
    fmt: str,
    out: str | os.PathLike,
    slide_id: str,
    annotation: str | os.PathLike | None,
    label: int,
    patch_size_level0: int | None = None,
    dtype: str = "float16",
    expected_dim: int | None = None,
) -> dict[str, Any]:
    """Import one slide's features from ``src`` (format ``fmt``) into the feature file ``out``, atomically.

    ``annotation``: the slide's ASAP XML (None/empty: none); ``label``: 0 normal / 1 tumour;
    ``patch_size_level0``: the patch side in level-0 px (None: from the h5 attributes where there are some);
    ``expected_dim``: the other slides' feature dimension. Returns a summary (``n_patches``, ``feature_dim``,
    ``tumor_fraction`` source or skip reason). Every problem is a :class:`WsimilError` naming the file.
    """
    import wsimil
    from wsimil.features.store import write_features

    _check_format(fmt)
    check_slide_id(slide_id, src)
    if dtype not in DTYPES:
        raise WsimilError(f"features dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if int(label) not in (0, 1):
        raise WsimilError(f"slide {slide_id}: label {label!r} must be 0 (normal) or 1 (tumour)")
    if patch_size_level0 is not None and int(patch_size_level0) < 1:
        raise WsimilError(f"patch_size_level0 must be >= 1, got {patch_size_level0}")
    src = check_input_file(src, f"slide {slide_id}: feature file")
    ann = annotation_file(annotation)

    bag = READERS[fmt](src)
    check_features(src, bag.features, expected_dim)
    with np.errstate(over="ignore"):  # an overflow is reported just below
        out_feats = bag.features.astype(DTYPES[dtype])
    if not np.isfinite(out_feats).all():
        big = float(np.abs(bag.features).max())
        raise WsimilError(
            f"{src}: feature values up to {big:.4g} overflow {dtype} (max {float(np.finfo(DTYPES[dtype]).max):.4g}): "
            "import with dtype float32"
        )
    n, d = out_feats.shape

    attrs: dict[str, Any] = {
        "slide_id": slide_id,
        "extractor": f"imported:{fmt}",
        "source_format": fmt,
        "source_path": str(src.resolve()),
        "source_sha256": sha256_file(src),
        "feature_dim": int(d),
        "n_patches": int(n),
        "dtype": dtype,
        "coords_available": bag.coords is not None,
        "wsimil_version": wsimil.__version__,
        "poisoned": False,
        **bag.extra_attrs,
    }
    size: int | None = None
    if bag.coords is None:
        size_reason = _NO_COORDS[fmt]
    elif patch_size_level0 is not None:
        size, size_reason = int(patch_size_level0), "imported_features.patch_size_level0"
        from_file, file_reason = patch_size_from_attrs(bag.geometry)
        if from_file is not None and from_file != size:
            log.warning("%s: patch_size_level0 %d given, the file says %d (%s); using %d",
                        src, size, from_file, file_reason, size)
            attrs["source_patch_size_level0"] = int(from_file)
    else:
        size, size_reason = patch_size_from_attrs(bag.geometry)
    if size is not None:
        attrs["level0_size"] = int(size)
        attrs["patch_size_level0_source"] = size_reason

    tf, label_attrs = patch_labels(bag.coords, size, size_reason, ann, int(label), fmt, n)
    attrs.update(label_attrs)

    out = Path(out)
    with atomic_path(out) as tmp:
        coords = bag.coords if bag.coords is not None else np.zeros((n, 2), dtype=np.int64)
        write_features(tmp, out_feats, coords, tf, attrs)
        if bag.coords is None:
            with h5py.File(tmp, "a") as f:
                del f["coords"]  # no positions: absent, not zeros (see the module docstring)
    summary = {"slide_id": slide_id, "n_patches": int(n), "feature_dim": int(d), "out": str(out),
               "coords_available": bag.coords is not None, "level0_size": size}
    summary.update(label_attrs)
    return summary
