"""``dose_response``: test AUC against the poison's strength and the fraction of patches it covers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from wsimil.experiments.cells import Cell, dose_cell, dose_levels, poison_tag
from wsimil.experiments.registry import Experiment, ExperimentReport, figures, register_experiment, tables


@register_experiment
class DoseResponse(Experiment):
    name = "dose_response"
    description = "AUC against poison strength and fraction (section `dose_response`)"
    section = "dose_response"
    needs_pixels = True
    summary_order = 60
    captions = {"dose_response": "Poison dose-response: test slide AUC against the poison strength (at the configured "
                "fraction) and against the fraction of patches poisoned (at the configured strength); value 0 = clean "
                "features. Mean ± sd of the seeds' own AUCs."}

    def cells(self, config: Mapping[str, Any]) -> list[Cell]:
        d, seed = config["dose_response"], config["poison"]["seed"]
        methods = tuple(d["methods"] or config["training"]["methods"])
        out = []
        for strength, fraction in dose_levels(config):
            name = dose_cell(config, strength, fraction)
            if name != "poison":  # else the poison cell is this point
                out.append(Cell(name, "dose_response", poison_tag(strength, fraction, seed), "main", methods,
                                params={"strength": strength, "fraction": fraction}))
        return out

    def reads(self, config, planned: Sequence[Cell]) -> list[str]:
        names = {c.name for c in planned}
        own = [c.name for c in planned if c.experiment == self.name]
        point = dose_cell(config, float(config["poison"]["strength"]), float(config["poison"]["fraction"]))
        # the clean reference (dose 0), and the poison experiment's point
        return own + [n for n in ("standard", point) if n in names]

    def outputs(self, config: Mapping[str, Any], has_slides: bool = True) -> list[str]:
        return tables("dose_response") + figures("dose_response")

    def write(self, report: ExperimentReport) -> list[Path]:
        from wsimil.reporting.experiments import dose_response_data, sweep_table
        from wsimil.reporting.figures import plot_dose_response
        from wsimil.reporting.tables import write_table

        data = dose_response_data(report.config, report.metrics)
        table = sweep_table(data, ["axis", "value", "method"], "auc")
        written = write_table(table, report.table_path("dose_response"), report.caption("dose_response"))
        return written + plot_dose_response(data, report.figure_path("dose_response"),
                                            fixed_fraction=float(report.config["poison"]["fraction"]),
                                            fixed_strength=float(report.config["poison"]["strength"]))

    def findings(self, config, results, cells, df, claims) -> list[str]:
        return [f"**Poison dose-response (beyond the papers).** {len(dose_levels(config))} poison levels; the curves "
                "are in figures/dose_response and the numbers in tables/dose_response. No claim of the papers is "
                "checked here: it shows at which strength and fraction each method starts to follow the poison."]
