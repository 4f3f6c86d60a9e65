"""Bounds on what a file from outside may declare, checked before anything is allocated.

Feature files, slides and sheets come from collaborators, public releases and downloads: a size a file declares
is a claim, not a fact. These limits (the config's ``limits:`` section, ``schemas/config.schema.yaml``) are well
above any real whole-slide image or feature file and well below what would exhaust a workstation:

- ``max_slide_side_px``: the largest level-0 side a slide may declare (250,000 px; a CAMELYON16 slide at 40x
  is at most ~220,000 x 100,000 px);
- ``max_h5_elements``: rows x dimension of one HDF5 dataset (2**29 = 536,870,912 values, 1 GiB of float16:
  a 200,000-patch slide with 2,560-d Virchow2 features fits);
- ``max_h5_chunk_bytes``: the decompressed size of one HDF5 chunk (64 MiB);
- ``max_h5_compression``: declared / stored bytes of a compressed dataset (50; features compress < 3x), checked
  for datasets that declare more than ``h5_compression_floor_bytes`` (64 MiB), so an all-zero tumour
  fraction or a regular coordinate grid, which compress far better, are never refused;
- ``follow_symlinks``: whether a file found by its name in a source folder (a features folder, an import
  folder) may be a symbolic link to somewhere outside that folder (false: refused, naming both).

The workflow passes its config's ``limits:`` to every job through the environment variable ``WSIMIL_LIMITS``
(JSON), which the command line also accepts as ``wsimil --limits JSON``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Any, Mapping

from wsimil.io import WsimilError

ENV = "WSIMIL_LIMITS"


@dataclass(frozen=True)
class Limits:
    max_slide_side_px: int = 250_000
    max_h5_elements: int = 2**29
    max_h5_chunk_bytes: int = 64 * 2**20
    max_h5_compression: float = 50.0
    h5_compression_floor_bytes: int = 64 * 2**20
    follow_symlinks: bool = False

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any] | None, where: str = "limits") -> "Limits":
        d = dict(d or {})
        names = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise WsimilError(f"{where}: unknown key(s) {unknown} (known: {sorted(names)})")
        kw: dict[str, Any] = {}
        for k, v in d.items():
            if v is None:
                continue
            if k == "follow_symlinks":
                if not isinstance(v, bool):
                    raise WsimilError(f"{where}: follow_symlinks must be true or false")
                kw[k] = v
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise WsimilError(f"{where}: {k} must be a positive number")
            kw[k] = float(v) if k == "max_h5_compression" else int(v)
        return cls(**kw)

    def expands_too_much(self, declared: int, stored: int) -> bool:
        """Whether ``declared`` bytes stored compressed in ``stored`` break ``max_h5_compression`` (above the floor)."""
        return declared > self.h5_compression_floor_bytes and declared > self.max_h5_compression * max(stored, 1)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


_override: Limits | None = None


def current() -> Limits:
    """The limits in force: those set with :func:`set_limits`, else ``$WSIMIL_LIMITS``, else the defaults."""
    if _override is not None:
        return _override
    return _from_env(os.environ.get(ENV) or "")


@lru_cache(maxsize=4)
def _from_env(raw: str) -> Limits:
    if not raw:
        return Limits()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        raise WsimilError(f"${ENV} is not valid JSON") from None
    if not isinstance(value, dict):
        raise WsimilError(f"${ENV} must be a JSON object")
    return Limits.from_mapping(value, f"${ENV}")


def set_limits(limits: Limits | Mapping[str, Any] | None) -> Limits:
    """Set the limits of this process (None: back to ``$WSIMIL_LIMITS`` / the defaults); returns them."""
    global _override
    _override = limits if isinstance(limits, Limits) or limits is None else Limits.from_mapping(limits)
    return current()
