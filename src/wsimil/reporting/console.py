"""What a finished run says on the console: the claims with their verdicts, where SUMMARY.md is, how to build the
HTML report. The workflow's ``onsuccess:`` handler prints it, so that every successful run (``make reproduce``,
a plain ``snakemake --cores N``, any logger) ends with the verdicts."""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path
from typing import Optional

from wsimil.io import CSV_FORMULA_START

MAX_LINE = 500
REPORT = "results/report.html"  # where `make report` writes the HTML report (Makefile)
_NEEDED = ("claim", "statement", "estimate", "ci_low", "ci_high", "verdict")


def _cell(value: Optional[str]) -> str:
    """A CSV cell as written, without the apostrophe :func:`wsimil.io.spreadsheet_safe` put before a formula."""
    value = (value or "").strip()
    return value[1:] if value.startswith("'") and value[1:].startswith(CSV_FORMULA_START) else value


def _number(value: str) -> str:
    try:
        return f"{float(value):+.3f}"
    except ValueError:
        return "?"


def _cut(line: str) -> str:
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 4] + " ..."


def read_claims(path: Path) -> tuple[list[dict[str, str]], str]:
    """The rows of a claims.csv, or [] and what is wrong with it ("is missing", "is empty", ...)."""
    if not path.is_file():
        return [], "is missing (the summary job writes it: `snakemake --cores N summary`)"
    try:
        with path.open(newline="", encoding="utf-8") as f:
            table = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return [], f"cannot be read: {exc}"
    if not table:
        return [], "is empty"
    header = [_cell(c) for c in table[0]]
    missing = [c for c in _NEEDED if c not in header]
    if missing:
        return [], f"lacks the column(s) {', '.join(missing)}"
    rows = [dict(zip(header, map(_cell, r))) for r in table[1:]]
    if "level" in header:  # a family claim's pairs have their own rows: the verdicts are the claims'
        rows = [r for r in rows if r.get("level") == "claim"]
    return rows, "" if rows else "lists no claim"


def verdict_lines(results_dir: str | os.PathLike, report: str = REPORT) -> list[str]:
    """The lines a successful run ends with: one per claim of ``<results_dir>/tables/claims.csv`` (verdict,
    estimate and its 95% interval, statement), the path of SUMMARY.md and how to build and open the HTML report.
    A missing, unreadable or partial claims.csv is said as such, never raised."""
    results = Path(results_dir)
    claims = results / "tables" / "claims.csv"
    rows, problem = read_claims(claims)
    if problem:
        lines = [f"wsimil: no verdicts: {claims} {problem}"]
    else:
        lines = [f"wsimil: {len(rows)} claims, each with its verdict and the estimate's 95% interval ({claims}):"]
        width = max(len(r.get("claim", "")) for r in rows)
        verdict_width = max(len(r.get("verdict") or "?") for r in rows)
        for r in rows:
            lines.append(f"  {r.get('claim', ''):<{width}}  {r.get('verdict') or '?':<{verdict_width}}  "
                         f"{_number(r.get('estimate', ''))} [{_number(r.get('ci_low', ''))}, "
                         f"{_number(r.get('ci_high', ''))}]  {r.get('statement', '')}".rstrip())
    summary = results / "SUMMARY.md"
    lines.append(f"wsimil: summary: {summary}" if summary.is_file() else f"wsimil: no summary: {summary} is missing")
    lines.append(f"wsimil: HTML report: `make report` writes {report} (or `snakemake --report {report}`); "
                 "open it in a browser")
    return [_cut(line) for line in lines]


def print_verdicts(results_dir: str | os.PathLike, report: str = REPORT) -> None:
    """Print :func:`verdict_lines`; any problem is one line on stderr, never an exception (the workflow's end)."""
    try:
        print("\n".join(verdict_lines(results_dir, report)), flush=True)
    except Exception as exc:  # the run itself succeeded: its last words must not fail it
        print(f"wsimil: the verdicts could not be shown: {exc}", file=sys.stderr, flush=True)
