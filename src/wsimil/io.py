"""Small I/O helpers shared by every stage: atomic writes and checked identifiers."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

# matched whole (re.fullmatch): "$" alone would let a trailing newline through
SLIDE_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
_SLIDE_ID_RE = re.compile(SLIDE_ID_PATTERN)


class WsimilError(Exception):
    """An error caused by the user's input (file, config, sheet): the message says which and why."""


def check_slide_id(slide_id: str, source: str | os.PathLike | None = None) -> str:
    """Return ``slide_id`` if it is safe to use in a path or shell command, else raise ``WsimilError``."""
    if not isinstance(slide_id, str) or not _SLIDE_ID_RE.fullmatch(slide_id) or ".." in slide_id:
        where = f" in {source}" if source else ""
        raise WsimilError(
            f"invalid slide id {excerpt(slide_id)}{where}: ids must match {SLIDE_ID_PATTERN} in full "
            "(letters, digits, '_', '.', '-'; no path separators, no '..')"
        )
    return slide_id


def excerpt(value: Any, limit: int = 40) -> str:
    """A short, escaped quotation of a value from a file or a user (never more than ``limit`` characters of it):
    control characters and non-ASCII letters are escaped (``repr``), a longer value is cut and its length said."""
    if not isinstance(value, str):  # a number, a list: shown as is, cut to the limit
        text = ascii(value)
        return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
    if len(value) <= limit:
        return ascii(value)
    return f"{ascii(value[:limit])}... ({len(value)} characters)"


def read_error(exc: BaseException) -> str:
    """What went wrong reading a text file, in words that quote none of it: a decoding error gives the byte's
    position, a CSV parser error its (structural) message cut short, anything else only its type."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte {exc.start})"
    if type(exc).__name__ in ("ParserError", "EmptyDataError"):  # pandas' C tokenizer says where, not what
        return excerpt(str(exc).strip(), 120)
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__


def schema_message(err: Any) -> str:
    """A jsonschema error's message with the offending value quoted by :func:`excerpt` (jsonschema quotes it
    whole: a 10,000-character id would be echoed in full)."""
    inst = err.instance
    if err.validator == "pattern":
        return f"{excerpt(inst)} does not match the pattern {err.validator_value}"
    if err.validator == "enum":
        return f"{excerpt(inst)} is not one of {err.validator_value}"
    msg = err.message
    if isinstance(inst, (str, int, float)) and not isinstance(inst, bool):
        msg = msg.replace(repr(inst), excerpt(inst))
    return msg if len(msg) <= 300 else msg[:300] + "..."


def file_kind(path: str | os.PathLike) -> str | None:
    """None for a regular file (after symbolic links); otherwise what ``path`` is, in words."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "a broken symbolic link" if os.path.islink(path) else "missing"
    except NotADirectoryError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return None
    for test, what in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a regular file"


def check_input_file(path: str | os.PathLike, what: str = "file", hint: str = "") -> Path:
    """``path`` if it is a regular file; else a :class:`WsimilError` saying what it is (missing, a folder, a FIFO,
    a device), with ``hint`` appended."""
    path = Path(path)
    kind = file_kind(path)
    if kind is None:
        return path
    if kind == "missing":
        raise WsimilError(f"{what} not found: {path}{hint}")
    raise WsimilError(f"{what} {path} is {kind}, not a regular file{hint}")


_FOLLOWED: set[tuple[str, str]] = set()  # links already reported in this process


def check_within(path: str | os.PathLike, folder: str | os.PathLike, what: str = "file") -> Path:
    """Refuse ``path`` (found in ``folder``) when symbolic links take it outside ``folder``, unless the limits
    allow it (``limits.follow_symlinks``; then a warning names both). Returns ``path``."""
    import logging

    path, folder = Path(path), Path(folder)
    real, base = os.path.realpath(path), os.path.realpath(folder)
    if real == base or real.startswith(base.rstrip(os.sep) + os.sep):
        return path
    from wsimil.limits import current

    if current().follow_symlinks:
        if (real, base) in _FOLLOWED:
            return path
        _FOLLOWED.add((real, base))
        logging.getLogger(__name__).warning("%s %s is a symbolic link to %s, outside %s (followed: "
                                            "limits.follow_symlinks)", what, path, real, folder)
        return path
    raise WsimilError(f"{what} {path} is a symbolic link to {real}, outside its folder {folder}: refused "
                      "(copy the file into the folder, or set limits.follow_symlinks: true to follow such links)")


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def plain_mode(folder: bool = False) -> int:
    """The permissions a plain ``open(path, "w")`` (or ``mkdir``) would give under the current umask."""
    return (0o777 if folder else 0o666) & ~_umask()


CSV_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula (leading ``= + - @``, tab or carriage return) gets a
    leading apostrophe, as OWASP's CSV-injection advice and spreadsheet-safe exporters do; numbers (also as text,
    such as ``-0.5``) and other values are returned unchanged."""
    if not isinstance(value, str) or not value.startswith(CSV_FORMULA_START):
        return value
    try:
        float(value)
        return value
    except ValueError:
        return "'" + value


def spreadsheet_safe_frame(df: Any) -> Any:
    """A copy of the DataFrame ``df`` with its text cells and column names made :func:`spreadsheet_safe`."""
    import pandas as pd

    safe = df.copy()
    for col in safe.columns:
        if safe[col].dtype == object or pd.api.types.is_string_dtype(safe[col]):
            safe[col] = safe[col].map(spreadsheet_safe)
    safe.columns = [spreadsheet_safe(c) for c in safe.columns]
    return safe


def write_csv_atomic(df: Any, path: str | os.PathLike, **kwargs: Any) -> None:
    """Write a pandas DataFrame as CSV atomically, its text cells spreadsheet-safe (:func:`spreadsheet_safe`)."""
    kwargs.setdefault("index", False)
    with atomic_path(path) as tmp:
        spreadsheet_safe_frame(df).to_csv(tmp, **kwargs)


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
        if tmp_path.exists():
            os.chmod(tmp_path, plain_mode())  # mkstemp makes 0600; the output gets a plain write's permissions
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
