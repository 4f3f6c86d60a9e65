"""``ood``: the CAMELYON17 protocol, trained and validated on some hospitals, tested on the others."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from wsimil.experiments.cells import Cell, ood_sheet
from wsimil.experiments.registry import Experiment, ExperimentReport, figures, register_experiment, tables


@register_experiment
class OutOfDistribution(Experiment):
    name = "ood"
    description = "train on some centres, test on the others (section `ood`)"
    section = "ood"
    derives_sheet = True
    in_cards = True
    summary_order = 30
    captions = {
        "ood": "Out-of-distribution (CAMELYON17 protocol): trained and validated on the slides of some centres, "
        "tested on the test slides of the others (section `ood`).",
        "ood_comparison": "Test slide AUC on the dataset's own split (standard) vs out of distribution (ood): the AUC "
        "of the seed-averaged scores with its 95% interval (SUMMARY.md's and the cards' number), the change ood − "
        "standard with its 95% interval (a test slide and its copy from the held-out hospital resampled together "
        "when 'slides paired' says yes, the two slide sets independently otherwise), and beside them the mean ± sd "
        "of the seeds' own AUCs.",
    }

    def cells(self, config: Mapping[str, Any]) -> list[Cell]:
        return [Cell("ood", "ood", "clean", "ood", tuple(config["training"]["methods"]), params=dict(config["ood"]))]

    def sheet(self, config: Mapping[str, Any], sheet: pd.DataFrame) -> pd.DataFrame:
        return ood_sheet(sheet, config["ood"]["train_centers"])

    def reads(self, config, planned: Sequence[Cell]) -> list[str]:
        return ["ood"] + (["standard"] if any(c.name == "standard" for c in planned) else [])

    def outputs(self, config: Mapping[str, Any], has_slides: bool = True) -> list[str]:
        out = tables("ood") + figures("roc_ood")
        return out + (tables("ood_comparison") if "standard" in config["experiments"] else [])

    def write(self, report: ExperimentReport) -> list[Path]:
        from wsimil.reporting.experiments import write_cell_report, write_comparison

        cell = report.own[0]
        written = write_cell_report(report, cell)
        if "standard" in report.cells:
            written += write_comparison(report, cell, ("standard", "ood"))[1]
        return written

    def claims(self, config, results, cells):
        from wsimil.reporting.evidence import ood_claim

        if "standard" not in cells:
            return []
        return [ood_claim(config, results, cells, list(config["training"]["seeds"]))]

    def findings(self, config, results, cells, df, claims) -> list[str]:
        from wsimil.reporting.summary import claim_text, per_method

        if "ood" not in claims:
            return []
        return [f"**Out of distribution: max-pooling is more robust to an unseen hospital (FocusMIL).** Test AUC at "
                f"the held-out centre: {per_method(config, df, results, cells, 'ood')}. {claim_text(claims['ood'])}"]
