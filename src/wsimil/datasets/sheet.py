"""The sample sheet ``slides.csv``: ``slide_id,label,split,center,path,annotation``."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from wsimil.io import WsimilError, check_slide_id

COLUMNS = ["slide_id", "label", "split", "center", "path", "annotation"]
SPLITS = ("train", "val", "test")


def read_sheet(path: str | os.PathLike) -> pd.DataFrame:
    """Read and validate a sample sheet; every problem is reported with the file and the row."""
    path = Path(path)
    if not path.is_file():
        raise WsimilError(f"sample sheet not found: {path}")
    try:
        df = pd.read_csv(path, dtype={"slide_id": str, "split": str, "center": str, "path": str, "annotation": str},
                         keep_default_na=False)
    except Exception as exc:  # pandas raises several parser error types
        raise WsimilError(f"cannot read sample sheet {path}: {exc}") from exc
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise WsimilError(f"{path}: missing column(s) {missing}; a sample sheet has columns {COLUMNS}")
    problems = []
    for i, row in df.iterrows():
        line = i + 2  # header is line 1
        try:
            check_slide_id(row["slide_id"])
        except WsimilError as exc:
            problems.append(f"line {line}: {exc}")
        if str(row["label"]) not in ("0", "1"):
            problems.append(f"line {line}: label {row['label']!r} must be 0 (normal) or 1 (tumour)")
        if row["split"] not in SPLITS:
            problems.append(f"line {line}: split {row['split']!r} must be one of {list(SPLITS)}")
    dup = df["slide_id"][df["slide_id"].duplicated()].tolist()
    if dup:
        problems.append(f"duplicate slide ids: {sorted(set(dup))}")
    if problems:
        raise WsimilError(f"invalid sample sheet {path}:\n  " + "\n  ".join(problems[:20]))
    df["label"] = df["label"].astype(int)
    return df[COLUMNS + [c for c in df.columns if c not in COLUMNS]]


def resolve(sheet_path: str | os.PathLike, value: str) -> Path | None:
    """A path from the sheet, relative to the sheet's folder unless absolute; None when empty."""
    if not value:
        return None
    p = Path(value)
    return p if p.is_absolute() else Path(sheet_path).parent / p


def relocate(df: pd.DataFrame, from_sheet: str | os.PathLike, to_sheet: str | os.PathLike) -> pd.DataFrame:
    """The sheet ``df`` read from ``from_sheet`` with its relative paths rewritten for a copy at ``to_sheet``."""
    out = df.copy()
    base = Path(to_sheet).parent
    for col in ("path", "annotation"):
        out[col] = [os.path.relpath(resolve(from_sheet, v), base) if v and not Path(v).is_absolute() else v
                    for v in out[col]]
    return out
