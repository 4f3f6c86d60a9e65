"""``standard``: every method on clean features with the dataset's own train/validation/test split."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from wsimil.experiments.cells import Cell
from wsimil.experiments.registry import Experiment, ExperimentReport, figures, register_experiment, tables


@register_experiment
class Standard(Experiment):
    name = "standard"
    description = "clean features, the dataset's own splits"
    in_cards = True
    summary_order = 10
    captions = {"standard": "Standard protocol (clean features, the dataset's train/val/test split): test-split "
                "metrics per method."}

    def cells(self, config: Mapping[str, Any]) -> list[Cell]:
        return [Cell("standard", "standard", "clean", "main", tuple(config["training"]["methods"]))]

    def outputs(self, config: Mapping[str, Any], has_slides: bool = True) -> list[str]:
        return tables("standard") + figures("roc_standard") + (figures("heatmaps_standard") if has_slides else [])

    def write(self, report: ExperimentReport) -> list[Path]:
        from wsimil.reporting.experiments import write_cell_report

        return write_cell_report(report, report.own[0])

    def claims(self, config, results, cells):
        from wsimil.reporting.evidence import patch_claim

        if config["dataset"]["source"] == "features":  # no tumour annotations: no patch labels
            return []
        return [patch_claim(config, results, cells["standard"], list(config["training"]["seeds"]))]

    def findings(self, config, results, cells, df, claims) -> list[str]:
        from wsimil.reporting import evidence as ev
        from wsimil.reporting.summary import claim_text, family_means, per_method

        out: list[str] = []
        if results is not None:
            ctx = ev.clean_context(results, cells["standard"], list(config["training"]["seeds"]))
            out.append(f"**Clean data (standard).** Test slide AUC of the seed-averaged scores [95% interval]: "
                       f"{per_method(config, df, results, cells, 'standard')}. Max-pooling mean − attention mean: "
                       f"{'n/a' if ctx is None else ctx}. The papers report both families close on clean CAMELYON16; "
                       "this is context, not a claim checked here.")
        if "patch" in claims:
            txt = family_means(df, "standard", "patch_auc_tumour_slides_any")
            out.append(f"**FocusMIL: max-pooling localises tumour patches better than attention.** Patch AUC on the "
                       f"test tumour slides, any tumour = positive, mean of seeds: {txt}. On the synthetic default this "
                       "is the definition a supervised linear probe of the same features finds about as hard as real "
                       "PatchCamelyon (docs/data.md, Calibration); at ≥ 50 % tumour even the probe is at its ceiling. "
                       f"{claim_text(claims['patch'])}")
        return out
