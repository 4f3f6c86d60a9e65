"""``minet_curves``: why mi-Net overfits, per-epoch training and validation AUC, and FocusMIL's KL weight."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from wsimil.experiments.cells import Cell, fmt_number
from wsimil.experiments.registry import Experiment, ExperimentReport, figures, register_experiment, tables


@register_experiment
class MiNetCurves(Experiment):
    name = "minet_curves"
    description = "per-epoch training and validation AUC and FocusMIL's beta (section `minet_curves`)"
    section = "minet_curves"
    summary_order = 50
    captions = {
        "minet_curves": "Why mi-Net overfits: AUC of the selected model on the training, validation and test slides. "
        "The train and validation AUC of the seed-averaged scores and their gap (SUMMARY.md's numbers), then the mean "
        "± sd of the seeds' own AUCs and the difference of their means. Per-epoch curves in figures/minet_curves.",
        "minet_schedule": "Overfitting over the whole schedule, per method and seed: epochs run and the one "
        "selected; at the end, the last-epoch model's training AUC (in eval mode), the validation AUC and their gap; "
        "the largest train − validation gap of any epoch (running training AUC) and its epoch; the training and "
        "validation loss at the end, the validation loss's minimum, its epoch and how far it rose after it.",
        "focusmil_beta": "FocusMIL's KL weight beta: training, validation and test AUC of the selected epoch, mean ± "
        "sd of the seeds' own AUCs (the run at wsimil's default beta, 0.01, unpublished, is the `focusmil` run of "
        "minet_curves).",
    }

    def cells(self, config: Mapping[str, Any]) -> list[Cell]:
        c = config["minet_curves"]
        return [Cell("minet_curves", "minet_curves", "clean", "main", tuple(c["methods"]))] + [
            Cell(f"minet_curves_beta{fmt_number(beta)}", "minet_curves", "clean", "main", ("focusmil",),
                 overrides={"focusmil": {"model": {"beta": float(beta)}}}, params={"beta": float(beta)})
            for beta in c["betas"]]

    def outputs(self, config: Mapping[str, Any], has_slides: bool = True) -> list[str]:
        out = tables("minet_curves") + tables("minet_schedule") + figures("minet_curves")
        return out + (tables("focusmil_beta") if config["minet_curves"]["betas"] else [])

    def write(self, report: ExperimentReport) -> list[Path]:
        from wsimil.reporting.evidence import schedule_readings, train_val_gaps
        from wsimil.reporting.experiments import published_beta, sweep_table, training_histories
        from wsimil.reporting.figures import plot_training_curves
        from wsimil.reporting.tables import summary_table, write_table

        df, own, seeds = report.metrics, report.own, report.seeds
        hist = training_histories(report.results, own, seeds)
        curves = [c for c in own if not c.params]
        table = summary_table(df[df["experiment"].isin([c.name for c in curves])],
                              metrics=("train_auc", "val_auc", "test_auc"), methods=curves[0].methods)
        gaps = pd.concat([train_val_gaps(report.results, c, seeds) for c in curves], ignore_index=True)
        table = table.merge(gaps, on="method", how="left")
        table["train_minus_val_auc"] = table["train_auc_mean"] - table["val_auc_mean"]
        table = table[["experiment", "method", "n_seeds", "train_auc_seedavg", "val_auc_seedavg",
                       "train_minus_val_seedavg", "train_auc_mean", "train_auc_std", "val_auc_mean", "val_auc_std",
                       "train_minus_val_auc", "test_auc_mean", "test_auc_std"]]
        written = write_table(table, report.table_path("minet_curves"), report.caption("minet_curves"))
        sched = pd.concat([schedule_readings(report.results, c, seeds) for c in curves], ignore_index=True)
        written += write_table(sched, report.table_path("minet_schedule"), report.caption("minet_schedule"))
        betas = [c for c in own if "beta" in c.params]
        if betas:
            rows = df[df["experiment"].isin([c.name for c in betas] + [c.name for c in curves])
                      & (df["method"] == "focusmil")].copy()
            beta_of = {c.name: c.params["beta"] for c in betas}
            rows["beta"] = [beta_of.get(e, published_beta()) for e in rows["experiment"]]
            written += write_table(sweep_table(rows, ["beta"], ["train_auc", "val_auc", "test_auc"]),
                                   report.table_path("focusmil_beta"), report.caption("focusmil_beta"))
        return written + plot_training_curves(hist, report.figure_path("minet_curves"))

    def claims(self, config, results, cells):
        from wsimil.reporting.evidence import minet_claim, fit_bar

        return [minet_claim(results, cells["minet_curves"], list(config["training"]["seeds"]), fit_bar(config))]

    def findings(self, config, results, cells, df, claims) -> list[str]:
        from wsimil.reporting.evidence import schedule_readings, train_val_gaps
        from wsimil.reporting.summary import claim_text, fmt

        if "minet_gap" not in claims or results is None:
            return []
        seeds = list(config["training"]["seeds"])
        gaps = train_val_gaps(results, cells["minet_curves"], seeds)
        txt = ", ".join(f"{r.method} {fmt(r.train_minus_val_seedavg)}" for r in gaps.itertuples())
        sched = schedule_readings(results, cells["minet_curves"], seeds)
        end = "; ".join(
            f"{m} train − validation AUC {'/'.join(fmt(x) for x in g['gap_end'])}, validation loss rose "
            f"{'/'.join(fmt(x) for x in g['val_loss_rise'])} after its minimum"
            for m, g in sched.groupby("method", sort=False))
        return [f"**Why mi-Net overfits.** Train − validation AUC of the selected model's seed-averaged scores: "
                f"{txt}. {claim_text(claims['minet_gap'])} The claim is read at each run's selected epoch, where "
                f"selection on validation removes late overfitting; at the end of the schedule, per seed "
                f"(tables/minet_schedule): {end}."]
