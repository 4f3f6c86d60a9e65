"""The sample sheet ``slides.csv``: ``slide_id,label,split,center,path,annotation``."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import pandas as pd

from wsimil.io import WsimilError

COLUMNS = ["slide_id", "label", "split", "center", "path", "annotation"]
SPLITS = ("train", "val", "test")


@lru_cache(maxsize=1)
def _row_validator():
    import jsonschema
    import yaml

    schema = yaml.safe_load((Path(__file__).resolve().parents[1] / "schemas" / "sheet.schema.yaml").read_text())
    return jsonschema.Draft202012Validator(schema)


def read_sheet(path: str | os.PathLike) -> pd.DataFrame:
    """Read a sample sheet and validate every row against ``schemas/sheet.schema.yaml``; every problem is
    reported with the file and the line."""
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
    validator = _row_validator()
    problems = []
    for i, row in enumerate(df[COLUMNS].to_dict("records")):
        label = str(row["label"]).strip()
        row["label"] = int(label) if label.lstrip("-").isdigit() else label
        for err in sorted(validator.iter_errors(row), key=lambda e: list(e.path)):
            where = ".".join(map(str, err.path)) or "row"
            problems.append(f"line {i + 2}: {where} {err.instance!r}: {err.message}")  # header is line 1
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
