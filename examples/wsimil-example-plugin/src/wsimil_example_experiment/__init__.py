"""An example wsimil experiment from another package: slide labels flipped at random in training.

Every configured method is trained on the main sheet with a fraction of its training and validation slides'
labels flipped (the test slides keep theirs), and tested on the same test slides as ``standard``: the table
and ROC curves of the cell, each method's change against ``standard`` on its robustness card, and one claim in
SUMMARY.md, read like the built-in ones (max-pooling's change minus attention's, paired on the test slides).

wsimil finds it through the entry point ``label_noise`` in the group ``wsimil.experiments`` (pyproject.toml);
a config runs it with ``experiments: [standard, label_noise]`` and sets it in its own section ``label_noise``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from wsimil import Cell, Experiment, ExperimentReport, figures, tables


class LabelNoise(Experiment):
    name = "label_noise"
    description = "a fraction of the training and validation slides' labels flipped (example plugin)"
    section = "label_noise"
    section_schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "fraction": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 0.5, "default": 0.2,
                         "description": "share of the training and validation slides whose label is flipped"},
            "seed": {"type": "integer", "minimum": 0, "default": 0, "description": "which slides are flipped"},
        },
    }
    derives_sheet = True
    in_cards = True
    summary_order = 80
    captions = {
        "label_noise": "Trained and validated with a fraction of the slide labels flipped (section `label_noise`), "
        "tested on the true labels of the standard test slides: test-split metrics.",
        "label_noise_comparison": "Test slide AUC with clean vs flipped training labels per method: the AUC of the "
        "seed-averaged scores with its 95% interval, the change noisy − clean with its paired 95% interval, and the "
        "mean ± sd of the seeds' own AUCs.",
    }
    captions_dir = Path(__file__).parent / "captions"

    def cells(self, config: Mapping[str, Any]) -> list[Cell]:
        return [Cell("label_noise", self.name, "clean", self.name, tuple(config["training"]["methods"]),
                     params=dict(config["label_noise"]))]

    def sheet(self, config: Mapping[str, Any], sheet: pd.DataFrame) -> pd.DataFrame:
        """The main sheet's slides (no held-out hospital's copies) with ``round(fraction x n)`` of the n training
        and validation slides' labels flipped, drawn with ``seed``; the test labels untouched."""
        c = config["label_noise"]
        out = sheet[~sheet["external"].astype(bool)] if "external" in sheet.columns else sheet
        out = out.reset_index(drop=True).copy()
        fit = np.flatnonzero(out["split"].isin(["train", "val"]).to_numpy())
        rng = np.random.default_rng(int(c["seed"]))
        flip = rng.choice(fit, size=int(round(float(c["fraction"]) * len(fit))), replace=False)
        out.loc[flip, "label"] = 1 - out.loc[flip, "label"].astype(int)
        return out

    def reads(self, config, planned: Sequence[Cell]) -> list[str]:
        return ["label_noise", "standard"]

    def outputs(self, config: Mapping[str, Any], has_slides: bool = True) -> list[str]:
        out = tables("label_noise") + figures("roc_label_noise")
        return out + (tables("label_noise_comparison") if "standard" in config["experiments"] else [])

    def write(self, report: ExperimentReport) -> list[Path]:
        from wsimil.reporting.experiments import write_cell_report, write_comparison

        cell = report.own[0]
        written = write_cell_report(report, cell)
        if "standard" in report.cells:  # tables/label_noise_comparison: clean vs noisy, per method
            written += write_comparison(report, cell, ("clean", "noisy"))[1]
        return written

    def claims(self, config, results, cells):
        from wsimil.reporting.evidence import family_change_claim

        if "standard" not in cells:
            return []
        return [family_change_claim(config, results, cells["standard"], cells["label_noise"], "label_noise",
                                    "max-pooling is more robust to flipped slide labels (example plugin, no paper's "
                                    "claim)")]

    def findings(self, config, results, cells, df, claims) -> list[str]:
        from wsimil.reporting.summary import claim_text, per_method

        if "label_noise" not in claims:
            return []
        frac = config["label_noise"]["fraction"]
        return [f"**Flipped training labels (example plugin, {frac:.0%} of the training and validation slides).** "
                f"Test slide AUC: {per_method(config, df, results, cells, 'label_noise')}. "
                f"{claim_text(claims['label_noise'])}"]

    def card_rows(self, config, results, cells, methods) -> pd.DataFrame:
        from wsimil.reporting.cards import change_rows

        if "standard" not in cells:
            return super().card_rows(config, results, cells, methods)
        return change_rows(config, results, cells["standard"], cells["label_noise"],
                           "change with flipped training labels (noisy − clean)", methods)
