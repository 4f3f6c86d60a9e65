"""``focusmil_sensitivity``: FocusMIL's unpublished choices on validation splits (wsimil.studies.focusmil_sensitivity).

It trains no cell: its runs and its report are rules of their own (rules/studies.smk), and no test slide is read.
"""

from __future__ import annotations

from typing import Any, Mapping

from wsimil.experiments.registry import Experiment, figures, register_experiment, tables


@register_experiment
class FocusMILSensitivity(Experiment):
    name = "focusmil_sensitivity"
    description = "FocusMIL's unpublished choices on validation splits (section `focusmil_sensitivity`)"
    section = "focusmil_sensitivity"
    report_rule = False  # rules/studies.smk

    def outputs(self, config: Mapping[str, Any], has_slides: bool = True) -> list[str]:
        return tables(self.name) + [f"tables/{self.name}_runs.csv"] + figures(self.name)
