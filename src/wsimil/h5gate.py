"""The one gate every HDF5 file from outside passes before a byte of it is read into memory.

HDF5 can make a file read other files: external links (``h5py.ExternalLink``), virtual datasets whose
sources are other files, and datasets whose raw data is stored in external files (``H5Pset_external``).
h5py follows all three by default, so a 7 KB feature file could make wsimil read ``/etc/shadow`` into its
results. A file may also *declare* a dataset far larger than itself (an unallocated dataset reads as its fill
value; a gzip-compressed run of zeros expands a thousandfold), and readers allocate what the declaration says.

:func:`open_h5` opens a file read-only and walks it **without following any link**; it refuses, naming the
file and the object:

- any link but a hard link inside the file (soft links and external links), and hard-link cycles;
- virtual datasets and datasets with external raw storage;
- a dataset that declares more than ``limits.max_h5_elements`` values, a chunk larger than
  ``limits.max_h5_chunk_bytes`` decompressed, an uncompressed dataset whose declared bytes the file does not
  hold, or a compressed one that declares more than ``limits.max_h5_compression`` times what it stores (above
  ``limits.h5_compression_floor_bytes``);
- more than 10,000 objects, attributes over 1 MiB, or more than 1,000 attributes on one object.

It is cheap: it reads only object headers (a feature file has three datasets). Limits: :mod:`wsimil.limits`.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from wsimil.io import WsimilError, check_input_file, excerpt
from wsimil.limits import Limits, current

MAX_OBJECTS = 10_000
MAX_ATTRS = 1_000
MAX_ATTR_BYTES = 2**20


def _layout_name(layout: int) -> str:
    return {h5py.h5d.COMPACT: "compact", h5py.h5d.CONTIGUOUS: "contiguous", h5py.h5d.CHUNKED: "chunked",
            getattr(h5py.h5d, "VIRTUAL", -99): "virtual"}.get(layout, f"layout {layout}")


def _check_attrs(obj: h5py.HLObject, where: str, path: Path) -> None:
    n = h5py.h5a.get_num_attrs(obj.id)
    if n > MAX_ATTRS:
        raise WsimilError(f"{path}: {where} has {n} attributes (at most {MAX_ATTRS}): refused")
    for i in range(n):
        aid = h5py.h5a.open(obj.id, index=i)  # the attribute's header only: its value is not read
        values = int(np.prod(aid.shape, dtype=np.float64)) if aid.shape else 1
        size, declared = int(aid.get_storage_size()), values * max(aid.dtype.itemsize, 1)
        if max(size, declared) > MAX_ATTR_BYTES:
            raise WsimilError(f"{path}: an attribute of {where} declares {declared:,} bytes "
                              f"(at most {MAX_ATTR_BYTES:,}): refused")


def _check_dataset(d: h5py.Dataset, where: str, path: Path, file_size: int, lim: Limits) -> None:
    plist = d.id.get_create_plist()
    layout = plist.get_layout()
    if layout == getattr(h5py.h5d, "VIRTUAL", -99):
        raise WsimilError(f"{path}: dataset {where} is a virtual dataset (its data lives in other files): refused; "
                          "a feature file must hold its own data")
    if plist.get_external_count() > 0:
        raise WsimilError(f"{path}: dataset {where} stores its raw data in external storage (another file): refused; "
                          "a feature file must hold its own data")
    shape = d.shape or ()
    if d.dtype.kind in "OV" and h5py.check_dtype(ref=d.dtype) is not None:
        raise WsimilError(f"{path}: dataset {where} holds object references: refused")
    values = int(np.prod(shape, dtype=np.float64)) if shape else 1
    if values > lim.max_h5_elements:
        raise WsimilError(
            f"{path}: dataset {where} declares shape {tuple(shape)} ({values:,} values), over the limit of "
            f"{lim.max_h5_elements:,} (limits.max_h5_elements): refused before reading"
        )
    itemsize = max(int(d.dtype.itemsize), 1)
    declared = values * itemsize
    stored = int(d.id.get_storage_size())
    n_filters = plist.get_nfilters() if layout == h5py.h5d.CHUNKED else 0
    if layout == h5py.h5d.CHUNKED and d.chunks is not None:
        chunk = int(np.prod(d.chunks, dtype=np.float64)) * itemsize
        if chunk > lim.max_h5_chunk_bytes:
            raise WsimilError(f"{path}: dataset {where} has chunks of {chunk:,} bytes decompressed, over the limit "
                              f"of {lim.max_h5_chunk_bytes:,} (limits.max_h5_chunk_bytes): refused")
    if stored > file_size:
        raise WsimilError(f"{path}: dataset {where} claims {stored:,} bytes of storage, more than the file's "
                          f"{file_size:,} bytes (a cut or forged file): refused")
    if layout == h5py.h5d.CONTIGUOUS and stored:
        offset = d.id.get_offset()
        if offset is not None and offset + stored > file_size:
            raise WsimilError(f"{path}: dataset {where}'s data would end at byte {offset + stored:,}, past the end "
                              f"of the file ({file_size:,} bytes): the file is truncated")
    if d.dtype.kind not in "fiub" or declared == 0:
        return
    if n_filters == 0 and layout != h5py.h5d.COMPACT and stored < declared:
        raise WsimilError(
            f"{path}: dataset {where} declares {declared:,} bytes ({tuple(shape)} {d.dtype}) but the file holds "
            f"{stored:,} of them: refused (the rest would read as fill values)"
        )
    if n_filters and lim.expands_too_much(declared, stored):
        raise WsimilError(
            f"{path}: dataset {where} declares {declared:,} bytes stored compressed in {stored:,} "
            f"({declared / max(stored, 1):,.0f}x, over the limit of {lim.max_h5_compression:g}x, "
            "limits.max_h5_compression): refused before decompressing"
        )


def check_h5(f: h5py.File, path: str | os.PathLike, limits: Limits | None = None) -> None:
    """Walk every object of the open file ``f`` without following links; raise :class:`WsimilError` (naming
    ``path`` and the object) on anything listed in the module docstring."""
    path = Path(path)
    lim = limits or current()
    file_size = os.path.getsize(path)
    seen: set[tuple[int, int]] = set()
    count = 0
    stack: list[tuple[h5py.Group, str]] = [(f, "/")]
    _check_attrs(f, "the root group", path)
    while stack:
        group, gname = stack.pop()
        for name in group.id.__iter__():  # link names only: nothing is resolved
            name_s = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
            where = excerpt(gname.rstrip("/") + "/" + name_s, 80)
            link = group.get(name_s, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                raise WsimilError(f"{path}: {where} is an external link to another file: refused; a feature file "
                                  "must hold its own data (no external links, virtual datasets or external storage)")
            if isinstance(link, h5py.SoftLink):
                raise WsimilError(f"{path}: {where} is a soft link: refused (only hard links inside the file are "
                                  "read)")
            if not isinstance(link, h5py.HardLink):
                raise WsimilError(f"{path}: {where} is a link of an unknown kind: refused")
            count += 1
            if count > MAX_OBJECTS:
                raise WsimilError(f"{path}: more than {MAX_OBJECTS:,} objects: refused")
            obj = group[name_s]
            info = h5py.h5o.get_info(obj.id)
            key = (info.fileno, info.addr)
            if key in seen:
                if isinstance(obj, h5py.Group):
                    raise WsimilError(f"{path}: group {where} is linked more than once (a cycle): refused")
                continue
            seen.add(key)
            _check_attrs(obj, where, path)
            if isinstance(obj, h5py.Group):
                stack.append((obj, gname.rstrip("/") + "/" + name_s))
            elif isinstance(obj, h5py.Dataset):
                _check_dataset(obj, where, path, file_size, lim)
            else:
                raise WsimilError(f"{path}: {where} is a committed datatype, not a group or dataset: refused")


def dataset(f: h5py.Group, name: str, path: str | os.PathLike) -> h5py.Dataset:
    """``f[name]`` when it is a dataset; a :class:`WsimilError` naming the file when it is missing or a group."""
    if name not in f:
        raise WsimilError(f"{path}: no {excerpt(name)} dataset (found {[excerpt(k) for k in list(f.keys())[:10]]})")
    obj = f[name]
    if not isinstance(obj, h5py.Dataset):
        raise WsimilError(f"{path}: {excerpt(name)} is a group, not a dataset")
    return obj


@contextmanager
def open_h5(path: str | os.PathLike, what: str = "feature file") -> Iterator[h5py.File]:
    """Open an HDF5 file from outside read-only, after :func:`check_h5`; a missing, non-regular, unreadable or
    refused file is a :class:`WsimilError` naming it."""
    path = check_input_file(path, what)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise WsimilError(f"cannot read {what} {path}: not an HDF5 file, or a damaged one "
                          f"({type(exc).__name__})") from None
    try:
        check_h5(f, path)
        yield f
    except OSError as exc:
        raise WsimilError(f"cannot read {what} {path}: {exc}") from exc
    finally:
        f.close()
