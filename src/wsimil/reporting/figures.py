"""Result figures: one point per seed plus mean ± std per method, dodged by experiment.

Drawn with matplotlib's object interface on an Agg canvas (no pyplot state, no display needed), colours
from seaborn's colour-blind-safe palette, sized for a paper column (6 x 3.5 in, 200 dpi). Every figure is
written as PNG and, beside it, PDF; both atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from wsimil.io import WsimilError, atomic_path
from wsimil.reporting.tables import metric_label

#: metrics bounded in [0, 1]: their axis spans exactly 0..1
_UNIT_METRICS = ("auc", "ap", "accuracy", "f1")


def _save(fig: Figure, out_png: Path, dpi: int) -> list[Path]:
    out_pdf = out_png.with_suffix(".pdf")
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    with atomic_path(out_pdf) as tmp:
        fig.savefig(tmp, format="pdf", bbox_inches="tight", metadata={"CreationDate": None})
    return [out_png, out_pdf]


def plot_metric_by_method(
    df: pd.DataFrame,
    metric: str,
    out_png: str | os.PathLike,
    *,
    experiments: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    experiment_labels: Mapping[str, str] | None = None,
    title: str | None = None,
    ylabel: str | None = None,
    chance: float | None = None,
    figsize: tuple[float, float] = (6.0, 3.5),
    dpi: int = 200,
) -> list[Path]:
    """Strip plot of ``metric`` per method (x, in ``methods`` order) and experiment (colour, dodged).

    ``df`` has one row per experiment x method x seed (:func:`wsimil.reporting.tables.collect_metrics`).
    Small points are the seeds, the large marker with bars is mean ± sample std. AUC-like metrics span
    0..1; ``chance`` draws a dashed line (default 0.5 for an AUC). Returns the PNG and PDF paths.
    """
    missing = [c for c in ("experiment", "method", metric) if c not in df.columns]
    if missing:
        raise WsimilError(f"cannot plot {metric!r}: results table lacks columns {missing}")
    experiments = list(experiments) if experiments is not None else list(dict.fromkeys(df["experiment"]))
    data = df[df["experiment"].isin(experiments)]
    absent = [e for e in experiments if e not in set(data["experiment"])]
    if absent:
        raise WsimilError(f"cannot plot {metric!r}: no runs of experiments {absent} (have {sorted(set(df['experiment']))})")
    methods = list(methods) if methods is not None else list(dict.fromkeys(data["method"]))
    experiment_labels = dict(experiment_labels or {})
    if chance is None and metric.endswith("auc"):
        chance = 0.5

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = sns.color_palette("colorblind", n_colors=max(len(experiments), 2))
    width = 0.72
    step = width / len(experiments)
    for j, exp in enumerate(experiments):
        offset = (j - (len(experiments) - 1) / 2) * step
        colour = colours[j]
        for i, method in enumerate(methods):
            v = data.loc[(data["experiment"] == exp) & (data["method"] == method), metric].astype(float).to_numpy()
            if len(v) == 0:
                continue
            jitter = np.linspace(-0.25, 0.25, len(v)) * step if len(v) > 1 else np.zeros(1)
            finite = np.isfinite(v)
            ax.scatter(i + offset + jitter[finite], v[finite], s=12, color=colour, alpha=0.55,
                       edgecolors="none", clip_on=False, zorder=3)
            if finite.all():
                std = v.std(ddof=1) if len(v) > 1 else 0.0
                ax.errorbar(i + offset, v.mean(), yerr=std, fmt="o", ms=5.5, color=colour, mec="black",
                            mew=0.6, ecolor=colour, elinewidth=1.4, capsize=3, clip_on=False, zorder=4)
        # legend entry once per experiment
        ax.errorbar([], [], yerr=[], fmt="o", ms=5.5, color=colour, mec="black", mew=0.6, capsize=3,
                    label=experiment_labels.get(exp, exp))

    if chance is not None:
        ax.axhline(chance, color="0.35", ls="--", lw=0.9, zorder=1)
        ax.text(len(methods) - 0.5, chance, " chance", va="bottom", ha="right", fontsize=7, color="0.35")
    if any(metric.endswith(u) or f"_{u}_" in metric for u in _UNIT_METRICS):
        ax.set_ylim(0, 1)
        ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_xlim(-0.5, len(methods) - 0.5)
    ax.set_xticks(range(len(methods)))
    rotate = len(methods) > 6
    ax.set_xticklabels(methods, rotation=35 if rotate else 0, ha="right" if rotate else "center", fontsize=8)
    ax.tick_params(axis="y", labelsize=8)
    ax.set_xlabel("method", fontsize=9)
    ax.set_ylabel(ylabel or metric_label(metric), fontsize=9)
    ax.set_title(title or f"{metric_label(metric)} per method", fontsize=10, loc="left", pad=18)  # legend row below
    ax.grid(axis="y", color="0.9", lw=0.6, zorder=0)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    # above the axes, beside the title: never on top of data, wherever the values fall
    ax.legend(fontsize=8, frameon=False, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=len(experiments),
              borderaxespad=0.2, handletextpad=0.3, columnspacing=1.0)
    return _save(fig, Path(out_png), dpi)


def plot_poison_comparison(
    df: pd.DataFrame,
    out_png: str | os.PathLike,
    clean: str = "standard",
    poisoned: str = "poison",
    *,
    metric: str = "slide_auc",
    methods: Sequence[str] | None = None,
    dpi: int = 200,
) -> list[Path]:
    """Test slide AUC per method on clean vs poisoned data: seeds as points, mean ± std, chance at 0.5."""
    return plot_metric_by_method(
        df,
        metric,
        out_png,
        experiments=[clean, poisoned],
        methods=methods,
        experiment_labels={clean: f"clean ({clean})", poisoned: f"poisoned ({poisoned})"},
        title="Clean vs poisoned data: test slide AUC",
        ylabel="test slide AUC",
        chance=0.5,
        dpi=dpi,
    )
