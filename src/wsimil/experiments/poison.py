"""``poison``: FocusMIL's semi-synthetic poison, green noise in the pixels of some patches, features re-extracted."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from wsimil.experiments.cells import Cell, poison_tag
from wsimil.experiments.registry import Experiment, ExperimentReport, figures, register_experiment, tables


@register_experiment
class Poison(Experiment):
    name = "poison"
    description = "FocusMIL's semi-synthetic poison (section `poison`)"
    section = "poison"
    needs_pixels = True
    in_cards = True
    summary_order = 20
    captions = {
        "poison": "FocusMIL's poison (green noise in the pixels of a fraction of the patches of normal training/"
        "validation slides and of tumour test slides, features re-extracted): test-split metrics.",
        "poison_comparison": "Test slide AUC on clean vs poisoned data per method: the AUC of the seed-averaged "
        "scores with its 95% interval (SUMMARY.md's and the cards' number), the change poisoned − clean with its 95% "
        "interval (the same test slides resampled together when 'slides paired' says yes), and beside them the mean "
        "± sd of the seeds' own AUCs. A model that learned 'poison means normal' falls below chance.",
    }

    def cells(self, config: Mapping[str, Any]) -> list[Cell]:
        p = config["poison"]
        return [Cell("poison", "poison", poison_tag(p["strength"], p["fraction"], p["seed"]), "main",
                     tuple(config["training"]["methods"]), params={"strength": p["strength"], "fraction": p["fraction"]})]

    def reads(self, config, planned: Sequence[Cell]) -> list[str]:
        return ["poison"] + (["standard"] if any(c.name == "standard" for c in planned) else [])

    def outputs(self, config: Mapping[str, Any], has_slides: bool = True) -> list[str]:
        out = tables("poison") + figures("roc_poison") + (figures("heatmaps_poison") if has_slides else [])
        if "standard" in config["experiments"]:
            out += tables("poison_comparison") + figures("poison_comparison")
        return out

    def write(self, report: ExperimentReport) -> list[Path]:
        from wsimil.reporting.experiments import comparison_intervals, write_cell_report, write_comparison
        from wsimil.reporting.figures import plot_poison_comparison

        cell = report.own[0]
        written = write_cell_report(report, cell)
        if "standard" in report.cells:
            comp, tables_written = write_comparison(report, cell, ("clean", "poisoned"))
            written += tables_written
            written += plot_poison_comparison(report.metrics, report.figure_path("poison_comparison"),
                                              methods=report.methods,
                                              intervals=comparison_intervals(comp, ("clean", "poisoned"),
                                                                             ("standard", "poison")))
        return written

    def claims(self, config, results, cells):
        from wsimil.reporting.evidence import poison_claim, fit_bar

        if "standard" not in cells:
            return []
        return [poison_claim(results, cells, list(config["training"]["seeds"]), fit_bar(config))]

    def findings(self, config, results, cells, df, claims) -> list[str]:
        from wsimil.reporting.summary import claim_text, per_method

        if "poison" not in claims:
            return []
        return [f"**FocusMIL: max-pooling resists the poison, attention does not.** Poisoned test slide AUC: "
                f"{per_method(config, df, results, cells, 'poison')}. {claim_text(claims['poison'])}"]
