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
from wsimil.experiments import Cell, dose_cell, dose_levels, experiment_cells, manifest_subpath, plan_cells
from wsimil.features.store import feature_path
from wsimil.h5gate import open_h5
from wsimil.io import WsimilError
from wsimil.reporting.tables import collect_metrics_files, summary_table, write_table

log = logging.getLogger(__name__)

TABLE_EXTS = ("csv", "md", "tex", "html")
FIGURE_EXTS = ("png", "pdf")

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


def _tables(*stems: str) -> list[str]:
    return [f"tables/{s}.{e}" for s in stems for e in TABLE_EXTS]


def _figures(*stems: str) -> list[str]:
    return [f"figures/{s}.{e}" for s in stems for e in FIGURE_EXTS]


def experiment_outputs(config: Mapping[str, Any], experiment: str, has_slides: bool = True) -> list[str]:
    """Files (relative to ``results/<dataset>/``) that :func:`write_experiment` writes for ``experiment``, its
    page (``pages/<experiment>.html``: every table and figure with its caption) last.
    ``has_slides``: the sheet has slide images (heatmaps need them; a features-only dataset has none)."""
    return _experiment_files(config, experiment, has_slides) + [f"pages/{experiment}.html"]


def _experiment_files(config: Mapping[str, Any], experiment: str, has_slides: bool = True) -> list[str]:
    exps = config["experiments"]
    if experiment in ("standard", "ood", "poison"):
        out = _tables(experiment) + _figures(f"roc_{experiment}")
        if experiment in ("standard", "poison") and has_slides:
            out += _figures(f"heatmaps_{experiment}")
        if experiment == "poison" and "standard" in exps:
            out += _tables("poison_comparison") + _figures("poison_comparison")
        if experiment == "ood" and "standard" in exps:
            out += _tables("ood_comparison")
        return out
    if experiment in ("dtfd_ablation", "minet_curves", "dose_response", "milunit"):
        out = _tables(experiment) + _figures(experiment)
        if experiment == "minet_curves" and config["minet_curves"]["betas"]:
            out += _tables("focusmil_beta")
        return out
    if experiment == "focusmil_sensitivity":  # its own rules (rules/studies.smk), no cell
        return _tables(experiment) + [f"tables/{experiment}_runs.csv"] + _figures(experiment)
    raise WsimilError(f"unknown experiment {experiment!r}")


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
    return (["SUMMARY.md"] + _tables("claims", "convergence", "paper_vs_reproduced") + _figures("slide_auc")
            + ["report_landing.rst", "report_metadata.yaml", "pages/SUMMARY.html"])


def all_outputs(config: Mapping[str, Any], has_slides: bool = True) -> list[str]:
    out = [f for e in config["experiments"] for f in experiment_outputs(config, e, has_slides)]
    return out + summary_outputs()


def needs(config: Mapping[str, Any], experiment: str | None) -> list[str]:
    """Cells whose metrics an experiment's outputs read (``None``: the summary, which reads all)."""
    cells = plan_cells(config)
    if experiment is None:
        return [c.name for c in cells]
    own = [c.name for c in experiment_cells(cells, experiment)]
    names = {c.name for c in cells}
    extra: list[str] = []
    if experiment in ("poison", "ood", "dose_response") and "standard" in names:
        extra.append("standard")  # the clean reference (dose 0)
    if experiment == "dose_response" and dose_cell(config, *_poison_point(config)) in names:
        extra.append(dose_cell(config, *_poison_point(config)))  # the poison experiment's point
    return list(dict.fromkeys(own + extra))


def _poison_point(config: Mapping[str, Any]) -> tuple[float, float]:
    return float(config["poison"]["strength"]), float(config["poison"]["fraction"])


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
    """Write every table and figure of ``experiment`` (see :func:`experiment_outputs`) under ``results``, and
    its page with the figure captions of ``captions/<figure>.rst`` (the workflow's report/captions)."""
    results = Path(results)
    seeds = list(config["training"]["seeds"])
    cells = {c.name: c for c in plan_cells(config)}
    dataset = config["dataset"]["name"]
    written: list[Path] = []
    own = experiment_cells(list(cells.values()), experiment)
    df = load_metrics(results, [cells[n] for n in needs(config, experiment)], seeds)
    methods = list(config["training"]["methods"])
    if experiment in ("standard", "ood", "poison"):
        cell = own[0]
        mine = df[df["experiment"] == cell.name]
        table = summary_table(mine, metrics=_present(mine, SLIDE_METRICS), methods=methods)
        table = with_auc_intervals(table, results, cell, seeds)
        written += write_table(table, results / "tables" / experiment, f"{CAPTIONS[experiment]}{PATCH_CAPTION} ({dataset})",
                               brief=BRIEF_COLUMNS)
        from wsimil.reporting.figures import plot_roc_curves

        written += plot_roc_curves(_test_predictions(results, cell, seeds), results / "figures" / f"roc_{experiment}.png",
                                   title=f"ROC, {experiment} test slides ({dataset})")
        if f"figures/heatmaps_{experiment}.png" in experiment_outputs(config, experiment, sheet is not None):
            written += _heatmaps(results, cell, sheet, heatmap_slides, seeds[0], config, experiment)
        if experiment == "poison" and "standard" in cells:
            from wsimil.reporting.figures import plot_poison_comparison

            comp = comparison_table(config, results, df, cells["standard"], cell, ("clean", "poisoned"), methods)
            written += write_table(comp, results / "tables" / "poison_comparison", CAPTIONS["poison_comparison"] + f" ({dataset})")
            written += plot_poison_comparison(df, results / "figures" / "poison_comparison.png", methods=methods,
                                              intervals=comparison_intervals(comp, ("clean", "poisoned"),
                                                                             ("standard", "poison")))
        if experiment == "ood" and "standard" in cells:
            comp = comparison_table(config, results, df, cells["standard"], cell, ("standard", "ood"), methods)
            written += write_table(comp, results / "tables" / "ood_comparison", CAPTIONS["ood_comparison"] + f" ({dataset})")
    elif experiment == "dtfd_ablation":
        from wsimil.reporting.evidence import dtfd_points

        data = dtfd_ablation_data(df, own)
        table = _sweep_table(data, ["n_pseudo_bags", "tier"], "auc").merge(
            dtfd_points(results, own, seeds), on=["n_pseudo_bags", "tier"], how="left")
        table = table[["n_pseudo_bags", "tier", "n_seeds", "auc_seedavg", "auc_mean", "auc_std"]]
        written += write_table(table, results / "tables" / "dtfd_ablation", CAPTIONS["dtfd_ablation"] + f" ({dataset})")
        from wsimil.reporting.figures import plot_dtfd_ablation

        written += plot_dtfd_ablation(data, results / "figures" / "dtfd_ablation.png")
    elif experiment == "minet_curves":
        hist = training_histories(results, own, seeds)
        curves = [c for c in own if not c.params]
        table = summary_table(df[df["experiment"].isin([c.name for c in curves])],
                              metrics=("train_auc", "val_auc", "test_auc"), methods=curves[0].methods)
        from wsimil.reporting.evidence import train_val_gaps

        gaps = pd.concat([train_val_gaps(results, c, seeds) for c in curves], ignore_index=True)
        table = table.merge(gaps, on="method", how="left")
        table["train_minus_val_auc"] = table["train_auc_mean"] - table["val_auc_mean"]
        table = table[["experiment", "method", "n_seeds", "train_auc_seedavg", "val_auc_seedavg",
                       "train_minus_val_seedavg", "train_auc_mean", "train_auc_std", "val_auc_mean", "val_auc_std",
                       "train_minus_val_auc", "test_auc_mean", "test_auc_std"]]
        written += write_table(table, results / "tables" / "minet_curves", CAPTIONS["minet_curves"] + f" ({dataset})")
        betas = [c for c in own if "beta" in c.params]
        if betas:
            rows = df[df["experiment"].isin([c.name for c in betas] + [c.name for c in curves])
                      & (df["method"] == "focusmil")].copy()
            beta_of = {c.name: c.params["beta"] for c in betas}
            rows["beta"] = [beta_of.get(e, _published_beta()) for e in rows["experiment"]]
            written += write_table(_sweep_table(rows, ["beta"], ["train_auc", "val_auc", "test_auc"]),
                                   results / "tables" / "focusmil_beta", CAPTIONS["focusmil_beta"] + f" ({dataset})")
        from wsimil.reporting.figures import plot_training_curves

        written += plot_training_curves(hist, results / "figures" / "minet_curves.png")
    elif experiment == "dose_response":
        data = dose_response_data(config, df)
        table = _sweep_table(data, ["axis", "value", "method"], "auc")
        written += write_table(table, results / "tables" / "dose_response", CAPTIONS["dose_response"] + f" ({dataset})")
        from wsimil.reporting.figures import plot_dose_response

        written += plot_dose_response(data, results / "figures" / "dose_response.png",
                                      fixed_fraction=float(config["poison"]["fraction"]),
                                      fixed_strength=float(config["poison"]["strength"]))
    elif experiment == "milunit":
        mine = df[df["experiment"] == "milunit"]
        table = milunit_table(results, mine, own[0], seeds, methods)
        written += write_table(table, results / "tables" / "milunit", CAPTIONS["milunit"] + f" ({dataset})")
        from wsimil.reporting.figures import plot_metric_by_method

        long = mine.melt(id_vars=["method", "seed"], value_vars=["val_auc", "test_auc"], var_name="split", value_name="auc")
        long["experiment"] = long["split"].map({"val_auc": "validation", "test_auc": "test"})
        written += plot_metric_by_method(long, "auc", results / "figures" / "milunit.png",
                                         experiments=["validation", "test"], methods=methods,
                                         title="MIL unit test: validation vs test AUC", ylabel="bag AUC", chance=0.5,
                                         intervals=pd.concat([pd.DataFrame({
                                             "experiment": name, "method": table["method"],
                                             "value": table[f"{split}_auc_seedavg"], "low": table[f"{split}_auc_ci_low"],
                                             "high": table[f"{split}_auc_ci_high"]})
                                             for split, name in (("val", "validation"), ("test", "test"))],
                                             ignore_index=True))
    else:
        raise WsimilError(f"unknown experiment {experiment!r}")
    from wsimil.reporting.html import experiment_page

    outputs = _experiment_files(config, experiment, sheet is not None)
    written.append(experiment_page(results, experiment, f"{experiment} ({dataset})", outputs, captions,
                                   config=config))
    return written


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


def _published_beta() -> float:
    from wsimil.models.base import get_method

    return float(get_method("focusmil").hparams()["model"]["beta"])


def _sweep_table(df: pd.DataFrame, keys: list[str], metrics: str | list[str]) -> pd.DataFrame:
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

CAPTIONS = {
    "standard": "Standard protocol (clean features, the dataset's train/val/test split): test-split metrics per "
    "method.",
    "ood": "Out-of-distribution (CAMELYON17 protocol): trained and validated on the slides of some centres, tested "
    "on the test slides of the others (section `ood`).",
    "poison": "FocusMIL's poison (green noise in the pixels of a fraction of the patches of normal training/"
    "validation slides and of tumour test slides, features re-extracted): test-split metrics.",
    "poison_comparison": "Test slide AUC on clean vs poisoned data per method: the AUC of the seed-averaged scores "
    "with its 95% interval (SUMMARY.md's and the cards' number), the change poisoned − clean with its 95% interval "
    "(the same test slides resampled together when 'slides paired' says yes), and beside them the mean ± sd of the "
    "seeds' own AUCs. A model that learned 'poison means normal' falls below chance.",
    "ood_comparison": "Test slide AUC on the dataset's own split (standard) vs out of distribution (ood): the AUC of "
    "the seed-averaged scores with its 95% interval (SUMMARY.md's and the cards' number), the change ood − standard "
    "with its 95% interval (a test slide and its copy from the held-out hospital resampled together when 'slides "
    "paired' says yes, the two slide sets independently otherwise), and beside them the mean ± sd of the seeds' own "
    "AUCs.",
    "dtfd_ablation": "DTFD-MIL: test AUC against the number of pseudo-bags per slide. Tier 2 = slide AUC; Tier 1 = "
    "AUC over the test pseudo-bags, each labelled with its slide's label (as the official test loop computes it). "
    "The AUC of the seed-averaged scores (SUMMARY.md's number) and the mean ± sd of the seeds' own AUCs.",
    "minet_curves": "Why mi-Net overfits: AUC of the selected model on the training, validation and test slides. "
    "The train and validation AUC of the seed-averaged scores and their gap (SUMMARY.md's numbers), then the mean ± "
    "sd of the seeds' own AUCs and the difference of their means. Per-epoch curves in figures/minet_curves.",
    "focusmil_beta": "FocusMIL's KL weight beta: training, validation and test AUC of the selected epoch, mean ± sd "
    "of the seeds' own AUCs (the run at wsimil's default beta, 0.01, unpublished, is the `focusmil` run of "
    "minet_curves).",
    "dose_response": "Poison dose-response: test slide AUC against the poison strength (at the configured fraction) "
    "and against the fraction of patches poisoned (at the configured strength); value 0 = clean features. "
    "Mean ± sd of the seeds' own AUCs.",
    "milunit": "Raff & Holt's single-concept MIL unit test: a poison instance only in negative training and "
    "validation bags and only in positive test bags. A model that respects the standard MIL assumption keeps its "
    "validation AUC on test; one that learned 'poison means negative' falls towards 0. Validation and test AUC of "
    "the seed-averaged scores with 95% intervals and SUMMARY.md's reading, then the mean ± sd of the seeds' own "
    "AUCs.",
}
