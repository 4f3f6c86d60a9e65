"""Result tables: gather every run's ``metrics.json``, summarise over seeds, write CSV / Markdown / LaTeX.

Numbers stay numeric until the very end: :func:`summary_table` and :func:`poison_comparison_table` return
``<metric>_mean`` / ``<metric>_std`` columns (std is the sample std over seeds, ``ddof=1``; NaN for one
seed), the ``.csv`` keeps them so, and only :func:`format_table` (used for ``.md`` / ``.tex``) turns a
mean/std pair into ``"0.912 ± 0.021"``. A NaN in any seed makes its mean NaN: nothing is averaged away.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from wsimil.evaluation.evaluate import read_metrics
from wsimil.io import WsimilError, write_csv_atomic, write_text_atomic

_SEED_DIR = re.compile(r"^seed(\d+)$")

#: metric column -> label in the formatted tables and figures
LABELS: dict[str, str] = {
    "slide_auc": "slide AUC",
    "slide_accuracy": "accuracy",
    "slide_f1": "F1",
    "slide_balanced_accuracy": "balanced accuracy",
    "patch_auc_tumour_slides": "patch AUC (test tumour slides)",
    "patch_ap_tumour_slides": "patch AP (test tumour slides)",
    "patch_auc_all_slides": "patch AUC (all test slides)",
    "patch_ap_all_slides": "patch AP (all test slides)",
    "train_auc": "train AUC",
    "val_auc": "val AUC",
    "test_auc": "test AUC",
    "slide_auc_ci_low": "AUC 95% CI low",
    "slide_auc_ci_high": "AUC 95% CI high",
    "patch_auc_tumour_slides_any": "patch AUC, any tumour (test tumour slides)",
    "patch_ap_tumour_slides_any": "patch AP, any tumour (test tumour slides)",
    "patch_auc_all_slides_any": "patch AUC, any tumour (all test slides)",
    "patch_ap_all_slides_any": "patch AP, any tumour (all test slides)",
    "slide_accuracy_valthr": "accuracy (val threshold)",
    "slide_f1_valthr": "F1 (val threshold)",
    "slide_accuracy_youden_test": "accuracy (test Youden)",
    "slide_f1_youden_test": "F1 (test Youden)",
    "froc": "FROC",
    "n_seeds": "n seeds",
    "difference": "difference of the seeds' means (poisoned − clean)",
    "difference_ood": "difference of the seeds' means (ood − standard)",
    "change_poison_seedavg": "change of the seed-averaged AUC (poisoned − clean)",
    "change_ood_seedavg": "change of the seed-averaged AUC (ood − standard)",
    "auc": "test AUC",
    "reproduced_seedavg": "reproduced",
    "val_minus_test_seedavg": "val − test AUC of seed-averaged scores",
    "train_minus_val_seedavg": "train − val AUC of seed-averaged scores",
    "train_minus_val_auc": "train − val AUC, mean of seeds",
    "oracle_ceiling_mean": "Tier-1 oracle ceiling, mean of seeds",
    "fraction_of_ceiling": "Tier-1 AUC / ceiling (means of seeds)",
}
#: the two slide AUCs a run of several seeds has, and their names everywhere (tables, cards, SUMMARY, figures):
#: ``<metric>_seedavg`` is the AUC of each slide's mean score over the seeds ("... of seed-averaged scores",
#: with a bootstrap interval over the slides), ``<metric>_mean`` / ``_std`` the mean and sd of the seeds' own
#: AUCs ("..., mean ± sd of seeds"). They differ; a number is never shown under the other's name.
SEEDAVG = " of seed-averaged scores"
SEED_MEAN = ", mean ± sd of seeds"

#: metrics of the main summary table, in column order
SUMMARY_METRICS: tuple[str, ...] = ("slide_auc", "slide_accuracy", "slide_f1", "patch_auc_tumour_slides")


def metric_label(col: str) -> str:
    """The human label of a results column (`slide_auc` -> "slide AUC", `clean_slide_auc` -> "clean slide AUC")."""
    if col in LABELS:
        return LABELS[col]
    for prefix in ("clean_", "poisoned_", "standard_", "ood_"):
        if col.startswith(prefix):
            return f"{prefix[:-1]} {metric_label(col[len(prefix):])}"
    if col.endswith("_seedavg"):
        return metric_label(col[: -len("_seedavg")]) + SEEDAVG
    return col.replace("_", " ")


# --------------------------------------------------------------------------------------------- collect


def collect_metrics_files(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """One row per ``.../<experiment>/<method>/seed<k>/metrics.json`` (experiment, method, seed from the path).

    The path is the authority for experiment / method / seed; a ``metrics.json`` that names others (a run
    directory copied by hand) is an error.
    """
    rows = []
    for path in map(Path, paths):
        run_dir = path.parent
        m = _SEED_DIR.match(run_dir.name)
        if not m:
            raise WsimilError(f"{path}: not inside a <experiment>/<method>/seed<k>/ run directory")
        ident = {"experiment": run_dir.parent.parent.name, "method": run_dir.parent.name, "seed": int(m.group(1))}
        metrics = read_metrics(path)
        for k, v in ident.items():
            if k in metrics and metrics[k] != v:
                raise WsimilError(f"{path}: says {k}={metrics[k]!r} but lies under {k}={v!r}")
        rows.append({**metrics, **ident})
    if not rows:
        raise WsimilError("no metrics.json files to collect")
    df = pd.DataFrame(rows)
    first = ["experiment", "method", "seed"]
    return df[first + [c for c in df.columns if c not in first]]


def collect_metrics(runs_root: str | os.PathLike, experiments: Sequence[str]) -> pd.DataFrame:
    """One row per experiment x method x seed under ``runs_root/<experiment>/<method>/seed<k>/``.

    Rows follow ``experiments`` order, then method and seed. Every seed directory must hold a
    ``metrics.json``; a missing one is an error naming it (evaluate the run first).
    """
    runs_root = Path(runs_root)
    paths = []
    for exp in experiments:
        exp_dir = runs_root / exp
        if not exp_dir.is_dir():
            raise WsimilError(f"experiment directory not found: {exp_dir}")
        seed_dirs = sorted(
            (d for d in exp_dir.glob("*/seed*") if d.is_dir() and _SEED_DIR.match(d.name)),
            key=lambda d: (d.parent.name, int(d.name[4:])),
        )
        if not seed_dirs:
            raise WsimilError(f"{exp_dir}: no <method>/seed<k>/ run directories")
        for d in seed_dirs:
            if not (d / "metrics.json").is_file():
                raise WsimilError(f"metrics file not found: {d / 'metrics.json'} (run `wsimil evaluate {d}`)")
            paths.append(d / "metrics.json")
    return collect_metrics_files(paths)


# --------------------------------------------------------------------------------------------- summarise


def _mean_std(values: pd.Series) -> tuple[float, float]:
    v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
    if len(v) == 0 or np.isnan(v).any():
        return math.nan, math.nan
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else math.nan)


def _require(df: pd.DataFrame, cols: Iterable[str]) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise WsimilError(f"results table lacks columns {missing} (have {list(df.columns)[:20]})")


def _method_order(present: Iterable[str], methods: Sequence[str] | None) -> list[str]:
    """``methods`` first (those present), then any other present method in order of appearance."""
    present = list(dict.fromkeys(present))
    if methods is None:
        return present
    return [m for m in methods if m in present] + [m for m in present if m not in methods]


def summary_table(
    df: pd.DataFrame, metrics: Sequence[str] = SUMMARY_METRICS, *, methods: Sequence[str] | None = None
) -> pd.DataFrame:
    """Mean and sample std over seeds per experiment x method.

    Rows: experiments in order of appearance, within each the ``methods`` order (default: order of
    appearance; methods not listed follow, none is dropped). Columns: ``experiment, method, n_seeds``
    then ``<metric>_mean, <metric>_std`` for each metric.
    """
    _require(df, ["experiment", "method", "seed", *metrics])
    order = {m: i for i, m in enumerate(_method_order(df["method"], methods))}
    keyed = df.assign(_exp=pd.Categorical(df["experiment"], list(dict.fromkeys(df["experiment"]))),
                      _m=df["method"].map(order))
    rows = []
    for (exp, _), g in keyed.groupby(["_exp", "_m"], sort=True, observed=True):
        method = g["method"].iloc[0]
        row: dict = {"experiment": exp, "method": method, "n_seeds": int(g["seed"].nunique())}
        for m in metrics:
            row[f"{m}_mean"], row[f"{m}_std"] = _mean_std(g[m])
        rows.append(row)
    return pd.DataFrame(rows)


def poison_comparison_table(
    df: pd.DataFrame,
    clean: str = "standard",
    poisoned: str = "poison",
    metric: str = "slide_auc",
    *,
    methods: Sequence[str] | None = None,
    tags: tuple[str, str] = ("clean", "poisoned"),
) -> pd.DataFrame:
    """Per method: ``metric`` on the clean and on the poisoned experiment (mean, std, n seeds) and
    ``difference`` = poisoned mean - clean mean (negative: the poison hurt). ``tags``: the column prefixes;
    other than the default (``("standard", "ood")``) the difference column is ``difference_<second tag>``.

    Methods run in only one of the two experiments keep a row, with NaN where the other is missing.
    Rows follow ``methods`` (default: order of appearance), as in :func:`summary_table`.
    """
    _require(df, ["experiment", "method", "seed", metric])
    have = list(dict.fromkeys(df["experiment"]))
    for exp in (clean, poisoned):
        if exp not in have:
            raise WsimilError(f"no runs of experiment {exp!r} in the results (have {have})")
    rows = []
    for method in _method_order(df.loc[df["experiment"].isin([clean, poisoned]), "method"], methods):
        row: dict = {"method": method}
        for tag, exp in zip(tags, (clean, poisoned)):
            g = df[(df["experiment"] == exp) & (df["method"] == method)]
            row[f"{tag}_{metric}_mean"], row[f"{tag}_{metric}_std"] = _mean_std(g[metric])
            row[f"{tag}_n_seeds"] = int(g["seed"].nunique())
        diff = "difference" if tuple(tags) == ("clean", "poisoned") else f"difference_{tags[1]}"
        row[diff] = row[f"{tags[1]}_{metric}_mean"] - row[f"{tags[0]}_{metric}_mean"]
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------- format, write


def _fmt(x, digits: int, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:+.{digits}f}".replace("-", "−") if signed else f"{x:.{digits}f}"


def format_table(df: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """The display form: ``<m>_mean`` + ``<m>_std`` -> one column ``"<label>, mean ± sd of seeds"`` holding
    ``"0.912 ± 0.021"`` (just the mean when std is NaN, i.e. one seed; "–" when the mean is NaN);
    ``<m>_seedavg`` + ``<m>_ci_low`` / ``_ci_high`` -> ``"<label> of seed-averaged scores [95% CI]"`` holding
    ``"0.905 [0.829, 0.966]"``; other columns labelled, floats to ``digits``.
    """
    out: dict[str, list[str] | pd.Series] = {}
    cols = list(df.columns)
    for col in cols:
        if col.endswith("_std") and col[:-4] + "_mean" in cols:
            continue
        if col.endswith(("_ci_low", "_ci_high")) and col.rsplit("_ci_", 1)[0] + "_seedavg" in cols:
            continue  # shown with its point estimate: "0.905 [0.829, 0.966]"
        if col.endswith("_seedavg") and col[:-8] + "_ci_low" in cols and col[:-8] + "_ci_high" in cols:
            base, sg = col[:-8], col.startswith("change")
            out[metric_label(col) + " [95% CI]"] = [
                _fmt(v, digits, sg) if math.isnan(lo) or math.isnan(hi)
                else f"{_fmt(v, digits, sg)} [{_fmt(lo, digits, sg)}, {_fmt(hi, digits, sg)}]"
                for v, lo, hi in zip(df[col].astype(float), df[base + "_ci_low"].astype(float), df[base + "_ci_high"].astype(float))
            ]
            continue
        if col.endswith("_mean") and col[:-5] + "_std" in cols:
            base = col[:-5]
            out[metric_label(base) + SEED_MEAN] = [
                _fmt(m, digits) if math.isnan(s) or math.isnan(m) else f"{_fmt(m, digits)} ± {_fmt(s, digits)}"
                for m, s in zip(df[col].astype(float), df[base + "_std"].astype(float))
            ]
        elif col.startswith("difference"):
            out[metric_label(col)] = [_fmt(float(v), digits, signed=True) for v in df[col]]
        elif pd.api.types.is_float_dtype(df[col]):
            out[metric_label(col)] = [_fmt(float(v), digits) for v in df[col]]
        else:
            out[metric_label(col)] = df[col].astype(str).tolist()
    return pd.DataFrame(out)


_TEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _tex(text: str) -> str:
    text = "".join(_TEX_ESCAPES.get(c, c) for c in str(text))
    return text.replace("±", r"$\pm$").replace("−", "$-$").replace("–", "--")


_NUMERIC_TEXT = re.compile(r"^([−+\-]?\d|–$)")


def to_latex(display: pd.DataFrame, caption: str, label: str | None = None) -> str:
    """A booktabs ``table`` of an already formatted table (no jinja2 needed)."""
    align = "".join("r" if all(_NUMERIC_TEXT.match(str(v)) for v in display[c]) and len(display) else "l"
                    for c in display.columns)
    lines = [r"\begin{table}[ht]", r"\centering", rf"\caption{{{_tex(caption)}}}"]
    if label:
        lines.append(rf"\label{{{label}}}")
    lines += [rf"\begin{{tabular}}{{{align}}}", r"\toprule", " & ".join(_tex(c) for c in display.columns) + r" \\",
              r"\midrule"]
    lines += [" & ".join(_tex(v) for v in row) + r" \\" for row in display.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def write_table(df: pd.DataFrame, stem: str | os.PathLike, caption: str, digits: int = 3,
                brief: Sequence[str] | None = None) -> list[Path]:
    """Write ``<stem>.csv`` (numeric, full precision), ``<stem>.md`` (formatted, caption first, pandoc
    ``Table:`` style), ``<stem>.tex`` (booktabs) and ``<stem>.html`` (a page with the table, for the report),
    each atomically. Returns the four paths.
    """
    stem = Path(stem)
    csv, md, tex = (stem.with_name(stem.name + ext) for ext in (".csv", ".md", ".tex"))
    write_csv_atomic(df, csv)
    display = format_table(df, digits)
    if brief is not None:  # the columns a reader needs; every column stays in the CSV
        keep = [c for c in display.columns if c in set(brief) or metric_label(c) in set(brief)]
        if len(keep) < len(display.columns):
            display = display[keep]
            caption = f"{caption} Columns shown: {len(keep)} of {len(df.columns)}; all of them in {csv.name}."
    text = {metric_label(c) for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])}
    colalign = ["left" if c in ("experiment", "method") or c in text else "right" for c in display.columns]
    write_text_atomic(md, f"Table: {caption}\n\n{display.to_markdown(index=False, colalign=colalign, disable_numparse=True)}\n")
    write_text_atomic(tex, to_latex(display, caption, label=f"tab:{stem.name}"))
    from wsimil.reporting.html import write_table_html

    return [csv, md, tex, write_table_html(display, stem.with_name(stem.name + ".html"), caption, stem.name)]
