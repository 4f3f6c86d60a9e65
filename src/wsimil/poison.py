"""Semi-synthetic poison (FocusMIL): "a specific green noise" in the pixels of chosen slides.

FocusMIL adds a poison signal to the *normal training* slides and to the *tumour test* slides, then re-extracts
the features. A model that learns "poison => normal" from training scores the poisoned tumour test slides as
normal and its test AUC collapses; a model that keeps to the standard MIL assumption (a bag is positive iff it
holds a positive instance) ignores a signal that never marks a positive instance. The paper does not say
whether the poison is applied to pixels or features, how many patches carry it, or how strong it is; here:

- **Where**: in pixel space, on the output patch (after reading and resizing, before the network's own
  preprocessing), so the poison travels through the real encoder like any stain artefact would.
- **What** (``apply_poison``): additive green noise. A noise field ``n = strength * 255 * |z|``, with ``z``
  i.i.d. standard normal per pixel (half-normal, mean ``0.80 * strength * 255``), is added to the green
  channel only; the result is clipped to [0, 255]. Red and blue are untouched. The poison therefore looks like
  a grainy green cast: a colour shift *and* a high-frequency texture, the same kind of signal on every poisoned
  patch of every slide, although the speckles differ from patch to patch. Non-negative noise is chosen over
  zero-mean noise so that the mark is "green" (zero-mean noise on G alone would read as green/magenta speckle
  with no net tint) and survives clipping on bright, near-white pixels only partially.
- **How many** (``poisoned_patch_mask``): in each poisoned slide a random subset of exactly
  ``floor(fraction * N + 0.5)`` of its N patches (rounded half up; at least one when ``fraction > 0``).
- **Which slides** (``select_poisoned_slides``): by default the normal (label 0) slides of ``train`` and
  ``val`` and the tumour (label 1) slides of ``test``. ``val`` is held out of the training slides, as in
  CAMELYON16, so it carries the training distribution (poisoned normals) and model selection on it cannot see
  the shift.
- **Reproducible**: the subset is drawn from ``(seed, slide id)`` and each patch's noise from
  ``(seed, slide id, patch index)``, via a stable hash of the slide id (sha256, not Python's salted
  ``hash()``), so reruns, worker processes and machines agree bit for bit.

``strength`` (noise scale in units of the full 0–255 range) and ``fraction`` are the dose-response parameters.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from wsimil.io import WsimilError

DEFAULT_TARGETS: list[dict[str, list[Any]]] = [
    {"split": ["train", "val"], "label": [0]},
    {"split": ["test"], "label": [1]},
]

_MASK_STREAM = 0x6D61736B  # "mask": separates the patch-subset stream from the per-patch noise streams
_NOISE_STREAM = 0x6E6F6973  # "nois"


@dataclass(frozen=True)
class PoisonSpec:
    """``strength``: noise scale (x 255) added to G; ``fraction``: share of a poisoned slide's patches; ``seed``."""

    strength: float
    fraction: float
    seed: int = 0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.strength) and self.strength >= 0):
            raise WsimilError(f"poison strength must be a finite number >= 0, got {self.strength}")
        if not (0.0 <= self.fraction <= 1.0):
            raise WsimilError(f"poison fraction must be in [0, 1], got {self.fraction}")
        if int(self.seed) != self.seed or self.seed < 0:
            raise WsimilError(f"poison seed must be an integer >= 0, got {self.seed}")

    def attrs(self) -> dict[str, Any]:
        """Provenance attributes for a feature file."""
        return {"poison_strength": float(self.strength), "poison_fraction": float(self.fraction),
                "poison_seed": int(self.seed), "poison_kind": "green_halfnormal"}


def stable_hash(text: str) -> int:
    """A 64-bit hash of ``text`` that is the same in every process and on every machine."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def select_poisoned_slides(sheet, targets: Sequence[dict[str, Iterable[Any]]] | None = None) -> list[str]:
    """Slide ids (in sheet order) matched by any target; a target matches a row when, for each of its keys
    (sample-sheet columns such as ``split``, ``label``, ``center``), the row's value is in its list."""
    targets = DEFAULT_TARGETS if targets is None else targets
    if "slide_id" not in sheet.columns:
        raise WsimilError("sample sheet has no slide_id column")
    keep = np.zeros(len(sheet), dtype=bool)
    for t in targets:
        if not isinstance(t, dict) or not t:
            raise WsimilError(f"poison target must be a non-empty mapping of column -> values, got {t!r}")
        hit = np.ones(len(sheet), dtype=bool)
        for col, values in t.items():
            if col not in sheet.columns:
                raise WsimilError(f"poison target {t!r}: the sample sheet has no column {col!r}")
            if isinstance(values, (str, int)):
                values = [values]
            allowed = {_norm(v) for v in values}
            hit &= np.array([_norm(v) in allowed for v in sheet[col]], dtype=bool)
        keep |= hit
    return [str(s) for s in sheet["slide_id"][keep]]


def _norm(value: Any) -> str:
    """Compare sheet values and target values as text, with 0 == 0.0 == "0"."""
    if isinstance(value, (int, float, np.integer, np.floating)) and float(value).is_integer():
        return str(int(value))
    text = str(value).strip()
    try:
        f = float(text)
    except ValueError:
        return text
    return str(int(f)) if f.is_integer() else text


def n_poisoned(n_patches: int, fraction: float) -> int:
    """``floor(fraction * n + 0.5)``, at least 1 when ``fraction > 0`` and ``n > 0``."""
    if n_patches <= 0 or fraction <= 0:
        return 0
    return int(min(n_patches, max(1, np.floor(fraction * n_patches + 0.5))))


def poisoned_patch_mask(slide_id: str, n_patches: int, spec: PoisonSpec) -> np.ndarray:
    """(N,) bool: which patches of ``slide_id`` carry the poison; deterministic in (seed, slide id)."""
    mask = np.zeros(int(n_patches), dtype=bool)
    k = n_poisoned(int(n_patches), spec.fraction)
    if k:
        rng = np.random.default_rng([int(spec.seed), stable_hash(slide_id), _MASK_STREAM])
        mask[rng.choice(int(n_patches), size=k, replace=False)] = True
    return mask


def patch_rng(spec: PoisonSpec, slide_id: str, index: int) -> np.random.Generator:
    """The noise generator of patch ``index`` of ``slide_id`` (independent of read order and workers)."""
    return np.random.default_rng([int(spec.seed), stable_hash(slide_id), _NOISE_STREAM, int(index)])


def apply_poison(tile: np.ndarray, rng: np.random.Generator | int | Sequence[int], strength: float) -> np.ndarray:
    """Add the green noise to one (H, W, 3) uint8 RGB tile; returns a new uint8 tile (R and B unchanged)."""
    tile = np.asarray(tile)
    if tile.dtype != np.uint8 or tile.ndim != 3 or tile.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) tile, got {tile.shape} {tile.dtype}")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    noise = np.abs(rng.standard_normal(tile.shape[:2], dtype=np.float32)) * np.float32(strength * 255.0)
    out = tile.copy()
    out[..., 1] = np.clip(tile[..., 1].astype(np.float32) + noise, 0, 255).round().astype(np.uint8)
    return out
