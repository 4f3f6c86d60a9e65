"""The per-slide HDF5 feature file (CLAM/TRIDENT-compatible) and the per-slide patch file.

Feature file ``<dir>/<slide_id>.h5``: ``features`` (N, D) float16/float32, ``coords`` (N, 2) int level-0
top-left, optional ``tumor_fraction`` (N,) float32; provenance in attributes. A CLAM ``h5_files/`` file
(``features`` + ``coords`` only) reads as is.

Patch file ``<dir>/<slide_id>.h5``: ``coords`` (N, 2) and ``tumor_fraction`` (N,), with the attributes of
:class:`PatchSpec` that say how to read each patch back from the slide.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from wsimil.h5gate import dataset, open_h5
from wsimil.io import WsimilError, atomic_path, check_slide_id, check_within, excerpt


@dataclass
class PatchSpec:
    """How the patches of one slide are read: ``read_size`` px at pyramid ``level``, resized to ``patch_size``."""

    slide_id: str
    patch_size: int  # output px at target_mpp
    target_mpp: float
    level: int
    read_size: int
    level0_size: int  # patch side in level-0 px (coords step)
    mpp_level0: float


@dataclass
class PatchSet:
    coords: np.ndarray  # (N, 2) int64 level-0 top-left
    tumor_fraction: np.ndarray | None  # (N,) float32 or None (no annotation known)
    spec: PatchSpec
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class FeatureBag:
    features: np.ndarray  # (N, D)
    coords: np.ndarray  # (N, 2)
    tumor_fraction: np.ndarray | None  # (N,) or None
    attrs: dict[str, Any]


def feature_path(features: str | os.PathLike, slide_id: str) -> Path:
    """A slide's feature file in ``features``: a folder (``<folder>/<slide_id>.h5``, refused when a symbolic link
    takes it outside the folder unless ``limits.follow_symlinks``) or a feature manifest (:func:`write_manifest`:
    the file it lists for the slide)."""
    features = Path(features)
    if features.suffix == MANIFEST_SUFFIX and not features.is_dir():
        listed = read_manifest(features)
        sid = check_slide_id(slide_id)
        if sid not in listed:
            raise WsimilError(f"feature manifest {features}: no row for slide {excerpt(sid)}")
        line, rel, file, size = listed[sid]
        actual = file.stat().st_size if file.is_file() else None
        if actual != size:  # checked on every lookup: a file may go after the manifest was read
            state = "missing" if actual is None else f"{actual} bytes, not the {size} it lists"
            raise WsimilError(f"feature manifest {features}, line {line}: {excerpt(rel)} is {state}: the manifest is "
                              "stale (rerun the workflow, which rewrites it)")
        return file
    return check_within(features / f"{check_slide_id(slide_id)}.h5", features, "feature file")


MANIFEST_SUFFIX = ".tsv"
MANIFEST_HEADER = ("slide_id", "path", "bytes")
MAX_MANIFEST_BYTES = 64 * 2**20  # ~500,000 rows


def write_manifest(paths: Mapping[str, str | os.PathLike], out: str | os.PathLike) -> Path:
    """One file standing for a set of feature files: tab-separated ``slide_id``, ``path`` (relative to the
    manifest's folder) and ``bytes``, one row per slide in the order given.

    The workflow's training, scoring, evaluation, GeoJSON and report jobs read a cell's features through this file
    (``--features <manifest>``): Snakemake then resolves each feature file once per cell rather than once per job,
    which keeps planning a large cohort linear in its slides (benchmarks/planning.py), and a cell may take a slide's
    file from another folder (a poison level lists the clean file of every slide the poison does not target, so
    that no copy is made). It is rewritten whenever a feature file is, so the jobs downstream rerun when one
    changes; a file whose size no longer matches its row is refused when read."""
    from wsimil.io import write_text_atomic

    out = Path(out)
    lines = ["\t".join(MANIFEST_HEADER)]
    for sid, p in paths.items():
        p = Path(p)
        if not p.is_file():
            raise WsimilError(f"feature file not found: {p}")
        rel = os.path.relpath(p, out.parent)
        lines.append(f"{check_slide_id(sid)}\t{rel}\t{p.stat().st_size}")
    write_text_atomic(out, "\n".join(lines) + "\n")
    return out


_MANIFESTS: dict[tuple[str, int, int], dict[str, tuple[int, str, Path, int]]] = {}


def read_manifest(path: str | os.PathLike) -> dict[str, tuple[int, str, Path, int]]:
    """Slide id -> (line, listed path, feature file, bytes) of a manifest (:func:`write_manifest`), each path
    checked: relative to the manifest, inside the folder above the manifest's (a results folder; symbolic links
    followed only under ``limits.follow_symlinks``). Read once per process and manifest version;
    :func:`feature_path` checks each file's size when it is looked up."""
    from wsimil.io import check_input_file, read_error

    path = check_input_file(path, "feature manifest")
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key in _MANIFESTS:
        return _MANIFESTS[key]
    if st.st_size > MAX_MANIFEST_BYTES:
        raise WsimilError(f"feature manifest {path}: {st.st_size} bytes, more than {MAX_MANIFEST_BYTES}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise WsimilError(f"feature manifest {path}: {read_error(exc)}") from None
    rows = text.splitlines()
    if not rows or tuple(rows[0].split("\t")) != MANIFEST_HEADER:
        raise WsimilError(f"feature manifest {path}: the first line must be the columns {', '.join(MANIFEST_HEADER)}")
    root, listed = path.parent.parent, {}
    for i, row in enumerate(rows[1:], start=2):
        cells = row.split("\t")
        if len(cells) != 3 or not cells[2].isdigit():
            raise WsimilError(f"feature manifest {path}, line {i}: expected slide_id, path, bytes")
        sid, rel, size = check_slide_id(cells[0]), cells[1], int(cells[2])
        if os.path.isabs(rel) or not rel.endswith(".h5"):
            raise WsimilError(f"feature manifest {path}, line {i}: the path must be a relative .h5 path")
        if sid in listed:
            raise WsimilError(f"feature manifest {path}, line {i}: slide {excerpt(sid)} listed twice")
        lexical = os.path.normpath(path.parent / rel)
        if not lexical.startswith(os.path.normpath(root).rstrip(os.sep) + os.sep):
            raise WsimilError(f"feature manifest {path}, line {i}: the path leaves {root}, the folder above the "
                              "manifest's")
        listed[sid] = (i, rel, check_within(path.parent / rel, root, "feature file"), size)
    _MANIFESTS[key] = listed
    return listed


def _attr(v: Any) -> Any:
    return v.decode() if isinstance(v, bytes) else (v.item() if isinstance(v, np.generic) else v)


def write_patches(path: str | os.PathLike, patches: PatchSet) -> None:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("coords", data=np.asarray(patches.coords, dtype=np.int64).reshape(-1, 2))
        if patches.tumor_fraction is not None:
            f.create_dataset("tumor_fraction", data=np.asarray(patches.tumor_fraction, dtype=np.float32))
        for k, v in {**asdict(patches.spec), **patches.attrs}.items():
            f["coords"].attrs[k] = v
            f.attrs[k] = v


def read_patches(path: str | os.PathLike) -> PatchSet:
    path = Path(path)
    try:
        with open_h5(path, "patch file") as f:
            coords = dataset(f, "coords", path)[:]
            tf = dataset(f, "tumor_fraction", path)[:] if "tumor_fraction" in f else None
            attrs = {k: _attr(v) for k, v in f.attrs.items()}
    except KeyError as exc:
        raise WsimilError(f"cannot read patch file {path}: {exc}") from exc
    names = PatchSpec.__dataclass_fields__
    spec = PatchSpec(**{k: attrs[k] for k in names})
    extra = {k: v for k, v in attrs.items() if k not in names}
    return PatchSet(coords=coords, tumor_fraction=tf, spec=spec, attrs=extra)


def write_features(
    path: str | os.PathLike,
    features: np.ndarray,
    coords: np.ndarray,
    tumor_fraction: np.ndarray | None = None,
    attrs: dict[str, Any] | None = None,
) -> None:
    """Write one slide's feature file atomically."""
    features = np.asarray(features)
    if features.ndim != 2 or len(features) != len(coords):
        raise ValueError(f"features {features.shape} and coords {np.shape(coords)} disagree")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("features", data=features)
        f.create_dataset("coords", data=np.asarray(coords, dtype=np.int64).reshape(-1, 2))
        if tumor_fraction is not None:
            f.create_dataset("tumor_fraction", data=np.asarray(tumor_fraction, dtype=np.float32))
        for k, v in (attrs or {}).items():
            f.attrs[k] = v


def check_same_dimension(dims: Mapping[str, int]) -> None:
    """Every feature file of a dataset has one dimension: otherwise an error naming the odd files out against
    the majority's dimension (not against whichever file happened to be read first)."""
    from collections import Counter

    counts = Counter(dims.values())
    if len(counts) <= 1:
        return
    major, n_major = counts.most_common(1)[0]
    odd = [f"{name} ({d})" for name, d in dims.items() if d != major]
    raise WsimilError(f"feature dimension differs: {n_major} of {len(dims)} files are {major}-d, but "
                      f"{', '.join(odd[:10])}{' ...' if len(odd) > 10 else ''}")


def feature_shape(path: str | os.PathLike) -> tuple[int, int, np.dtype]:
    """``(N, D, dtype)`` of a feature file's ``features``, without reading them (N may be 0)."""
    with open_h5(path) as f:
        return _shape(f, path)


def _shape(f: h5py.File, path: str | os.PathLike) -> tuple[int, int, np.dtype]:
    """:func:`feature_shape` on an open (gated) file."""
    dset = dataset(f, "features", path)
    shape, dtype = dset.shape, dset.dtype
    if len(shape) == 3 and shape[0] == 1:  # some CLAM exports keep a leading batch axis
        shape = shape[1:]
    if len(shape) != 2 or dtype.kind != "f":
        raise WsimilError(f"{path}: 'features' must be a float (N, D) array, got {dtype} {shape}")
    return int(shape[0]), int(shape[1]), dtype


def read_features_into(path: str | os.PathLike, out: np.ndarray) -> None:
    """Read the ``features`` of ``path`` straight into ``out`` (N, D) (converting the dtype on the way,
    no temporary copy) and check that every value is finite."""
    path = Path(path)
    with open_h5(path) as f:
        _read_into(f, path, out)


def _read_into(f: h5py.File, path: Path, out: np.ndarray) -> None:
    """:func:`read_features_into` on an open (gated) file."""
    try:
        dset = dataset(f, "features", path)
        want = (1, *out.shape) if dset.ndim == 3 else out.shape
        if dset.shape != want:
            raise WsimilError(f"{path}: 'features' is {dset.shape}, expected {want} (the file changed?)")
        dset.read_direct(out, source_sel=np.s_[0] if dset.ndim == 3 else None)
    except (OSError, TypeError, ValueError, KeyError) as exc:
        raise WsimilError(f"cannot read feature file {path}: {exc}") from exc
    # a float64 sum is finite iff every value is (no overflow from float16/32 inputs) and allocates nothing
    if not np.isfinite(out.sum(dtype=np.float64)):
        raise WsimilError(f"{path}: features contain NaN or infinite values")


def read_features(path: str | os.PathLike, expected_dim: int | None = None) -> FeatureBag:
    """Read and check one feature file: a clear error names the file for a missing dataset, NaNs or a wrong dimension."""
    path = Path(path)
    with open_h5(path) as f:  # one open: the gate walks the file once
        n, d, dtype = _shape(f, path)
        if n == 0:
            raise WsimilError(f"{path}: 'features' must be (N>0, D), got (0, {d})")
        if expected_dim is not None and d != expected_dim:
            raise WsimilError(f"{path}: feature dimension {d}, expected {expected_dim} like the other slides")
        feats = np.empty((n, d), dtype=dtype)
        _read_into(f, path, feats)
        for name, want in (("coords", (n, 2)), ("tumor_fraction", (n,))):  # checked before they are read
            if name in f and dataset(f, name, path).shape != want:
                raise WsimilError(f"{path}: '{name}' is {f[name].shape}, expected {want} for {n} patches")
        coords = f["coords"][:] if "coords" in f else np.zeros((n, 2), dtype=np.int64)
        tf = f["tumor_fraction"][:] if "tumor_fraction" in f else None
        attrs = {k: _attr(v) for k, v in f.attrs.items()}
    return FeatureBag(features=feats, coords=coords, tumor_fraction=tf, attrs=attrs)
