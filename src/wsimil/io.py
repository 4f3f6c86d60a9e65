"""Small I/O helpers shared by every stage: atomic writes and checked identifiers."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import re
import tempfile
from pathlib import Path
from typing import Any, Iterator

SLIDE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_SLIDE_ID_RE = re.compile(SLIDE_ID_PATTERN)


class WsimilError(Exception):
    """An error caused by the user's input (file, config, sheet): the message says which and why."""


def check_slide_id(slide_id: str, source: str | os.PathLike | None = None) -> str:
    """Return ``slide_id`` if it is safe to use in a path or shell command, else raise ``WsimilError``."""
    if not isinstance(slide_id, str) or not _SLIDE_ID_RE.match(slide_id) or ".." in slide_id:
        where = f" in {source}" if source else ""
        raise WsimilError(
            f"invalid slide id {slide_id!r}{where}: ids must match {SLIDE_ID_PATTERN} "
            "(letters, digits, '_', '.', '-'; no path separators, no '..')"
        )
    return slide_id


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A crash leaves no half-written file under the final name, so Snakemake and reruns never mistake
    a partial output for a finished one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix + ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def copy_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy ``src`` to ``dst`` through a temporary file: ``dst`` is complete or absent."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
