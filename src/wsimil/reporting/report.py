"""``wsimil report``: every table and figure of a results folder from its evaluated runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from wsimil.reporting.figures import plot_metric_by_method, plot_poison_comparison
from wsimil.reporting.tables import collect_metrics, poison_comparison_table, summary_table, write_table

CAPTIONS = {
    "standard": "Clean data: test-split metrics per method, mean ± std over seeds.",
    "milunit": "Raff & Holt's single-concept MIL unit test: a poison instance only in negative training and "
    "validation bags and only in positive test bags. A model that respects the standard MIL assumption keeps "
    "its validation AUC on test; one that learned 'poison means negative' falls towards 0. Mean ± std over seeds.",
    "poison": "FocusMIL's poison (green noise in normal training/validation and tumour test slides): "
    "test-split metrics per method, mean ± std over seeds.",
}
PATCH_NOTE = " Patch AUC: per-patch scores of the test tumour slides against the annotation (tumour fraction >= 0.5)."


def write_report(
    runs_root: str | os.PathLike,
    experiments: Sequence[str],
    methods: Sequence[str] | None,
    out_dir: str | os.PathLike,
    dataset: str = "",
) -> list[Path]:
    """Write ``tables/<experiment>.{csv,md,tex}``, ``tables/poison_comparison.*`` and ``figures/*.png|pdf``."""
    out_dir = Path(out_dir)
    where = f" ({dataset})" if dataset else ""
    df = collect_metrics(runs_root, list(experiments))
    written: list[Path] = []
    for exp in experiments:
        if exp == "milunit":  # no patches, and the finding is the gap between validation and test
            table = summary_table(df[df["experiment"] == exp], metrics=("val_auc", "test_auc"), methods=methods)
            caption = CAPTIONS[exp]
        else:
            table = summary_table(df[df["experiment"] == exp], methods=methods)
            caption = CAPTIONS.get(exp, f"Experiment {exp}: test-split metrics, mean ± std over seeds.") + PATCH_NOTE
        written += write_table(table, out_dir / "tables" / exp, caption + where)
    written += plot_metric_by_method(
        df, "slide_auc", out_dir / "figures" / "slide_auc.png", experiments=list(experiments), methods=methods,
        title=f"Test slide AUC per method{where}", ylabel="test slide AUC", chance=0.5,
    )
    if {"standard", "poison"} <= set(experiments):
        comp = poison_comparison_table(df, "standard", "poison", methods=methods)
        written += write_table(
            comp, out_dir / "tables" / "poison_comparison",
            f"Test slide AUC on clean vs poisoned data per method, mean ± std over seeds{where}. "
            "difference = poisoned − clean; a model that learned 'poison means normal' falls below chance.",
        )
        written += plot_poison_comparison(df, out_dir / "figures" / "poison_comparison.png", methods=methods)
    return written
