"""``results/<dataset>/SUMMARY.md``: the headline findings as this run's metrics show them, the published
numbers beside ours, and the slide-AUC overview figure. Written from the metrics, never by hand: each claim
of the papers is checked by a rule stated in the text, and the verdict is whatever the numbers give.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from wsimil.experiments import dose_levels, experiment_cells, plan_cells
from wsimil.io import WsimilError, write_text_atomic
from wsimil.reporting.experiments import dtfd_ablation_data, load_metrics, summary_outputs
from wsimil.reporting.tables import write_table

#: the margin (in AUC) by which one family must beat the other for a claim to count as supported
MARGIN = 0.05

#: published figures we know (REFERENCE.md; from the paper digests, not the PDFs)
PUBLISHED = [
    {"paper": "DTFD-MIL (CVPR 2022)", "dataset": "CAMELYON16", "method": "dtfd_afs", "metric": "slide AUC", "published": 0.946},
    {"paper": "DTFD-MIL (CVPR 2022)", "dataset": "CAMELYON16", "method": "dtfd_afs", "metric": "accuracy (test Youden)", "published": 0.908},
    {"paper": "DTFD-MIL (CVPR 2022)", "dataset": "TCGA-NSCLC", "method": "dtfd_maxmins", "metric": "slide AUC", "published": 0.961},
    {"paper": "DTFD-MIL (CVPR 2022)", "dataset": "TCGA-NSCLC", "method": "dtfd_maxmins", "metric": "accuracy (test Youden)", "published": 0.894},
]  # fmt: skip
_METRIC_KEYS = {"slide AUC": "slide_auc", "accuracy (test Youden)": "slide_accuracy_youden_test"}
#: the dataset names (config dataset.name) that are the published datasets themselves
_SAME_DATA = {"CAMELYON16": ("camelyon16",), "TCGA-NSCLC": ("tcga-nsclc", "tcga_nsclc")}


def _family(method: str) -> str:
    from wsimil.models.base import get_method

    return get_method(method).family


def _mean(values) -> float:
    v = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype=float)
    return float(v.mean()) if len(v) and np.isfinite(v).all() else math.nan


def _f(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def paper_vs_reproduced(config: Mapping[str, Any], df: pd.DataFrame) -> pd.DataFrame:
    """Published numbers beside this run's (standard experiment, mean over seeds), with a note whenever the
    data differ (e.g. the synthetic mini-Camelyon vs the real CAMELYON16)."""
    dataset = config["dataset"]["name"]
    std = df[df["experiment"] == "standard"] if "experiment" in df.columns else df.iloc[:0]
    rows = []
    for p in PUBLISHED:
        key = _METRIC_KEYS[p["metric"]]
        g = std[std["method"] == p["method"]]
        ours = _mean(g[key]) if key in g.columns and len(g) else math.nan
        same = dataset.lower() in _SAME_DATA.get(p["dataset"], ())
        rows.append({
            **p, "reproduced": ours, "n_seeds": int(g["seed"].nunique()) if len(g) else 0,
            "our data": dataset,
            "note": "same dataset" if same else "published figure on different data: not comparable as a number",
        })
    if "poison" in set(df.get("experiment", [])):
        poisoned = df[df["experiment"] == "poison"]
        for fam, claim in (("attention", "near 0"), ("max-pooling", "almost unaffected")):
            ms = [m for m in dict.fromkeys(poisoned["method"]) if _family(m) == fam]
            if ms:
                rows.append({"paper": "FocusMIL (arXiv 2408.09449)", "dataset": "CAMELYON16 + poison",
                             "method": f"{fam} family ({', '.join(ms)})", "metric": "poisoned test slide AUC",
                             "published": claim, "reproduced": _mean(poisoned[poisoned["method"].isin(ms)]["slide_auc"]),
                             "n_seeds": int(poisoned["seed"].nunique()), "our data": dataset,
                             "note": "published as a qualitative finding (exact numbers unknown); different data"})
    return pd.DataFrame(rows)


def findings(config: Mapping[str, Any], df: pd.DataFrame) -> list[str]:
    """Markdown paragraphs, one per claim that this run's experiments can test."""
    exps = set(config["experiments"])
    cells = plan_cells(config)
    out: list[str] = []

    def fam_means(cell: str) -> dict[str, float]:
        g = df[df["experiment"] == cell]
        res = {}
        for fam in ("max-pooling", "attention"):
            ms = [m for m in dict.fromkeys(g["method"]) if _family(m) == fam]
            res[fam] = _mean(g[g["method"].isin(ms)]["slide_auc"]) if ms else math.nan
        return res

    def verdict(diff: float) -> str:
        if math.isnan(diff):
            return "**cannot be checked** (a family has no methods or a run has no AUC)"
        if diff > MARGIN:
            return "**supported**"
        if diff < -MARGIN:
            return "**contradicted**"
        return "**not supported** (the families differ by less than the margin)"

    per_method = lambda cell: ", ".join(  # noqa: E731
        f"{m} {_f(_mean(g['slide_auc']))}" for m, g in df[df["experiment"] == cell].groupby("method", sort=False))

    if "standard" in exps:
        f = fam_means("standard")
        out.append(f"**Clean data (standard).** Mean test slide AUC: max-pooling family {_f(f['max-pooling'])}, "
                   f"attention family {_f(f['attention'])} (per method: {per_method('standard')}). The papers report "
                   "both families close on clean CAMELYON16; this is context, not a claim checked here.")
    def change(cell: str) -> tuple[dict[str, float], dict[str, float], float]:
        """Family means on ``cell``, their change from standard, and max-pooling's change minus attention's."""
        f0, f1 = fam_means("standard"), fam_means(cell)
        drop = {k: f1[k] - f0[k] for k in f0}
        return f1, drop, drop["max-pooling"] - drop["attention"]

    if {"standard", "poison"} <= exps:
        f1, drop, diff = change("poison")
        out.append(f"**FocusMIL: max-pooling resists the poison, attention does not.** Poisoned test slide AUC: "
                   f"max-pooling family {_f(f1['max-pooling'])}, attention family {_f(f1['attention'])} (per method: "
                   f"{per_method('poison')}); change from clean data: max-pooling {_f(drop['max-pooling'])}, attention "
                   f"{_f(drop['attention'])}. Rule: supported when the attention family loses more than the max-pooling "
                   f"family by more than {MARGIN}. Verdict: {verdict(diff)}.")
    if {"standard", "ood"} <= exps:
        _, drop, diff = change("ood")
        out.append(f"**Out of distribution (train on some centres, test on the others).** Change of mean test AUC from "
                   f"the standard split: max-pooling {_f(drop['max-pooling'])}, attention {_f(drop['attention'])}. "
                   f"FocusMIL reports max-pooling more robust across hospitals. Rule: supported when max-pooling loses "
                   f"less by more than {MARGIN}. Verdict: {verdict(diff)}.")
    if "dtfd_ablation" in exps:
        data = dtfd_ablation_data(df, experiment_cells(cells, "dtfd_ablation"))
        parts = []
        trend = {}
        for tier, g in data.groupby("tier"):
            means = g.groupby("n_pseudo_bags")["auc"].mean()
            trend[tier] = float(means.iloc[-1] - means.iloc[0]) if len(means) > 1 else math.nan
            parts.append(f"{tier}: " + ", ".join(f"M={m} {_f(v)}" for m, v in means.items()))
        t1, t2 = trend.get("Tier 1", math.nan), trend.get("Tier 2", math.nan)
        ok = (t1 < -MARGIN) and (abs(t2) <= MARGIN) if not (math.isnan(t1) or math.isnan(t2)) else None
        v = "**cannot be checked**" if ok is None else ("**supported**" if ok else "**not supported**")
        out.append(f"**DTFD-MIL: more pseudo-bags hurt Tier 1, not Tier 2.** Mean test AUC by number of pseudo-bags M — "
                   f"{'; '.join(parts)}. Change from the smallest to the largest M: Tier 1 {_f(t1)}, Tier 2 {_f(t2)}. "
                   f"Rule: supported when Tier 1 falls by more than {MARGIN} and Tier 2 moves by at most {MARGIN}. "
                   f"Verdict: {v}.")
    if "minet_curves" in exps:
        g = df[df["experiment"] == "minet_curves"]
        gap = {m: _mean(h["train_auc"]) - _mean(h["val_auc"]) for m, h in g.groupby("method", sort=False)}
        txt = ", ".join(f"{m} {_f(v)}" for m, v in gap.items())
        g_minet, g_focus = gap.get("minet", math.nan), gap.get("focusmil", math.nan)
        if math.isnan(g_minet) or math.isnan(g_focus):
            v = "**cannot be checked** (minet and focusmil must both be among minet_curves.methods)"
        elif g_minet > MARGIN and g_minet - g_focus > MARGIN:
            v = "**supported**"
        elif g_focus - g_minet > MARGIN:
            v = "**contradicted**"
        else:
            v = "**not supported**" + (" (mi-Net's training AUC does not exceed its validation AUC)" if g_minet <= MARGIN else "")
        out.append(f"**Why mi-Net overfits.** Train − validation AUC of the selected model: {txt}. FocusMIL reports "
                   f"mi-Net fitting its training slides and generalising worse than FocusMIL. Rule: supported when "
                   f"mi-Net's gap exceeds {MARGIN} (it overfits) and exceeds FocusMIL's by more than {MARGIN}. "
                   f"Verdict: {v}.")
    if "dose_response" in exps:
        levels = dose_levels(config)
        out.append(f"**Poison dose-response (beyond the papers).** {len(levels)} poison levels; the curves are in "
                   "figures/dose_response and the numbers in tables/dose_response. No claim of the papers is "
                   "checked here: it shows at which strength and fraction each method starts to follow the poison.")
    if "milunit" in exps:
        g = df[df["experiment"] == "milunit"]
        rows = [(m, _mean(h["val_auc"]), _mean(h["test_auc"])) for m, h in g.groupby("method", sort=False)]
        passed = [m for m, v, t in rows if not math.isnan(t) and t >= 0.5]
        failed = [m for m, v, t in rows if not math.isnan(t) and t < 0.5]
        out.append("**MIL unit test (Raff & Holt).** Validation → test AUC: "
                   + ", ".join(f"{m} {_f(v)} → {_f(t)}" for m, v, t in rows)
                   + f". Keeping test AUC at or above 0.5 (not learning 'poison means negative'): "
                     f"{', '.join(passed) or 'none'}; below 0.5: {', '.join(failed) or 'none'}.")
    return out


def data_lines(results: Path) -> list[str]:
    """The data behind the run: slides per split and class (data/slides.csv), and every slide left out, with why
    (data/excluded.csv: dataset.exclude and a public dataset's corrections)."""
    lines: list[str] = []
    sheet, excluded = results / "data" / "slides.csv", results / "data" / "excluded.csv"
    if sheet.is_file():
        df = pd.read_csv(sheet, dtype={"slide_id": str}, keep_default_na=False)
        counts = df.groupby(["split", "label"]).size()
        parts = [f"{split} {counts.get((split, 0), 0)} normal / {counts.get((split, 1), 0)} tumour"
                 for split in ("train", "val", "test") if split in set(df["split"])]
        lines += [f"**Data**: {len(df)} slides ({'; '.join(parts)}; label 1 = the positive class).", ""]
    if excluded.is_file():
        left = pd.read_csv(excluded, dtype=str, keep_default_na=False)
        if len(left):
            lines += [f"**Slides left out** ({len(left)}):", ""]
            lines += [f"- `{r.slide_id}`: {r.reason}" for r in left.itertuples()] + [""]
        else:
            lines += ["**Slides left out**: none.", ""]
    return lines


def write_summary(config: Mapping[str, Any], results: str | os.PathLike) -> list[Path]:
    """Write SUMMARY.md, tables/paper_vs_reproduced.* and figures/slide_auc.* under ``results``."""
    from wsimil.reporting.figures import plot_metric_by_method

    results = Path(results)
    seeds = list(config["training"]["seeds"])
    cells = plan_cells(config)
    df = load_metrics(results, cells, seeds)
    dataset = config["dataset"]["name"]
    written: list[Path] = []
    paper = paper_vs_reproduced(config, df)
    written += write_table(paper, results / "tables" / "paper_vs_reproduced",
                           f"Published numbers beside this run's (standard experiment, mean over seeds; {dataset}). "
                           "A published figure on other data is context, not a target.")
    shown = [e for e in ("standard", "ood", "poison") if e in {c.name for c in cells}]
    if not shown:
        raise WsimilError("figures/slide_auc needs one of the experiments standard, ood, poison")
    written += plot_metric_by_method(df, "slide_auc", results / "figures" / "slide_auc.png", experiments=shown,
                                     methods=config["training"]["methods"],
                                     title=f"Test slide AUC per method ({dataset})", ylabel="test slide AUC", chance=0.5)
    lines = [f"# {dataset}: what this run shows", "",
             f"Written by `wsimil summary` from {len(df)} evaluated runs ({len(cells)} cells, seeds {seeds}); "
             "every number is a mean over seeds of the test split. The rules that turn numbers into verdicts are "
             "stated with each finding and were fixed before the runs; nothing here is edited by hand.", ""]
    lines += data_lines(results)
    for para in findings(config, df):
        lines += [f"- {para}", ""]
    lines += ["Published numbers beside ours: tables/paper_vs_reproduced.md. Per-experiment tables: tables/; "
              "figures: figures/; the HTML report: `snakemake --report results/report.html`.", ""]
    write_text_atomic(results / "SUMMARY.md", "\n".join(lines))
    written.append(results / "SUMMARY.md")
    expected = {results / f for f in summary_outputs()}
    missing = expected - set(written)
    if missing:
        raise RuntimeError(f"summary did not write {sorted(map(str, missing))}")
    return written
