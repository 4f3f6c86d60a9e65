"""Batched feature extraction for one slide: patch file + slide -> feature file.

Reader workers (a torch ``DataLoader``; each opens the slide itself) read and resize the patches of one batch
while the main process runs the network on the previous one. Poison, when asked for, is added to the pixels of
the selected patches inside the reader, before the network's preprocessing. A patch that cannot be read is never
replaced by a blank one: every failed read is counted and the slide fails with an error naming the patches.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

import wsimil
from wsimil import precision as precision_mod
from wsimil.features.extractors import Extractor, resolve_device
from wsimil.features.store import PatchSpec, read_patches, write_features
from wsimil.h5gate import open_h5
from wsimil.io import WsimilError, atomic_path, check_slide_id
from wsimil.poison import PoisonSpec, apply_poison, patch_rng, poisoned_patch_mask
from wsimil.slides.reader import Backend, open_slide

DTYPES = {"float16": np.float16, "float32": np.float32}


def resolve_extraction_precision(precision: str, device: str | torch.device) -> str:
    """``features.precision`` (``fp32`` | ``bf16`` | ``auto``) -> ``fp32`` | ``bf16`` for ``device``, by the
    training loop's rule (:func:`wsimil.precision.resolve_precision`): ``auto`` is bf16 where the device runs
    bfloat16 natively (CPUs with AVX512-BF16 or AMX, CUDA GPUs with bf16), else fp32; an explicit ``bf16``
    without native support is kept (emulated, with a warning)."""
    try:
        return precision_mod.resolve_precision(str(precision), str(torch.device(device)))
    except ValueError as exc:
        raise WsimilError(f"features precision must be fp32, bf16 or auto, got {precision!r}") from exc


def magnification_for_mpp(mpp: float) -> float:
    """Nominal objective magnification by the usual convention 20x = 0.5 um/px (10 / mpp), 2 decimals."""
    return round(10.0 / float(mpp), 2)


class PatchBatches(Dataset):
    """Item ``b`` is batch ``b`` of the slide's patches: ``(indices, tiles (B, S, S, 3) uint8, failures)``.

    The slide is opened lazily in whichever process reads, so each DataLoader worker has its own handle.
    ``failures`` lists ``(index, message)``; a failed patch's pixels are zeros and must never be used.
    """

    def __init__(
        self,
        slide_path: str | os.PathLike,
        coords: np.ndarray,
        spec: PatchSpec,
        batch_size: int,
        backend: Backend = "auto",
        poison: PoisonSpec | None = None,
        poison_mask: np.ndarray | None = None,
        slide_id: str = "",
        indices: np.ndarray | None = None,
    ):
        self.slide_path = str(slide_path)
        self.coords = np.asarray(coords, dtype=np.int64)
        # the patches to read (positions in ``coords``; default all): a poisoned re-extraction reads only the
        # poisoned ones
        self.indices = np.arange(len(self.coords)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.spec = spec
        self.batch_size = int(batch_size)
        self.backend = backend
        self.poison = poison
        self.poison_mask = poison_mask
        self.slide_id = slide_id
        self._slide = None

    def __len__(self) -> int:
        return (len(self.indices) + self.batch_size - 1) // self.batch_size

    def _open(self):
        if self._slide is None:
            self._slide = open_slide(self.slide_path, backend=self.backend)
        return self._slide

    def close(self) -> None:
        if self._slide is not None:
            self._slide.close()
            self._slide = None

    def read_tile(self, index: int) -> np.ndarray:
        spec = self.spec
        x, y = self.coords[index]
        tile = self._open().read_region((int(x), int(y)), spec.level, (spec.read_size, spec.read_size))
        if tile.shape != (spec.read_size, spec.read_size, 3) or tile.dtype != np.uint8:
            raise WsimilError(f"read {tile.shape} {tile.dtype}, expected ({spec.read_size}, {spec.read_size}, 3) uint8")
        if spec.read_size != spec.patch_size:
            tile = cv2.resize(tile, (spec.patch_size, spec.patch_size), interpolation=cv2.INTER_AREA)
        if self.poison is not None and self.poison_mask is not None and self.poison_mask[index]:
            tile = apply_poison(tile, patch_rng(self.poison, self.slide_id, index), self.poison.strength)
        return tile

    def __getitem__(self, b: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
        start = b * self.batch_size
        idx = self.indices[start:start + self.batch_size]
        ps = self.spec.patch_size
        tiles = np.zeros((len(idx), ps, ps, 3), dtype=np.uint8)
        failures: list[tuple[int, str]] = []
        for j, i in enumerate(idx):
            try:
                tiles[j] = self.read_tile(int(i))
            except Exception as exc:  # any backend/codec error is a failed read, reported with its patch
                failures.append((int(i), f"{type(exc).__name__}: {exc}"))
                if "OpenSlideError" in type(exc).__name__:
                    self.close()  # an OpenSlide handle is unusable after an error; reopen for the next patch
        return idx, tiles, failures


def _clean_rows(path: Path, coords: np.ndarray, extractor: Extractor, dtype: str, precision: str) -> np.ndarray:
    """The features (N, D) of a clean feature file, checked to be of the same patches and network."""
    with open_h5(path, "clean feature file") as f:
        if "features" not in f or "coords" not in f:
            raise WsimilError(f"clean feature file {path}: no 'features' or 'coords' dataset")
        feats = np.asarray(f["features"][()], dtype=np.float32)
        same = np.array_equal(np.asarray(f["coords"][()]), coords)
        attrs = dict(f.attrs)
    want = {"extractor": extractor.name, "feature_dim": int(extractor.dim), "dtype": dtype, "precision": precision,
            "weights_sha256": extractor.weights_sha256 or ""}
    diff = {k: (attrs.get(k), v) for k, v in want.items() if str(attrs.get(k)) != str(v)}
    if not same or feats.shape != (len(coords), extractor.dim) or diff or attrs.get("poisoned"):
        raise WsimilError(f"clean feature file {path} does not match this extraction (same patches: {same}, "
                          f"shape {feats.shape}, differing attrs {diff}, poisoned {bool(attrs.get('poisoned'))}): "
                          "re-extract the clean features first")
    return feats


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # the network owns the cores; a reader needs one thread


@contextmanager
def _fork_safe_opencv():
    """Start reader workers with OpenCV's thread pool switched off in this process.

    A forked child inherits OpenCV's pool without its threads; resizing (or even ``cv2.setNumThreads``) there
    deadlocks (seen with DataLoader workers). With one thread the pool is never used, in the child either; the
    parent's setting is restored once the workers are running.
    """
    old = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(old)


def extract_slide(
    slide_path: str | os.PathLike,
    patch_file: str | os.PathLike,
    out_h5: str | os.PathLike,
    extractor: Extractor,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    num_threads: int | None = None,
    poison: PoisonSpec | None = None,
    slide_id: str | None = None,
    backend: Backend = "auto",
    progress: bool = True,
    num_workers: int = 1,
    dtype: str = "float16",
    precision: str = "fp32",
    clean_h5: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Extract the features of every patch in ``patch_file`` from ``slide_path`` and write ``out_h5``.

    ``device`` None uses the extractor's device (else the model is moved there); ``num_threads`` sets torch's
    intra-op threads for the call; ``num_workers`` reader processes (0: read in this process); ``poison``
    adds the green noise to the patches chosen by :func:`wsimil.poison.poisoned_patch_mask`. ``precision``
    (:func:`resolve_extraction_precision`): ``bf16`` runs the network under bfloat16 autocast, its outputs cast
    back to float32 before storing as ``dtype``; the resolved value is the feature file's ``precision`` attr.
    With ``poison`` and ``clean_h5`` (the slide's clean feature file, same patches, extractor, dtype and
    precision) only the poisoned patches are read and embedded; every other row is the clean file's (the poison
    does not touch those pixels), which halves the work at fraction 0.5. Returns a summary (n_patches, n_poisoned, seconds, tiles_per_s, precision). The output is written
    atomically; same inputs give identical features.
    """
    t0 = time.perf_counter()
    slide_path, patch_file = Path(slide_path), Path(patch_file)
    if dtype not in DTYPES:
        raise WsimilError(f"features dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if int(batch_size) < 1 or int(num_workers) < 0:
        raise WsimilError(f"batch_size must be >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
    patches = read_patches(patch_file)
    spec = patches.spec
    sid = check_slide_id(slide_id if slide_id is not None else spec.slide_id, patch_file)
    if slide_id is not None and spec.slide_id != slide_id:
        raise WsimilError(f"patch file {patch_file} belongs to slide {spec.slide_id!r}, not {slide_id!r}")
    n = len(patches.coords)
    if n == 0:
        raise WsimilError(f"patch file {patch_file} holds no patches for slide {sid}: nothing to extract")
    if not slide_path.is_file():
        raise WsimilError(f"slide file not found: {slide_path} (slide {sid})")
    if device is not None:
        dev = resolve_device(device)
        if dev != extractor.device:
            extractor.model.to(dev)
            extractor.device = dev
    precision = resolve_extraction_precision(precision, extractor.device)
    mask = poisoned_patch_mask(sid, n, poison) if poison is not None else None
    feats = np.zeros((n, extractor.dim), dtype=np.float32)
    indices = None
    if mask is not None and clean_h5 is not None:
        feats[~mask] = _clean_rows(Path(clean_h5), patches.coords, extractor, dtype, precision)[~mask]
        indices = np.flatnonzero(mask)

    data = PatchBatches(slide_path, patches.coords, spec, batch_size, backend, poison, mask, sid, indices)
    loader = DataLoader(
        data,
        batch_size=None,
        shuffle=False,
        num_workers=int(num_workers),
        worker_init_fn=_worker_init if num_workers else None,
        pin_memory=extractor.device.type == "cuda",
        prefetch_factor=4 if num_workers else None,
    )
    old_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    failures: list[tuple[int, str]] = []
    try:
        with torch.inference_mode(), tqdm(
            total=len(data.indices), unit="tile", desc=f"features {sid}", disable=not progress, dynamic_ncols=True
        ) as bar:
            with _fork_safe_opencv():
                batches = iter(loader)  # the workers start here
            for idx, tiles, failed in batches:
                idx = np.asarray(idx)
                if failed:
                    failures += [(int(i), str(m)) for i, m in failed]
                if not failures:  # once a read failed the slide fails: keep reading only to count failures
                    with torch.autocast(extractor.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                        emb = extractor.embed(tiles)
                    feats[idx] = emb.float().numpy()
                bar.update(len(idx))
    finally:
        data.close()
        torch.set_num_threads(old_threads)
    if failures:
        failures.sort()
        shown = "; ".join(f"patch {i} at ({patches.coords[i][0]}, {patches.coords[i][1]}): {m}" for i, m in failures[:5])
        raise WsimilError(
            f"slide {sid} ({slide_path}): {len(failures)} of {n} patches could not be read "
            f"(level {spec.level}, {spec.read_size} px): {shown}{' ...' if len(failures) > 5 else ''}. "
            "The slide file may be truncated or corrupt; no feature file was written."
        )
    out = feats.astype(DTYPES[dtype])
    if not np.isfinite(out).all():
        bad = np.flatnonzero(~np.isfinite(out).all(axis=1))
        raise WsimilError(f"slide {sid}: non-finite features for {len(bad)} patches (first {bad[:5].tolist()}) in {dtype}")

    attrs: dict[str, Any] = {
        "slide_id": sid,
        "extractor": extractor.name,
        "feature_dim": int(extractor.dim),
        "weights": Path(extractor.weights_path).name if extractor.weights_path else "random-init",
        "weights_sha256": extractor.weights_sha256 or "",
        "input_size": int(extractor.input_size or spec.patch_size),
        "patch_size": int(spec.patch_size),
        "target_mpp": float(spec.target_mpp),
        "mpp": float(spec.target_mpp),
        "mpp_level0": float(spec.mpp_level0),
        "magnification": magnification_for_mpp(spec.target_mpp),
        "level": int(spec.level),
        "read_size": int(spec.read_size),
        "level0_size": int(spec.level0_size),
        "dtype": dtype,
        "precision": precision,
        "device": precision_mod.describe_device(extractor.device),
        "wsimil_version": wsimil.__version__,
        "poisoned": poison is not None,
    }
    if poison is not None:
        attrs.update(poison.attrs())
        attrs["n_poisoned"] = int(mask.sum())
    out_h5 = Path(out_h5)
    with atomic_path(out_h5) as tmp:
        write_features(tmp, out, patches.coords, patches.tumor_fraction, attrs)
        if mask is not None:
            with h5py.File(tmp, "a") as f:
                f.create_dataset("poisoned", data=mask)
    seconds = time.perf_counter() - t0
    return {
        "slide_id": sid,
        "n_patches": n,
        "n_poisoned": int(mask.sum()) if mask is not None else 0,
        "seconds": seconds,
        "tiles_per_s": n / seconds if seconds > 0 else float("inf"),
        "precision": precision,
    }
