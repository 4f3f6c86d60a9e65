"""Each experiment's tables and figures from its evaluated runs, and what the workflow declares they are.

:func:`experiment_outputs` names the files an experiment writes (paths under ``results/<dataset>/``), so the
Snakefile and :func:`write_experiment` agree; :func:`needs` names the cells whose ``metrics.json`` they read.
Every table is written as csv (numbers), markdown and LaTeX (mean ± std over seeds); every figure as PNG
and PDF.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from wsimil.evaluation.evaluate import read_instance_scores, read_predictions
from wsimil.experiments import Cell, dose_cell, dose_levels, manifest_subpath, plan_cells
from wsimil.experiments.registry import (FIGURE_EXTS, TABLE_EXTS, ExperimentReport, configured, figures, get_experiment,
                                         needs, tables)
from wsimil.features.store import feature_path
from wsimil.h5gate import open_h5
from wsimil.io import WsimilError
from wsimil.reporting.tables import collect_metrics_files, summary_table, write_table

log = logging.getLogger(__name__)

#: the test-split metrics of the per-experiment tables, in column order (those the runs have)
SLIDE_METRICS = (
    "slide_auc", "slide_accuracy", "slide_f1",
    "slide_accuracy_valthr", "slide_f1_valthr", "slide_accuracy_youden_test", "slide_f1_youden_test",
    "patch_auc_tumour_slides", "patch_ap_tumour_slides", "patch_auc_tumour_slides_any", "patch_ap_tumour_slides_any",
    "patch_auc_all_slides", "patch_ap_all_slides", "froc",
)  # fmt: skip
PATCH_CAPTION = (
    " Slide AUC of seed-averaged scores: the AUC of each slide's mean score over the seeds (SUMMARY.md's number), "
    "with a 95% stratified bootstrap interval over the test slides (2000 resamples; docs/metrics.md). Every other "
    "column is the mean ± sd of the seeds' own values."
    " Accuracy and F1 at threshold 0.5, at the threshold chosen on the validation split (Youden's J) and at the "
    "test set's own Youden threshold (as the official DTFD-MIL and DSMIL code report; optimistic). Patch AUC / AP: "
    "per-patch scores against the annotations, a patch is tumour when its tumour fraction is >= 0.5 ('any': when it "
    "holds any tumour, isolated tumour cells included). FROC: "
    "CAMELYON16 lesion-level score from each method's patch heatmap (docs/metrics.md)."
)


def experiment_outputs(config: Mapping[str, Any], experiment: str, has_slides: bool = True) -> list[str]:
    """Files (relative to ``results/<dataset>/``) that the report of ``experiment`` writes
    (:meth:`wsimil.experiments.Experiment.outputs`), its page (``pages/<experiment>.html``: every table and figure
    with its caption) last. ``has_slides``: the sheet has slide images (heatmaps need them)."""
    return get_experiment(experiment).outputs(config, has_slides) + [f"pages/{experiment}.html"]


def heatmap_slide_ids(sheet: pd.DataFrame, tumour: int = 2, normal: int = 1) -> list[str]:
    """The test slides the heatmap figures show: the first ``tumour`` tumour and the first ``normal`` normal
    test slides in sheet order (fixed before any run, not picked by how their heatmaps look)."""
    test = sheet[sheet["split"] == "test"]
    return (list(test.loc[test["label"] == 1, "slide_id"][:tumour])
            + list(test.loc[test["label"] == 0, "slide_id"][:normal]))


def card_outputs(config: Mapping[str, Any]) -> list[str]:
    """``cards/<method>.{md,csv,html,png,pdf}`` of every method of the standard cell, and ``cards/cards.csv``."""
    if "standard" not in config["experiments"]:
        return []
    return ["cards/cards.csv"] + [f"cards/{m}.{e}" for m in config["training"]["methods"]
                                  for e in ("md", "csv", "html", "png", "pdf")]


def summary_outputs() -> list[str]:
    return (["SUMMARY.md"] + tables("claims", "convergence", "paper_vs_reproduced") + figures("slide_auc")
            + ["report_landing.rst", "report_metadata.yaml", "pages/SUMMARY.html"])


def all_outputs(config: Mapping[str, Any], has_slides: bool = True) -> list[str]:
    out = [f for e in configured(config) for f in experiment_outputs(config, e.name, has_slides)]
    return out + summary_outputs()


# ------------------------------------------------------------------------------------------------ loading


def run_dir(results: Path, cell: str, method: str, seed: int) -> Path:
    return results / "runs" / cell / method / f"seed{seed}"


def load_metrics(results: Path, cells: Sequence[Cell], seeds: Sequence[int]) -> pd.DataFrame:
    """One row per run of ``cells`` (``experiment`` = the cell's name, as in the run's path)."""
    paths = [run_dir(results, c.name, m, s) / "metrics.json" for c in cells for m in c.methods for s in seeds]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise WsimilError(f"metrics file not found: {missing[0]} (and {len(missing) - 1} more); evaluate the runs first")
    return collect_metrics_files(paths)


def _present(df: pd.DataFrame, cols: Sequence[str]) -> list[str]:
    return [c for c in cols if c in df.columns and df[c].notna().any()]


# ------------------------------------------------------------------------------------------------ writers


def write_experiment(
    config: Mapping[str, Any], experiment: str, results: str | os.PathLike, sheet: pd.DataFrame | None = None,
    heatmap_slides: Sequence[str] = (), captions: str | os.PathLike | None = None,
) -> list[Path]:
    """Write every table and figure of ``experiment`` (see :func:`experiment_outputs`) under ``results`` with its
    :meth:`~wsimil.experiments.Experiment.write`, and its page with the figure captions of ``captions/<figure>.rst``
    (the workflow's report/captions; a plugin's own ``captions_dir`` first)."""
    from wsimil.reporting.html import experiment_page

    results = Path(results)
    exp = get_experiment(experiment)
    if not exp.report_rule:
        raise WsimilError(f"experiment {experiment} writes its report with rules of its own, not `wsimil report`")
    seeds = list(config["training"]["seeds"])
    cells = {c.name: c for c in plan_cells(config)}
    if experiment not in set(config["experiments"]):
        raise WsimilError(f"experiment {experiment} is not in the config's experiments {list(config['experiments'])}")
    df = load_metrics(results, [cells[n] for n in needs(config, experiment)], seeds)
    report = ExperimentReport(config, results, cells, df, sheet, heatmap_slides, exp)
    written = list(exp.write(report))
    outputs = exp.outputs(config, sheet is not None)
    missing = sorted({str(results / f) for f in outputs} - {str(p) for p in written})
    if missing:
        raise WsimilError(f"experiment {experiment} did not write {missing[:5]}")
    written.append(experiment_page(results, experiment, f"{experiment} ({config['dataset']['name']})", outputs,
                                   exp.captions_dir or captions, config=config))
    return written


def write_cell_report(report: ExperimentReport, cell: Cell) -> list[Path]:
    """The table of one cell's test-split metrics (``tables/<experiment>``: slide AUC of the seed-averaged scores
    with its interval, the seeds' mean ± sd of every metric), its ROC curves (``figures/roc_<experiment>``) and,
    where the experiment lists them, the heatmaps of the heatmap slides (``figures/heatmaps_<experiment>``)."""
    from wsimil.reporting.figures import plot_roc_curves

    name, results, seeds, df = report.experiment.name, report.results, report.seeds, report.metrics
    mine = df[df["experiment"] == cell.name]
    table = summary_table(mine, metrics=_present(mine, SLIDE_METRICS), methods=report.methods)
    table = with_auc_intervals(table, results, cell, seeds)
    written = write_table(table, report.table_path(name),
                          f"{report.experiment.captions[name]}{PATCH_CAPTION} ({report.dataset})", brief=BRIEF_COLUMNS)
    written += plot_roc_curves(_test_predictions(results, cell, seeds), report.figure_path(f"roc_{name}"),
                               title=f"ROC, {name} test slides ({report.dataset})")
    if f"figures/heatmaps_{name}.png" in report.experiment.outputs(report.config, report.sheet is not None):
        written += _heatmaps(results, cell, report.sheet, report.heatmap_slides, seeds[0], report.config, name)
    return written


def write_comparison(report: ExperimentReport, cell: Cell, tags: tuple[str, str]) -> tuple[pd.DataFrame, list[Path]]:
    """The experiment's cell against ``standard``: :func:`comparison_table` written as
    ``tables/<experiment>_comparison`` with its caption; the table and the paths written."""
    comp = comparison_table(report.config, report.results, report.metrics, report.cells["standard"], cell, tags,
                            report.methods)
    stem = f"{report.experiment.name}_comparison"
    return comp, write_table(comp, report.table_path(stem), report.caption(stem))


def with_auc_intervals(table: pd.DataFrame, results: Path, cell: Cell, seeds: Sequence[int]) -> pd.DataFrame:
    """``table`` with, after n_seeds, the slide AUC of each method's seed-averaged score and its 95% stratified
    bootstrap interval over the test slides (wsimil.reporting.evidence.auc_intervals)."""
    from wsimil.reporting.evidence import auc_intervals

    iv = auc_intervals(results, cell, seeds).drop(columns=["n_test", "n_test_pos"])
    out = table.merge(iv, on="method", how="left")
    cols = list(table.columns)
    at = cols.index("n_seeds") + 1
    return out[cols[:at] + list(iv.columns[1:]) + cols[at:]]


def comparison_table(config: Mapping[str, Any], results: Path, df: pd.DataFrame, base: Cell, other: Cell,
                     tags: tuple[str, str], methods: Sequence[str]) -> pd.DataFrame:
    """Per method: the test slide AUC of the seed-averaged scores on ``base`` and ``other`` with 95% intervals,
    the change other − base with its interval (:func:`wsimil.reporting.evidence.auc_changes`: the cards' and
    SUMMARY's numbers), whether the slides were paired, then each cell's per-seed AUC, mean and sd.
    ``tags``: the column prefixes of the two cells (``("clean", "poisoned")``, ``("standard", "ood")``)."""
    from wsimil.reporting.evidence import auc_changes

    ch = auc_changes(config, results, base, other, list(config["training"]["seeds"]), methods)
    a, b = tags
    key = "poison" if b == "poisoned" else b
    out = pd.DataFrame({"method": ch["method"]})
    for tag, side in ((a, "base"), (b, "other")):
        out[f"{tag}_slide_auc_seedavg"] = ch[f"{side}_auc"]
        out[f"{tag}_slide_auc_ci_low"] = ch[f"{side}_ci_low"]
        out[f"{tag}_slide_auc_ci_high"] = ch[f"{side}_ci_high"]
    out[f"change_{key}_seedavg"] = ch["change"]
    out[f"change_{key}_ci_low"] = ch["change_ci_low"]
    out[f"change_{key}_ci_high"] = ch["change_ci_high"]
    out["slides paired"] = np.where(ch["paired"], "yes", "no")
    for tag, cell in ((a, base), (b, other)):
        per = summary_table(df[df["experiment"] == cell.name], metrics=("slide_auc",), methods=methods)
        per = per.set_index("method").reindex(out["method"])
        out[f"{tag}_n_seeds"] = per["n_seeds"].to_numpy()
        out[f"{tag}_slide_auc_mean"] = per["slide_auc_mean"].to_numpy()
        out[f"{tag}_slide_auc_std"] = per["slide_auc_std"].to_numpy()
    return out


def comparison_intervals(comp: pd.DataFrame, tags: tuple[str, str], experiments: tuple[str, str]) -> pd.DataFrame:
    """The seed-averaged AUCs of a :func:`comparison_table` in the long form the figures take (experiment,
    method, value, low, high)."""
    parts = [pd.DataFrame({"experiment": exp, "method": comp["method"], "value": comp[f"{tag}_slide_auc_seedavg"],
                           "low": comp[f"{tag}_slide_auc_ci_low"], "high": comp[f"{tag}_slide_auc_ci_high"]})
             for tag, exp in zip(tags, experiments)]
    return pd.concat(parts, ignore_index=True)


def milunit_table(results: Path, df: pd.DataFrame, cell: Cell, seeds: Sequence[int],
                  methods: Sequence[str]) -> pd.DataFrame:
    """Per method: validation and test AUC of the seed-averaged scores with 95% intervals and the reading
    (:func:`wsimil.reporting.evidence.milunit_readings`, SUMMARY's), then the seeds' own AUCs, mean and sd."""
    from wsimil.reporting.evidence import milunit_readings

    r = milunit_readings(results, cell, seeds)
    out = pd.DataFrame({"method": r["method"], "n_seeds": len(seeds)})
    for split in ("val", "test"):
        out[f"{split}_auc_seedavg"] = r[f"{split}_auc"]
        out[f"{split}_auc_ci_low"] = r[f"{split}_ci_low"]
        out[f"{split}_auc_ci_high"] = r[f"{split}_ci_high"]
    out["val_minus_test_seedavg"] = r["val_auc"] - r["test_auc"]
    out["reading"] = r["reading"]
    per = summary_table(df, metrics=("val_auc", "test_auc"), methods=methods).set_index("method").reindex(out["method"])
    for col in ("val_auc_mean", "val_auc_std", "test_auc_mean", "test_auc_std"):
        out[col] = per[col].to_numpy()
    return out


def published_beta() -> float:
    from wsimil.models.base import get_method

    return float(get_method("focusmil").hparams()["model"]["beta"])


def sweep_table(df: pd.DataFrame, keys: list[str], metrics: str | list[str]) -> pd.DataFrame:
    """Mean, std and seed count of ``metrics`` per value of ``keys`` (rows in the order of first appearance)."""
    metrics = [metrics] if isinstance(metrics, str) else metrics
    rows = []
    for key, g in df.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(keys, key))
        row["n_seeds"] = int(g["seed"].nunique())
        for m in metrics:
            v = pd.to_numeric(g[m], errors="coerce")
            row[f"{m}_mean"] = float(v.mean()) if v.notna().all() else float("nan")
            row[f"{m}_std"] = float(v.std(ddof=1)) if len(v) > 1 and v.notna().all() else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def _test_predictions(results: Path, cell: Cell, seeds: Sequence[int]) -> pd.DataFrame:
    parts = []
    for m in cell.methods:
        for s in seeds:
            p = read_predictions(run_dir(results, cell.name, m, s) / "predictions.csv")
            p = p[p["split"] == "test"]
            parts.append(pd.DataFrame({"method": m, "seed": s, "label": p["label"], "score": p["score"]}))
    return pd.concat(parts, ignore_index=True)


def dtfd_ablation_data(df: pd.DataFrame, cells: Sequence[Cell]) -> pd.DataFrame:
    """Rows n_pseudo_bags, seed, tier, auc from the runs' metrics: Tier 2 = the test slide AUC; Tier 1 =
    ``tier1_test_auc``, the AUC over the test pseudo-bags, each labelled with its slide (the official test
    loop's First-Tier AUC, computed over pseudo-bags, not slides; ``evaluate`` reads ``pseudo_bags.csv``)."""
    rows = []
    for cell in cells:
        if "tier1_test_auc" not in df.columns:
            raise WsimilError(f"runs of {cell.name} have no tier1_test_auc in metrics.json (no pseudo_bags.csv?)")
        for _, r in df[df["experiment"] == cell.name].iterrows():
            m, s = cell.params["n_pseudo_bags"], int(r["seed"])
            rows.append({"n_pseudo_bags": m, "seed": s, "tier": "Tier 2", "auc": r["slide_auc"]})
            rows.append({"n_pseudo_bags": m, "seed": s, "tier": "Tier 1", "auc": r["tier1_test_auc"]})
    return pd.DataFrame(rows, columns=["n_pseudo_bags", "seed", "tier", "auc"]).astype({"auc": float})


def training_histories(results: Path, cells: Sequence[Cell], seeds: Sequence[int]) -> pd.DataFrame:
    """Per-epoch train and validation AUC (history.csv) of every run, ``method`` labelled with the swept beta,
    and the epoch the run selected (run.json ``best_epoch``)."""
    parts = []
    for cell in cells:
        for m in cell.methods:
            label = f"{m} (beta={cell.params['beta']:g})" if "beta" in cell.params else m
            for s in seeds:
                d = run_dir(results, cell.name, m, s)
                h = pd.read_csv(d / "history.csv")
                for col in ("epoch", "train_auc", "val_auc"):
                    if col not in h.columns:
                        raise WsimilError(f"{d / 'history.csv'}: no column {col!r}")
                try:
                    best = int(json.loads((d / "run.json").read_text())["best_epoch"])
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    raise WsimilError(f"{d / 'run.json'}: no readable best_epoch ({type(exc).__name__})") from exc
                parts.append(h[["epoch", "train_auc", "val_auc"]].assign(method=label, seed=s, selected_epoch=best))
    return pd.concat(parts, ignore_index=True)[["method", "seed", "epoch", "train_auc", "val_auc", "selected_epoch"]]


def _poison_point(config: Mapping[str, Any]) -> tuple[float, float]:
    return float(config["poison"]["strength"]), float(config["poison"]["fraction"])


def dose_response_data(config: Mapping[str, Any], df: pd.DataFrame) -> pd.DataFrame:
    """Rows method, seed, axis (strength | fraction), value, auc: the test slide AUC at every dose level, the
    clean ``standard`` runs at value 0 on both axes."""
    d = config["dose_response"]
    methods = list(d["methods"] or config["training"]["methods"])
    s0, f0 = _poison_point(config)
    points: list[tuple[str, float, str]] = []
    if "standard" in set(df["experiment"]):
        points += [("strength", 0.0, "standard"), ("fraction", 0.0, "standard")]
    for strength, fraction in dose_levels(config):
        cell = dose_cell(config, strength, fraction)
        if fraction == f0:
            points.append(("strength", strength, cell))
        if strength == s0:
            points.append(("fraction", fraction, cell))
    rows = []
    for axis, value, cell in sorted(points, key=lambda p: (p[0] != "strength", p[1])):
        g = df[(df["experiment"] == cell) & df["method"].isin(methods)]
        for _, r in g.iterrows():
            rows.append({"method": r["method"], "seed": int(r["seed"]), "axis": axis, "value": value, "auc": r["slide_auc"]})
    out = pd.DataFrame(rows, columns=["method", "seed", "axis", "value", "auc"])
    order = {m: i for i, m in enumerate(methods)}
    return out.sort_values(["axis", "method", "value"], key=lambda c: c.map(order) if c.name == "method" else c,
                           kind="stable").reset_index(drop=True)


def _heatmaps(results: Path, cell: Cell, sheet: pd.DataFrame, slide_ids: Sequence[str], seed: int,
              config: Mapping[str, Any], experiment: str) -> list[Path]:
    """Heatmaps of ``slide_ids`` (test slides) for every method of ``cell``, seed ``seed``."""
    from wsimil.datasets.sheet import resolve
    from wsimil.reporting.heatmaps import plot_heatmaps

    rows = sheet.set_index("slide_id")
    sheet_path = Path(sheet.attrs.get("path", "slides.csv"))  # relative paths in it are relative to its folder
    feats_dir = results / manifest_subpath(cell)
    slides, scores, marked = [], {}, {}
    for sid in slide_ids:
        with open_h5(feature_path(feats_dir, sid)) as f:
            coords = f["coords"][:]
            size = int(f.attrs["level0_size"])
            if "poisoned" in f:  # a poisoned feature set: outline the patches that carry the green noise
                marked[sid] = np.asarray(f["poisoned"][()], dtype=bool)
        ann = str(rows.loc[sid, "annotation"]) if "annotation" in rows.columns else ""
        slides.append({
            "slide_id": sid, "path": str(resolve(sheet_path, str(rows.loc[sid, "path"]))),
            "annotation": str(resolve(sheet_path, ann)) if ann and ann != "nan" else None,
            "coords": coords, "patch_size_level0": size,
        })
    columns: list[str] = []
    for m in cell.methods:
        run = run_dir(results, cell.name, m, seed)
        maps = _score_maps(run / "score_maps.h5", list(slide_ids))
        what = _score_name(run / "instance_scores.h5")
        main = f"{m} ({what})" if maps and what else m  # name both quantities where a method shows two
        columns.append(main)
        inst = read_instance_scores(run / "instance_scores.h5", list(slide_ids))
        for sid in slide_ids:
            scores[(sid, main)] = inst[sid]
        for name, per_slide in maps.items():
            columns.append(f"{m} ({name})")
            for sid in slide_ids:
                scores[(sid, f"{m} ({name})")] = per_slide[sid]
    return plot_heatmaps(slides, columns, scores, results / "figures" / f"heatmaps_{experiment}.png",
                         marked=marked or None)


def _score_name(path: Path) -> str | None:
    """What a run's instance scores are (``instance_scores.h5`` attr ``score``; None for older runs)."""
    with open_h5(path, "instance scores file") as f:
        name = f.attrs.get("score")
    return None if name is None else str(name)


def _score_maps(path: Path, slide_ids: list[str]) -> dict[str, dict[str, np.ndarray]]:
    """The other heatmap quantities of a run (``score_maps.h5``): name -> slide id -> (N,); {} if none."""
    if not path.is_file():
        return {}
    out: dict[str, dict[str, np.ndarray]] = {}
    with open_h5(path, "score maps file") as f:
        for name in f:
            missing = [s for s in slide_ids if s not in f[name]]
            if missing:
                raise WsimilError(f"{path}: map {name!r} has no scores for slides {missing[:5]}")
            out[name] = {s: np.asarray(f[name][s][()], dtype=np.float64).reshape(-1) for s in slide_ids}
    return out


#: the columns of the standard / ood / poison tables in their .md, .tex and .html (the CSV keeps all of them)
BRIEF_COLUMNS = ("method", "n seeds", "slide AUC of seed-averaged scores [95% CI]", "slide AUC, mean ± sd of seeds",
                 "accuracy, mean ± sd of seeds", "F1, mean ± sd of seeds",
                 "patch AUC, any tumour (test tumour slides), mean ± sd of seeds", "FROC, mean ± sd of seeds")
