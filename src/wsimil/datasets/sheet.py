"""The sample sheet ``slides.csv``: ``slide_id,label,split,center,path,annotation``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from wsimil.io import WsimilError, check_input_file, excerpt, read_error, schema_message

COLUMNS = ["slide_id", "label", "split", "center", "path", "annotation"]
SPLITS = ("train", "val", "test")


@lru_cache(maxsize=1)
def _row_validator():
    import jsonschema
    import yaml

    schema = yaml.safe_load((Path(__file__).resolve().parents[1] / "schemas" / "sheet.schema.yaml").read_text())
    return jsonschema.Draft202012Validator(schema)


def _unquote_formulas(df: pd.DataFrame) -> pd.DataFrame:
    """Undo :func:`wsimil.io.spreadsheet_safe` on a sheet wsimil wrote: a text cell ``'=...`` (``'+``, ``'-``,
    ``'@``, tab, CR) reads as ``=...`` again, so centres and paths round-trip exactly."""
    from wsimil.io import CSV_FORMULA_START

    def unquote(v):
        return v[1:] if isinstance(v, str) and v.startswith("'") and v[1:].startswith(CSV_FORMULA_START) else v

    for col in df.columns:
        if pd.api.types.is_string_dtype(df[col]) or df[col].dtype == object:
            df[col] = df[col].map(unquote)
    return df


def read_sheet(path: str | os.PathLike) -> pd.DataFrame:
    """Read a sample sheet and validate every row against ``schemas/sheet.schema.yaml``; every problem is
    reported with the file and the line."""
    path = check_input_file(path, "sample sheet")
    try:
        df = pd.read_csv(path, dtype={"slide_id": str, "split": str, "center": str, "path": str, "annotation": str},
                         keep_default_na=False)
    except Exception as exc:  # pandas raises several error types; their text may quote the file
        raise WsimilError(f"cannot read sample sheet {path}: {read_error(exc)}") from None
    df = _unquote_formulas(df)
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
            problems.append(f"line {i + 2}: {where}: {schema_message(err)}")  # header is line 1
    dup = df["slide_id"][df["slide_id"].duplicated()].tolist()
    if dup:
        problems.append(f"duplicate slide ids: {', '.join(excerpt(d) for d in sorted(set(dup))[:10])}")
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


@dataclass
class WorkflowSheet:
    """The slides a workflow run plans for (rules/common.smk reads it once, at parse time).

    ``sheet``: the sample sheet as the rules write it (paths relative to ``sheet_path``); ``files`` /
    ``notes``: slide id -> its image / ASAP annotation file ("" when none), as the jobs open them; ``plan``:
    the download plan of a public dataset (wsimil.datasets.sources), else None; ``left_out``: slide id -> why
    it is not in the sheet."""

    sheet: pd.DataFrame
    files: dict[str, str]
    notes: dict[str, str]
    plan: Any = None
    left_out: dict[str, str] = field(default_factory=dict)


def workflow_sheet(config: Mapping[str, Any], out: str | os.PathLike) -> WorkflowSheet:
    """The sheet of a run with results folder ``out``, by ``dataset.source``: the synthetic plan
    (data/slides/<id>.tif), a public dataset's download plan, or the user's sheet (``dataset.sheet``, less
    ``dataset.exclude``; files resolved against it)."""
    source, exclude = config["dataset"]["source"], config["dataset"]["exclude"]
    sheet_path = Path(out) / "data" / "slides.csv"
    if source == "synthetic":
        from wsimil.slides.synthetic import plan_dataset

        if exclude:
            raise WsimilError("config key 'dataset.exclude': for real data; every synthetic slide is readable")
        sheet = plan_dataset(config["synthetic"])
        d = f"{out}/data"
        files = {s: f"{d}/slides/{s}.tif" for s in sheet["slide_id"]}
        notes = {s: (f"{d}/annotations/{s}.xml" if a else "") for s, a in zip(sheet["slide_id"], sheet["annotation"])}
        return WorkflowSheet(sheet, files, notes)
    from wsimil.datasets.sources import SOURCES, plan_source, sheet_for

    if source in SOURCES:
        plan = plan_source(config)
        sheet = sheet_for(plan, str(sheet_path))
        files = {r.slide_id: str(plan.local(r.path)) for r in plan.sheet.itertuples()}
        notes = {r.slide_id: str(plan.local(r.annotation)) if r.annotation else "" for r in plan.sheet.itertuples()}
        return WorkflowSheet(sheet, files, notes, plan, dict(plan.left_out))
    user_sheet = config["dataset"]["sheet"]
    if not user_sheet:
        raise WsimilError(f"config key 'dataset.sheet': required when dataset.source is {source!r}")
    sheet = read_sheet(user_sheet)
    unknown = sorted(set(exclude) - set(sheet["slide_id"]))
    if unknown:
        raise WsimilError(f"config key 'dataset.exclude': not in {user_sheet}: {[excerpt(u) for u in unknown[:10]]}")
    sheet = sheet[~sheet["slide_id"].isin(exclude)].reset_index(drop=True)
    files = {r.slide_id: str(resolve(user_sheet, r.path) or "") for r in sheet.itertuples()}
    notes = {r.slide_id: str(resolve(user_sheet, r.annotation) or "") for r in sheet.itertuples()}
    sheet = relocate(sheet, user_sheet, sheet_path)
    return WorkflowSheet(sheet, files, notes, None, {s: "dataset.exclude" for s in exclude})
