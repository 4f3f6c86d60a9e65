"""Resumable, verified downloads of dataset files over HTTP(S) (the CAMELYON buckets, GDC).

A file is written to ``<dest>.part`` and renamed onto ``dest`` only when it is complete and verified (size,
and MD5 where the source publishes one): a partial file never looks complete. An interrupted download resumes
from the ``.part`` file with an HTTP range request; connection errors and server errors (5xx, 429) are retried
with exponential backoff; a corrupted file (wrong size or checksum) is fetched again from scratch; a missing
file (404, 403) fails at once with its URL. Standard library only (``urllib``), so it runs wherever wsimil does.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from wsimil.io import WsimilError

log = logging.getLogger(__name__)

CHUNK = 1 << 20  # bytes per read
MAX_WAIT = 60.0  # seconds: the cap of the exponential backoff
PROGRESS_EVERY = 256 << 20  # bytes between progress lines
_TOTAL = re.compile(r"bytes \d+-\d+/(\d+)")


class RetryableError(Exception):
    """A failure worth another attempt (connection cut, server error, corrupt transfer)."""


@dataclass(frozen=True)
class FileSpec:
    """One file to fetch: ``url`` into ``dest``, checked against ``size`` and ``md5`` when known."""

    url: str
    dest: Path
    size: int | None = None
    md5: str | None = None


def parse_md5_manifest(text: str) -> dict[str, str]:
    """``md5sum`` output (``<hex>  <path>`` per line, ``*`` for binary mode) -> {path: md5}."""
    out: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([0-9a-fA-F]{32})\s+\*?(.+)", line)
        if not m:
            raise WsimilError(f"checksum manifest line {n} is not '<md5>  <path>': {line[:80]!r}")
        name = m.group(2).strip()
        out[name[2:] if name.startswith("./") else name] = m.group(1).lower()
    return out


def md5_of(path: str | os.PathLike) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _open(url: str, offset: int, timeout: float):
    req = urllib.request.Request(url, headers={"User-Agent": "wsimil", **({"Range": f"bytes={offset}-"} if offset else {})})
    try:
        return urllib.request.urlopen(req, timeout=timeout)  # noqa: S310 (http/https only: checked by the caller)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the .part already holds the whole file (or more): verify / restart
            return None
        if exc.code in (429,) or exc.code >= 500:
            raise RetryableError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
        raise WsimilError(f"{url}: HTTP {exc.code} {exc.reason} (file not available at the source)") from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:  # refused, reset, DNS, timeout
        raise RetryableError(f"{url}: {exc}") from exc


def _attempt(spec: FileSpec, part: Path, timeout: float) -> None:
    """One transfer into ``part`` (resuming from its size); raises RetryableError on a cut or a bad file."""
    offset = part.stat().st_size if part.exists() else 0
    resp = _open(spec.url, offset, timeout)
    total = spec.size
    if resp is not None:
        with resp:
            if offset and resp.status != 206:  # the server ignored the range: start again
                offset = 0
            if resp.status == 206:
                m = _TOTAL.match(resp.headers.get("Content-Range", ""))
                total = total or (int(m.group(1)) if m else None)
            elif resp.headers.get("Content-Length") is not None:
                total = total or int(resp.headers["Content-Length"])
            with open(part, "ab" if offset else "wb") as out:
                t0, last = time.monotonic(), offset
                try:
                    for block in iter(lambda: resp.read(CHUNK), b""):
                        out.write(block)
                        if out.tell() - last >= PROGRESS_EVERY:  # a line per 256 MB: logs of multi-GB slides
                            last = out.tell()
                            rate = (last - offset) / max(time.monotonic() - t0, 1e-9) / 1e6
                            log.info("%s: %.0f of %s MB (%.1f MB/s)", spec.dest.name, last / 1e6,
                                     f"{total / 1e6:.0f}" if total else "?", rate)
                except (OSError, http.client.HTTPException) as exc:  # reset, timeout, IncompleteRead
                    raise RetryableError(f"{spec.url}: connection cut after {out.tell()} bytes ({exc})") from exc
    got = part.stat().st_size
    if total is not None and got < total:
        raise RetryableError(f"{spec.url}: {got} of {total} bytes received")
    if (total is not None and got != total) or (spec.md5 and md5_of(part) != spec.md5.lower()):
        part.unlink()  # corrupt: never resume from it
        what = f"size {got}, expected {total}" if total is not None and got != total else "MD5 mismatch"
        raise RetryableError(f"{spec.url}: {what}; fetching it again")


def download_file(spec: FileSpec, *, retries: int = 5, backoff: float = 1.0, timeout: float = 60.0,
                  sleep: Callable[[float], None] = time.sleep) -> Path:
    """Fetch ``spec.url`` into ``spec.dest`` (skipped when ``dest`` exists and matches size and MD5).

    Up to ``retries`` further attempts after a retryable failure, waiting ``backoff * 2**k`` seconds (at most
    ``MAX_WAIT``).
    Raises :class:`WsimilError` naming the URL when the file is missing at the source or keeps failing.
    """
    if not spec.url.startswith(("http://", "https://")):
        raise WsimilError(f"{spec.url}: only http(s) URLs are downloaded")
    dest = Path(spec.dest)
    if dest.exists() and (spec.size is None or dest.stat().st_size == spec.size) and (
        spec.md5 is None or md5_of(dest) == spec.md5.lower()
    ):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for k in range(retries + 1):
        try:
            _attempt(spec, part, timeout)
            os.replace(part, dest)
            log.info("downloaded %s -> %s", spec.url, dest)
            return dest
        except RetryableError as exc:
            if k == retries:
                raise WsimilError(f"{exc} (gave up after {retries + 1} attempts; rerun to resume)") from exc
            wait = min(backoff * 2**k, MAX_WAIT)
            log.warning("%s; retrying in %.1f s", exc, wait)
            sleep(wait)
    raise AssertionError("unreachable")


def download_all(specs: Iterable[FileSpec], *, max_parallel: int = 4, **kwargs) -> tuple[list[Path], dict[str, str]]:
    """Fetch many files, at most ``max_parallel`` at a time. Returns (paths fetched, {url: error}) — one failed
    file does not stop the others; the caller reports the failures."""
    done: list[Path] = []
    failed: dict[str, str] = {}
    specs = list(specs)
    with ThreadPoolExecutor(max_workers=max(1, max_parallel)) as pool:
        futures = {pool.submit(download_file, s, **kwargs): s for s in specs}
        for fut in as_completed(futures):
            try:
                done.append(fut.result())
            except WsimilError as exc:
                failed[futures[fut].url] = str(exc)
    return done, failed
