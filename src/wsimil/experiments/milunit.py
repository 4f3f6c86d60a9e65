"""``milunit``: Raff & Holt's single-concept MIL unit test, a poison only in negative training bags."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from wsimil.experiments.cells import Cell
from wsimil.experiments.registry import Experiment, ExperimentReport, figures, register_experiment, tables


@register_experiment
class MILUnitTest(Experiment):
    name = "milunit"
    description = "Raff & Holt's single-concept poison unit test (section `milunit`)"
    section = "milunit"
    in_cards = True
    summary_order = 70
    captions = {"milunit": "Raff & Holt's single-concept MIL unit test: a poison instance only in negative training "
                "and validation bags and only in positive test bags. A model that respects the standard MIL "
                "assumption keeps its validation AUC on test; one that learned 'poison means negative' falls towards "
                "0. Validation and test AUC of the seed-averaged scores with 95% intervals and SUMMARY.md's reading, "
                "then the mean ± sd of the seeds' own AUCs."}

    def cells(self, config: Mapping[str, Any]) -> list[Cell]:
        return [Cell("milunit", "milunit", "milunit", "milunit", tuple(config["training"]["methods"]))]

    def outputs(self, config: Mapping[str, Any], has_slides: bool = True) -> list[str]:
        return tables("milunit") + figures("milunit")

    def write(self, report: ExperimentReport) -> list[Path]:
        from wsimil.reporting.experiments import milunit_table
        from wsimil.reporting.figures import plot_metric_by_method
        from wsimil.reporting.tables import write_table

        mine = report.metrics[report.metrics["experiment"] == "milunit"]
        table = milunit_table(report.results, mine, report.own[0], report.seeds, report.methods)
        written = write_table(table, report.table_path("milunit"), report.caption("milunit"))
        long = mine.melt(id_vars=["method", "seed"], value_vars=["val_auc", "test_auc"], var_name="split",
                         value_name="auc")
        long["experiment"] = long["split"].map({"val_auc": "validation", "test_auc": "test"})
        intervals = pd.concat([pd.DataFrame({
            "experiment": name, "method": table["method"], "value": table[f"{split}_auc_seedavg"],
            "low": table[f"{split}_auc_ci_low"], "high": table[f"{split}_auc_ci_high"]})
            for split, name in (("val", "validation"), ("test", "test"))], ignore_index=True)
        return written + plot_metric_by_method(long, "auc", report.figure_path("milunit"),
                                               experiments=["validation", "test"], methods=report.methods,
                                               title="MIL unit test: validation vs test AUC", ylabel="bag AUC",
                                               chance=0.5, intervals=intervals)

    def findings(self, config, results, cells, df, claims) -> list[str]:
        from wsimil.reporting import evidence as ev

        if results is None:
            return []
        r = ev.milunit_readings(results, cells["milunit"], list(config["training"]["seeds"]))
        groups = {k: ", ".join(g["method"]) for k, g in r.groupby("reading", sort=False)}
        return ["**MIL unit test (Raff & Holt).** Validation AUC → test AUC [95% interval] of the seed-averaged "
                "scores: " + ", ".join(f"{x.method} {x.val_auc:.3f} → {x.test_auc:.3f} [{x.test_ci_low:.3f}, "
                                       f"{x.test_ci_high:.3f}]" for x in r.itertuples())
                + f". Rule: a method whose validation AUC is below {ev.LEARN_BAR} **did not learn the task**; "
                  "otherwise it **learned the poison** when its test interval lies below 0.5, **respects the MIL "
                  "assumption** when it lies above 0.5, and is inconclusive otherwise. Readings: "
                + "; ".join(f"{k}: {v}" for k, v in groups.items()) + "."]
