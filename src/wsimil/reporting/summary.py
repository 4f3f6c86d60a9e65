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

from wsimil.experiments import plan_cells
from wsimil.io import WsimilError, write_text_atomic
from wsimil.reporting.experiments import load_metrics, summary_outputs
from wsimil.reporting.tables import write_table


#: published figures we know, each with where it comes from and whether it was checked against the paper itself
#: (docs/references.md gives every source)
_DTFD_SOURCE = ("Zhang et al., CVPR 2022 (arXiv 2203.12081), main results table for the dataset; table number "
                "not recorded")
_DTFD_CHECK = "no: taken from a secondary summary of the paper, not from its PDF"
PUBLISHED = [
    {"paper": "DTFD-MIL (CVPR 2022)", "dataset": "CAMELYON16", "method": "dtfd_afs", "metric": "slide AUC", "published": 0.946},
    {"paper": "DTFD-MIL (CVPR 2022)", "dataset": "CAMELYON16", "method": "dtfd_afs", "metric": "accuracy (test Youden)", "published": 0.908},
    {"paper": "DTFD-MIL (CVPR 2022)", "dataset": "TCGA-NSCLC", "method": "dtfd_maxmins", "metric": "slide AUC", "published": 0.961},
    {"paper": "DTFD-MIL (CVPR 2022)", "dataset": "TCGA-NSCLC", "method": "dtfd_maxmins", "metric": "accuracy (test Youden)", "published": 0.894},
]  # fmt: skip
_FOCUSMIL_SOURCE = "arXiv 2408.09449 (the abstract's poison experiment; version not recorded)"
_FOCUSMIL_CHECK = "no: a qualitative finding from a summary of the abstract; the paper's numbers are unknown here"
#: how this run's number of each published metric is named: the slide AUC of the seed-averaged scores (with
#: its interval, as SUMMARY.md), the accuracy as the mean of the seeds' accuracies
_METRIC_NAMES = {"slide AUC": "test slide AUC of seed-averaged scores",
                 "accuracy (test Youden)": "accuracy at the test set's Youden threshold, mean of seeds"}
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


def paper_vs_reproduced(config: Mapping[str, Any], df: pd.DataFrame, results: Path | None = None) -> pd.DataFrame:
    """Published numbers beside this run's, one row per method and metric, with the paper's source, whether the
    number was checked against the paper itself, and a note whenever the data differ (e.g. the synthetic
    mini-Camelyon vs the real CAMELYON16). A slide AUC is that of the seed-averaged scores with its 95% interval
    (SUMMARY.md's number; needs ``results``), an accuracy the mean of the seeds'."""
    from wsimil.reporting import evidence as ev

    dataset = config["dataset"]["name"]
    seeds = list(config["training"]["seeds"])
    cells = {c.name: c for c in plan_cells(config)}
    nan = math.nan

    def seedavg(cell: str) -> dict[str, tuple[float, float, float]]:
        if results is None or cell not in cells:
            return {}
        iv = ev.auc_intervals(results, cells[cell], seeds)
        return {r.method: (r.slide_auc_seedavg, r.slide_auc_ci_low, r.slide_auc_ci_high) for r in iv.itertuples()}

    std_auc = seedavg("standard")
    std = df[df["experiment"] == "standard"] if "experiment" in df.columns else df.iloc[:0]
    rows = []
    for p in PUBLISHED:
        g = std[std["method"] == p["method"]]
        if p["metric"] == "slide AUC":
            ours = std_auc.get(p["method"], (nan, nan, nan))
        else:
            col = "slide_accuracy_youden_test"
            ours = (_mean(g[col]) if col in g.columns and len(g) else nan, nan, nan)
        same = dataset.lower() in _SAME_DATA.get(p["dataset"], ())
        rows.append({
            **p, "metric": _METRIC_NAMES[p["metric"]], "reproduced_seedavg": ours[0], "reproduced_ci_low": ours[1],
            "reproduced_ci_high": ours[2], "n_seeds": int(g["seed"].nunique()) if len(g) else 0, "our data": dataset,
            "source": _DTFD_SOURCE, "checked against the paper": _DTFD_CHECK,
            "note": "same dataset" if same else "published figure on different data: not comparable as a number",
        })
    pois_auc = seedavg("poison")
    if "poison" in set(df.get("experiment", [])):
        poisoned = df[df["experiment"] == "poison"]
        for m in dict.fromkeys(poisoned["method"]):
            claim = {"attention": "near 0", "max-pooling": "almost unaffected"}.get(_family(m))
            if claim is None:
                continue
            ours = pois_auc.get(m, (nan, nan, nan))
            rows.append({"paper": "FocusMIL (arXiv 2408.09449)", "dataset": "CAMELYON16 + poison",
                         "method": f"{m} ({_family(m)})", "metric": "poisoned " + _METRIC_NAMES["slide AUC"],
                         "published": claim, "reproduced_seedavg": ours[0], "reproduced_ci_low": ours[1],
                         "reproduced_ci_high": ours[2], "n_seeds": int(poisoned[poisoned["method"] == m]["seed"].nunique()),
                         "our data": dataset, "source": _FOCUSMIL_SOURCE, "checked against the paper": _FOCUSMIL_CHECK,
                         "note": "published as a qualitative finding for the family; different data"})
    cols = ["paper", "dataset", "method", "metric", "published", "reproduced_seedavg", "reproduced_ci_low",
            "reproduced_ci_high", "n_seeds", "our data", "source", "checked against the paper", "note"]
    return pd.DataFrame(rows, columns=cols)


def fmt(x: float) -> str:
    """A number as SUMMARY.md writes it: three decimals, n/a for a missing one."""
    return _f(x)


def _p(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else ("< 0.001" if x < 0.001 else f"{x:.3f}")


def reading_text(r) -> str:
    """One reading of a claim (an evidence.Reading): its interval over seeds and slides, seeds, Holm-adjusted p and
    verdict, and the runs it leaves out."""
    parts = [f"{r.seeds} seeds", f"Holm p {_p(r.p_holm)}" if math.isfinite(r.p_holm) else "not in the Holm family"]
    if r.left_out:
        parts.append(f"left out as undertrained: {', '.join(r.left_out)}")
    if r.note:
        parts.append(r.note)
    return f"{r.label} **{r.interval}** ({'; '.join(parts)}): {r.verdict}"


def claim_text(c) -> str:
    """A claim's contrast, interval, pairs, rule and verdict as SUMMARY.md writes them (``c``: an evidence.Claim)."""
    text = f"{c.contrast}: **{c.interval}** (95% interval over seeds and slides"
    if c.is_family:
        text += f", the mean over {len(c.readings)} pairs). Pairs: " + "; ".join(reading_text(r) for r in c.readings)
    elif c.readings:
        text += "). " + reading_text(c.readings[0])
    else:
        text += ")"
    why = f" ({c.why})" if c.why and c.is_family else ""
    return f"{text}. Rule: {c.rule}. Verdict: **{c.verdict}**{why}."


def per_method(config: Mapping[str, Any], df: pd.DataFrame, results: Path | None, cells: Mapping[str, Any],
               cell: str) -> str:
    """Each method's test slide AUC in ``cell``: of the seed-averaged scores with its 95% interval, or the mean of
    the seeds' AUCs when the runs' folder is not at hand."""
    if results is None:
        return ", ".join(f"{m} {_f(_mean(g['slide_auc']))} (mean of the seeds' AUCs)"
                         for m, g in df[df["experiment"] == cell].groupby("method", sort=False))
    from wsimil.reporting import evidence as ev

    iv = ev.auc_intervals(results, cells[cell], list(config["training"]["seeds"]))
    return ", ".join(f"{r.method} {r.slide_auc_seedavg:.3f} [{r.slide_auc_ci_low:.3f}, {r.slide_auc_ci_high:.3f}]"
                     for r in iv.itertuples())


def family_means(df: pd.DataFrame, cell: str, key: str) -> str:
    """Each method's mean over the seeds of the metric ``key`` in ``cell`` (n/a when the runs lack it)."""
    rows = df[df["experiment"] == cell] if "experiment" in df.columns else df.iloc[:0]
    if key not in rows.columns:
        return "n/a"
    return ", ".join(f"{m} {_f(_mean(g[key]))}" for m, g in rows.groupby("method", sort=False))


def findings(config: Mapping[str, Any], df: pd.DataFrame, results: Path | None = None,
             checked: list | None = None) -> list[str]:
    """Markdown paragraphs, one per claim that this run's experiments can test, each with the paired 95%
    interval of the difference it is about and a three-valued verdict (wsimil.reporting.evidence), from every
    configured experiment (:meth:`wsimil.experiments.Experiment.findings`) in SUMMARY order."""
    from wsimil.experiments import configured
    from wsimil.reporting import evidence as ev

    cells = {c.name: c for c in plan_cells(config)}
    results = Path(results) if results is not None else None
    checked = ev.claims(config, results) if checked is None and results is not None else (checked or [])
    by_key = {c.key: c for c in checked}
    out: list[str] = []
    for exp in sorted(configured(config), key=lambda e: e.summary_order):
        out += exp.findings(config, results, cells, df, by_key)
    return out


def convergence_lines(conv: pd.DataFrame) -> list[str]:
    """The training budget, whether the runs converged (judged on their loss trajectories) and how selection went,
    with the cells flagged as not converged."""
    from wsimil.reporting import evidence as ev
    from wsimil.training.loop import PLATEAU_MIN_DELTA, PLATEAU_WINDOW

    if conv.empty:
        return []
    flagged = conv[conv["not_converged"]]
    runs = int(conv["runs"].sum())
    n = {k: int(conv[k].sum()) for k in ("loss_still_falling", "too_short_to_tell", "selected_last_epoch",
                                         "selected_tied_val_auc", "selection_blind")}
    lines = [f"**Training and model selection**: optimiser steps per run {int(conv['steps_min'].min())}–"
             f"{int(conv['steps_max'].max())}, epochs {int(conv['epochs_min'].min())}–{int(conv['epochs_max'].max())} "
             f"(tables/convergence). Convergence is judged on the training loss: a run has converged when the mean "
             f"of its last {PLATEAU_WINDOW} epochs is within {PLATEAU_MIN_DELTA:.0%} of the {PLATEAU_WINDOW} before; "
             f"{n['loss_still_falling']} of {runs} runs ended with the loss still falling and {n['too_short_to_tell']} "
             f"ran fewer than {2 * PLATEAU_WINDOW} epochs, too few to tell. Selection: {n['selected_last_epoch']} "
             f"runs selected their last epoch; {n['selected_tied_val_auc']} selected an epoch whose validation AUC "
             f"another epoch tied (ties go to the earliest); {n['selection_blind']} were **selection blind**, their "
             "validation AUC at its ceiling 1.0 over several epochs."]
    if len(flagged):
        lines[0] += (f" **Not converged** (more than {ev.NOT_CONVERGED_SHARE:.0%} of the runs still falling or too "
                     f"short to tell): {', '.join(flagged['cell'])}.")
    else:
        lines[0] += f" No cell has more than {ev.NOT_CONVERGED_SHARE:.0%} of its runs still falling or too short."
    return lines + [""]


def undertrained_lines(runs: pd.DataFrame, bar: float) -> list[str]:
    """The runs that do not fit their training set (the fit gate), which every claim leaves out with their seed."""
    head = (f"**Fit gate** (`evaluation.fit_bar`): a run fits its training set when its last-epoch model's training "
            f"slide AUC is at least {bar:g}; a run that does not is undertrained and left out of every contrast, with its seed.")
    if runs.empty:
        return [head + " Every run fits.", ""]
    listed = ", ".join(f"{r.cell}/{r.method}/seed{r.seed} ({_f(r.final_train_auc)})" for r in runs.itertuples())
    return [f"{head} **Undertrained** ({len(runs)}): {listed}.", ""]


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
        ext_path = results / "data" / "slides_external.csv"
        ext = pd.read_csv(ext_path, dtype={"slide_id": str}, keep_default_na=False) if ext_path.is_file() else df.iloc[:0]
        more = (f"; and the {len(ext)} test slides again as stained by the held-out hospital "
                f"{', '.join(map(str, sorted(set(ext['center']))))} (data/slides_external.csv, the ood test set)"
                if len(ext) else "")
        lines += [f"**Data**: {len(df)} slides ({'; '.join(parts)}; label 1 = the positive class){more}.", ""]
    if excluded.is_file():
        left = pd.read_csv(excluded, dtype=str, keep_default_na=False)
        if len(left):
            lines += [f"**Slides left out** ({len(left)}):", ""]
            lines += [f"- `{r.slide_id}`: {r.reason}" for r in left.itertuples()] + [""]
        else:
            lines += ["**Slides left out**: none.", ""]
    return lines


def _rst_text(text: str) -> str:
    """Plain text safe inside reStructuredText (inline markup characters escaped)."""
    for ch in ("\\", "*", "`", "|", "_", "[", "]"):
        text = text.replace(ch, "\\" + ch)
    return " ".join(text.split())


def _report_landing(results: Path, dataset: str, claims_df: pd.DataFrame, config: Mapping[str, Any]) -> list[Path]:
    """What the HTML report opens on: ``report_landing.rst``, the report's description once the claims exist
    (the Snakefile's ``report:`` picks it), listing every claim beside its verdict and interval; and
    ``report_metadata.yaml`` (``snakemake --report-metadata``, `make report`), which holds numbers only.

    Snakemake 9 renders each string of ``--report-metadata`` with docutils' ``publish_parts`` and shows the whole
    dict of parts (encoding, errors, version, ...) in place of the value (``snakemake/report/__init__.py``,
    ``render_metadata``), so the claims live in the description and the metadata keeps the counts (numbers
    are shown as they are); a non-empty metadata makes the report open on this page, not the rule graph."""
    import yaml

    tr, feats = config["training"], config["features"]
    lines = [f"wsimil: {_rst_text(dataset)}", "=" * (8 + len(_rst_text(dataset))), "",
             "The claims of FocusMIL (arXiv 2408.09449) and DTFD-MIL (CVPR 2022) as this run shows them: each with "
             "the 95% interval over training seeds and test slides of the difference it is about and a verdict by a "
             "rule fixed before the run (supported, contradicted or inconclusive against the margin, Holm-adjusted; "
             "a family claim method pair by pair; SUMMARY states each rule).", ""]
    for r in claims_df[claims_df["level"] == "claim"].itertuples(index=False):
        lines.append(f"- **{r.verdict}**: {_rst_text(str(r.statement))}. Difference {r.estimate:+.3f}, 95% CI "
                     f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}], margin {r.margin:g}.")
    lines += ["", "Start with the category 01 SUMMARY (SUMMARY.md rendered, with the claims and convergence tables); "
              "then one category per experiment, the run records last.", "",
              f"Methods: {_rst_text(', '.join(map(str, tr['methods'])))}; seeds: {_rst_text(str(tr['seeds']))}; "
              f"feature extractor: {_rst_text(str(feats['extractor']))}. Every run directory records its config, "
              "software versions and git commit in run.json.", ""]
    # Snakemake's report centres the page in a flex box (html_reporter/template/components/content.js,
    # "grow flex items-center justify-center h-screen overflow-auto"): a page taller than the window loses its
    # top, which no scrolling reaches. "safe center" keeps the top in view; the style lives on this page only.
    lines += [".. raw:: html", "",
              "   <style>div.h-screen.items-center{align-items:safe center;justify-content:safe center}</style>", ""]
    # raw: the description goes through Jinja before docutils; nothing of ours is a template
    landing = results / "report_landing.rst"
    write_text_atomic(landing, "{% raw %}\n" + "\n".join(lines) + "\n{% endraw %}\n")
    counts = {f"claims {v}": int(((claims_df["level"] == "claim") & (claims_df["verdict"] == v)).sum())
              for v in ("supported", "contradicted", "inconclusive")}
    meta = results / "report_metadata.yaml"
    write_text_atomic(meta, yaml.safe_dump(counts, sort_keys=False, allow_unicode=True, width=1000))
    return [landing, meta]


def write_summary(config: Mapping[str, Any], results: str | os.PathLike,
                  captions: str | os.PathLike | None = None) -> list[Path]:
    """Write SUMMARY.md, tables/paper_vs_reproduced.* and figures/slide_auc.* under ``results``."""
    from wsimil.reporting.figures import plot_metric_by_method

    results = Path(results)
    seeds = list(config["training"]["seeds"])
    cells = plan_cells(config)
    df = load_metrics(results, cells, seeds)
    dataset = config["dataset"]["name"]
    written: list[Path] = []
    paper = paper_vs_reproduced(config, df, results)
    written += write_table(paper, results / "tables" / "paper_vs_reproduced",
                           "Published numbers beside this run's: a slide AUC is that of the seed-averaged scores with "
                           "its 95% interval (SUMMARY.md's number), an accuracy the mean of the seeds'. Each row names "
                           "the paper's source and whether the number was checked against the paper itself. A published "
                           f"figure on other data is context, not a target ({dataset}).")
    from wsimil.reporting import evidence as ev

    shown = [e for e in ("standard", "ood", "poison") if e in {c.name for c in cells}]
    if not shown:
        raise WsimilError("figures/slide_auc needs one of the experiments standard, ood, poison")
    by_name = {c.name: c for c in cells}
    ivs = pd.concat([ev.auc_intervals(results, by_name[e], seeds).assign(experiment=e) for e in shown], ignore_index=True)
    ivs = ivs.rename(columns={"slide_auc_seedavg": "value", "slide_auc_ci_low": "low", "slide_auc_ci_high": "high"})
    written += plot_metric_by_method(df, "slide_auc", results / "figures" / "slide_auc.png", experiments=shown,
                                     methods=config["training"]["methods"],
                                     intervals=ivs[["experiment", "method", "value", "low", "high"]],
                                     title=f"Test slide AUC per method ({dataset})", ylabel="test slide AUC", chance=0.5)

    checked = ev.claims(config, results)
    claims_df = pd.DataFrame([row for c in checked for row in c.rows()], columns=ev.CLAIM_COLUMNS)
    written += write_table(claims_df, results / "tables" / "claims",
                           "Every claim SUMMARY.md checks (level claim) and, for a family claim, every pair of a "
                           "max-pooling and an attention method (level pair): the difference it is about (each seed's "
                           "single models, averaged over the seeds), its 95% two-stage bootstrap interval over training "
                           f"seeds and test slides, the margin ({ev.MARGIN}), the seeds used and the undertrained runs "
                           "left out, the one-sided p-values of support and contradiction, the Holm-adjusted p over "
                           f"every reading of this summary, and the verdict by the rule fixed before the run ({dataset}).")
    n_readings = sum(math.isfinite(r.p_holm) for c in checked for r in c.readings)
    conv = ev.convergence(results, cells, seeds, ev.fit_bar(config))
    written += write_table(conv, results / "tables" / "convergence",
                           "Per cell: runs, optimiser steps and epochs run (min, max); runs whose training loss was "
                           "still falling at the end and runs too short to tell; runs that selected their last epoch, "
                           "whose selected validation AUC another epoch tied, and whose selection was blind (validation "
                           "AUC at 1.0 over several epochs); undertrained runs (the fit gate); and the not-converged "
                           f"flag (more than {ev.NOT_CONVERGED_SHARE:.0%} of the runs still falling or too short to "
                           f"tell) ({dataset}).")
    lines = [f"# {dataset}: what this run shows", "",
             f"Written by `wsimil summary` from {len(df)} evaluated runs ({len(cells)} cells, seeds {seeds}). Each "
             "claim is read on the papers' quantity, the AUC of a single trained model: per seed the difference of "
             "that seed's models, averaged over the seeds, with the 95% interval of a two-stage bootstrap that draws "
             "the training seeds, then the test slides within each class, every AUC of one difference on the same "
             f"resampled slides ({ev.N_BOOT} resamples). A family claim (max-pooling vs attention) is read on every "
             "pair of a max-pooling and an attention method. Verdicts are three-valued by rules fixed before the "
             f"runs, with a margin of {ev.MARGIN} AUC: a reading is **supported** when its one-sided bootstrap "
             f"p-value of lying beyond the margin in the claimed direction, Holm-adjusted over all {n_readings} "
             f"readings of this summary, is at most {ev.ALPHA}; **contradicted** likewise the other way; "
             f"**inconclusive** otherwise, and always on fewer than {ev.MIN_SEEDS} seeds whose runs fit their "
             "training set. A family claim is **supported** only when no pair contradicts it and a supported pair "
             "remains whichever one method is left out (contradicted likewise). Seed-averaged AUCs in the tables "
             "are the ensemble's, shown beside. Nothing here is edited by hand.", ""]
    lines += data_lines(results)
    lines += convergence_lines(conv)
    lines += undertrained_lines(ev.undertrained(results, cells, seeds, ev.fit_bar(config)), ev.fit_bar(config))
    for para in findings(config, df, results, checked):
        lines += [f"- {para}", ""]
    lines += ["Published numbers beside ours: tables/paper_vs_reproduced.md. Per-experiment tables: tables/; "
              "figures: figures/; the HTML report: `snakemake --report results/report.html`.", ""]
    write_text_atomic(results / "SUMMARY.md", "\n".join(lines))
    written.append(results / "SUMMARY.md")
    written += _report_landing(results, dataset, claims_df, config)
    from wsimil.reporting.html import experiment_page

    page_files = [f for f in summary_outputs() if f.startswith(("tables/", "figures/"))]
    written.append(experiment_page(results, "SUMMARY", f"{dataset}: summary", page_files, captions,
                                   intro_md="\n".join(lines[1:]), config=config))
    expected = {results / f for f in summary_outputs()}
    missing = expected - set(written)
    if missing:
        raise RuntimeError(f"summary did not write {sorted(map(str, missing))}")
    return written
