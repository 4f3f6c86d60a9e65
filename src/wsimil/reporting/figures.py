"""Result figures: metrics per method and experiment, ROC curves, training curves, the DTFD pseudo-bag
ablation and the poison dose-response (patch heatmaps: :mod:`wsimil.reporting.heatmaps`).

Drawn with matplotlib's object interface on an Agg canvas (no pyplot state, no display needed), colour-blind
safe colours (a method has one colour in every figure: :func:`method_colors`; its family one line style and
marker: :func:`method_styles`), sized for a paper page (3.5 or 7 in wide, text >= 7 pt, 200 dpi). Every
figure is written as PNG and, beside it, PDF; both atomically. Each function returns the paths it wrote.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
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


#: what the marker and bar show when :func:`plot_metric_by_method` gets ``intervals``
INTERVAL_KEY = "marker and bar: AUC of the seed-averaged scores, 95% CI"


def _check_intervals(intervals: pd.DataFrame, data: pd.DataFrame, experiments: Sequence[str],
                     methods: Sequence[str], metric: str) -> dict[tuple[str, str], tuple[float, float, float]]:
    """``(experiment, method) -> (value, low, high)`` for every pair with seeds in ``data``; a missing or
    repeated pair is an error (a figure mixing two kinds of marker would be misread)."""
    missing = [c for c in ("experiment", "method", "value", "low", "high") if c not in intervals.columns]
    if missing:
        raise FigureInputError(f"cannot plot {metric!r}: the intervals table lacks column(s) {missing}")
    keys = list(zip(intervals["experiment"].astype(str), intervals["method"].astype(str)))
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise FigureInputError(f"cannot plot {metric!r}: the intervals table repeats {repeated}")
    out = {k: (float(v), float(lo), float(hi))
           for k, v, lo, hi in zip(keys, intervals["value"], intervals["low"], intervals["high"])}
    shown = {(str(e), str(m)) for e, m in zip(data["experiment"], data["method"])
             if e in experiments and m in methods}
    lacking = sorted(shown - set(out))
    if lacking:
        raise FigureInputError(f"cannot plot {metric!r}: no interval for (experiment, method) {lacking}")
    return out


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
    intervals: pd.DataFrame | None = None,
    figsize: tuple[float, float] = (6.0, 3.5),
    dpi: int = 200,
) -> list[Path]:
    """Strip plot of ``metric`` per method (x, in ``methods`` order) and experiment (colour, dodged).

    ``df`` has one row per experiment x method x seed (:func:`wsimil.reporting.tables.collect_metrics`); the
    small dots are the seeds' own values. The large marker and its bar:

    * with ``intervals`` (columns ``experiment, method, value, low, high``, one row per pair shown): ``value``,
      the AUC of the seed-averaged scores, and ``low``-``high``, its 95% interval (SUMMARY's numbers);
    * without: the mean of the seeds and their range (min to max: with 3 seeds a ± std bar would run past 0
      or 1).

    A key under the axes says which. AUC-like metrics span 0..1; ``chance`` draws a dashed line (default
    0.5 for an AUC). Returns the PNG and PDF paths.
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
    ivs = _check_intervals(intervals, data, experiments, methods, metric) if intervals is not None else None
    experiment_labels = dict(experiment_labels or {})
    if chance is None and metric.endswith("auc"):
        chance = 0.5
    quantity = "AUC" if metric.endswith("auc") else metric_label(metric)

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = sns.color_palette("colorblind", n_colors=max(len(experiments), 2))
    width = 0.72
    step = width / len(experiments)
    marker = {"fmt": "o", "ms": 5.5, "mec": "black", "mew": 0.6, "elinewidth": 1.4, "capsize": 3}
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
            if ivs is not None:
                m, lo, hi = ivs[(str(exp), str(method))]
                if not np.isfinite(m):
                    continue
                # no interval (NaN bounds): the marker alone, never a bar of made-up length
                yerr = [[m - lo], [hi - m]] if np.isfinite(lo) and np.isfinite(hi) else None
            elif finite.all():  # the bar spans the seeds (min to max): never outside the metric's range
                m = v.mean()
                yerr = [[m - v.min()], [v.max() - m]]
            else:
                continue
            ax.errorbar(i + offset, m, yerr=yerr, color=colour, ecolor=colour, clip_on=False, zorder=4, **marker)
        # legend entry once per experiment
        ax.errorbar([], [], yerr=[], color=colour, label=experiment_labels.get(exp, exp),
                    **{k: v for k, v in marker.items() if k != "elinewidth"})

    if chance is not None:
        ax.axhline(chance, color="0.35", ls="--", lw=0.9, zorder=1, gid="chance")
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
    # the key: what a dot, the marker and its bar are (grey: it holds for every colour)
    from matplotlib.lines import Line2D

    dot = Line2D([], [], ls="none", marker="o", ms=3.5, color="0.45", alpha=0.7, mec="none",
                 label=f"dots: each seed's {quantity}")
    summary = ax.errorbar([], [], yerr=[], color="0.45", ecolor="0.45",
                          label=INTERVAL_KEY if ivs is not None else "marker and bar: mean of the seeds, min–max",
                          **{k: v for k, v in marker.items() if k != "elinewidth"})
    fig.legend(handles=[dot, summary], loc="outside lower center", ncols=2, fontsize=7.5, frameon=False,
               handletextpad=0.3, columnspacing=1.5)
    return _save(fig, Path(out_png), dpi)


def plot_poison_comparison(
    df: pd.DataFrame,
    out_png: str | os.PathLike,
    clean: str = "standard",
    poisoned: str = "poison",
    *,
    metric: str = "slide_auc",
    methods: Sequence[str] | None = None,
    intervals: pd.DataFrame | None = None,
    dpi: int = 200,
) -> list[Path]:
    """Test slide AUC per method on clean vs poisoned data: seeds as dots, chance 0.5; the marker and bar the
    AUC of the seed-averaged scores and its 95% interval when ``intervals`` (rows for ``clean`` and
    ``poisoned``, see :func:`plot_metric_by_method`) is given, else the seeds' mean and range."""
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
        intervals=intervals,
        dpi=dpi,
    )


# ======================================================================================================
# Per-method figures: ROC curves, training curves, DTFD ablation, poison dose-response, metric dot plots.
#
# Every method keeps one colour in every figure (:func:`method_colors`) and its family one line style and
# marker (:func:`method_styles`): max-pooling solid lines and circles, attention dashed lines and squares.
# Sizes follow a paper page: 3.5 in (one column) or 7 in (two columns) wide, text 7-8 pt.

COLUMN_IN = 3.5  # single-column width, inches
PAGE_IN = 7.0  # double-column width, inches

#: text sizes (pt) of every figure below; PDF fonts embedded as TrueType (editable, accepted by journals)
_PAPER_RC = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "figure.titlesize": 9,
    "figure.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.linewidth": 0.6,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "pdf.fonttype": 42,
}

# Okabe & Ito (2008) for the max-pooling family, Tol's "muted" scheme for the attention family: every
# registered method has its own colour, fixed here so that it never depends on which methods a figure shows.
_FIXED_COLOURS = {
    # max-pooling (Okabe-Ito)
    "focusmil": "#D55E00",  # vermillion
    "focusmil_no_vib": "#E69F00",  # orange
    "focusmil_bs1": "#CC79A7",  # reddish purple
    "minet": "#0072B2",  # blue
    "maxpool": "#009E73",  # bluish green
    "meanpool": "#56B4E9",  # sky blue
    "causalmil": "#000000",  # black
    # attention (Tol muted)
    "abmil": "#332288",  # indigo
    "dsmil": "#44AA99",  # teal
    "transmil": "#882255",  # wine
    "clam_sb": "#999933",  # olive
    "clam_mb": "#117733",  # green
    "dtfd_maxs": "#CC6677",  # rose
    "dtfd_maxmins": "#88CCEE",  # cyan
    "dtfd_mas": "#AA4499",  # purple
    "dtfd_afs": "#A6761D",  # dark gold (Tol's sand #DDCC77 is hard to see on white)
}
# Methods without a fixed colour (a new registry entry, a variant such as "focusmil (beta=0.1)") take these
# in the sorted order of their names (CARTO "Bold", then Tol "dark" greys and browns).
_EXTRA_COLOURS = [
    "#7F3C8D", "#3969AC", "#11A579", "#F2B701", "#E73F74", "#008695", "#80BA5A", "#E68310",
    "#CF1C90", "#A5AA99", "#5F4690", "#1D6996", "#38A6A5", "#0F8554", "#73AF48", "#EDAD08",
]  # fmt: skip
_FAMILY_STYLE = {
    "max-pooling": {"ls": "-", "marker": "o"},
    "attention": {"ls": "--", "marker": "s"},
    None: {"ls": ":", "marker": "D"},  # unknown family
}


class FigureInputError(WsimilError, ValueError):
    """A table handed to a figure lacks a column or holds values the figure cannot draw."""


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise FigureInputError(
            f"cannot plot {what}: the table lacks column(s) {missing} (has {list(df.columns)})"
        )
    if df.empty:
        raise FigureInputError(f"cannot plot {what}: the table has no rows")


def _base_method(name: str) -> str:
    """``"focusmil (beta=0.1)"`` -> ``"focusmil"``: the registered method a variant's name starts with."""
    return str(name).split(" (", 1)[0].strip()


def method_family(name: str) -> str | None:
    """``"max-pooling"`` or ``"attention"`` from the registry (variants by their base name); None if unknown."""
    from wsimil.models.base import get_method  # imports torch: only when a figure needs it

    try:
        return get_method(_base_method(name)).family
    except WsimilError:
        return None


def method_colors(methods: Sequence[str]) -> dict[str, str]:
    """A fixed colour (hex) per method, the same in every figure and distinct within one call.

    The registered methods have fixed colour-blind-safe colours (Okabe-Ito for max-pooling, Tol "muted" for
    attention). Other names (variants such as ``"focusmil (beta=0.1)"``) take further colours in the sorted
    order of those names, so the same set of names always gets the same colours.
    """
    names = list(dict.fromkeys(str(m) for m in methods))
    out = {m: _FIXED_COLOURS[m] for m in names if m in _FIXED_COLOURS}
    others = sorted(m for m in names if m not in _FIXED_COLOURS)
    extra = list(_EXTRA_COLOURS)
    if len(others) > len(extra):
        extra += [c for c in sns.color_palette("husl", len(others) - len(extra)).as_hex()]
    out.update(zip(others, extra))
    return {m: out[m] for m in names}


def method_styles(methods: Sequence[str]) -> dict[str, dict]:
    """Per method: ``color`` (:func:`method_colors`), and ``ls`` and ``marker`` by family, plus ``family``."""
    colours = method_colors(methods)
    out = {}
    for m, c in colours.items():
        fam = method_family(m)
        out[m] = {"color": c, **_FAMILY_STYLE[fam if fam in _FAMILY_STYLE else None], "family": fam}
    return out


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _grid_shape(n: int, max_cols: int = 4) -> tuple[int, int]:
    ncols = min(n, max_cols)
    return int(np.ceil(n / ncols)), ncols


def _std(v: np.ndarray) -> float:
    v = np.asarray(v, dtype=float)
    return float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _order(values: pd.Series) -> list:
    return list(dict.fromkeys(values.tolist()))


def _wrap_name(name: str) -> str:
    """Put a variant's parameters on their own line: ``"focusmil\\n(beta=0.1)"``."""
    return str(name).replace(" (", "\n(", 1)


def _hide_inner_labels(axes: np.ndarray, n_used: int) -> None:
    nrows, ncols = axes.shape
    for k, ax in enumerate(axes.flat):
        if k >= n_used:
            ax.set_visible(False)
            continue
        r, c = divmod(k, ncols)
        below_used = (r + 1) * ncols + c < n_used
        # sharex hides every label above the last row: show them where no panel sits below
        ax.tick_params(labelbottom=not below_used)
        if c > 0:
            ax.tick_params(labelleft=False)


def plot_roc_curves(
    preds: pd.DataFrame, out_png: str | os.PathLike, title: str | None = None, *, dpi: int = 200
) -> list[Path]:
    """ROC curves of the test slides, one small panel per method (up to 5 in a row, in order of appearance).

    ``preds``: one row per method x seed x slide with ``method, seed, label, score`` (if it has a ``split``
    column only its ``test`` rows are used). Thin lines are each seed's ROC (``sklearn.metrics.roc_curve``),
    the bold line their vertical mean (the seeds' true-positive rates averaged at each false-positive rate of
    a common grid), in the family's line style; the panel title is the method and the mean ± sample sd of the
    seeds' own test AUCs (``roc_auc_score``). A key under the panels says so, with the number of seeds and of
    test slides. Returns the PNG and PDF paths.
    """
    from matplotlib.lines import Line2D
    from sklearn.metrics import roc_auc_score, roc_curve

    _require(preds, ("method", "seed", "label", "score"), "ROC curves")
    if "split" in preds.columns:
        preds = preds[preds["split"] == "test"]
        if preds.empty:
            raise FigureInputError("cannot plot ROC curves: no rows with split == 'test'")
    methods = _order(preds["method"])
    styles = method_styles(methods)
    grid = np.linspace(0.0, 1.0, 201)
    curves: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    aucs: dict[str, list[float]] = {}
    for (method, seed), g in preds.groupby(["method", "seed"], sort=False):
        y, s = g["label"].astype(int).to_numpy(), g["score"].astype(float).to_numpy()
        if not np.isfinite(s).all():
            raise FigureInputError(f"cannot plot ROC curves: method {method!r} seed {seed} has NaN/inf scores")
        if len(np.unique(y)) != 2:
            raise FigureInputError(
                f"cannot plot ROC curves: method {method!r} seed {seed} has test labels {sorted(set(y))} only; "
                "an ROC curve needs both classes"
            )
        fpr, tpr, _ = roc_curve(y, s)
        curves.setdefault(method, []).append((fpr, tpr))
        aucs.setdefault(method, []).append(float(roc_auc_score(y, s)))
    n_seeds = sorted({len(a) for a in aucs.values()})
    n_slides = sorted(set(preds.groupby(["method", "seed"], sort=False).size()))

    # up to 5 methods in one row (the default's 5: no empty panels), else rows of 4
    nrows, ncols = _grid_shape(len(methods), max_cols=5 if len(methods) <= 5 else 4)
    width = 2.6 if ncols == 1 else COLUMN_IN if ncols == 2 else PAGE_IN
    side = width / ncols
    wide = width >= PAGE_IN  # the key in one row; on a narrower figure one entry a row, under a two-line title
    with matplotlib.rc_context(_PAPER_RC):
        fig = _figure(width, side * nrows + (0.75 if wide else 1.25) + (0.2 if title else 0.0))
        axes = np.atleast_2d(fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False))
        for ax, method in zip(axes.flat, methods):
            st = styles[method]
            ax.plot([0, 1], [0, 1], color="0.6", lw=0.7, ls=":", zorder=1)
            for fpr, tpr in curves[method]:
                ax.plot(fpr, tpr, color=st["color"], lw=0.6, alpha=0.45, zorder=2)
            mean_tpr = np.mean([np.interp(grid, fpr, tpr) for fpr, tpr in curves[method]], axis=0)
            mean_tpr[0] = 0.0
            ax.plot(grid, mean_tpr, color=st["color"], lw=1.6, ls=st["ls"], zorder=3)
            a = np.asarray(aucs[method])
            auc = f"AUC {a.mean():.3f} ± {_std(a):.3f}" if len(a) > 1 else f"AUC {a[0]:.3f}"
            name = _wrap_name(method) if len(method) > 16 else method
            ax.set_title(f"{name}\n{auc}", fontsize=7, pad=3)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.0)
            ax.set_aspect("equal")
            ax.set_xticks([0, 0.5, 1])
            ax.set_yticks([0, 0.5, 1])
            ax.set_xticklabels(["0", "0.5", "1"])
            ax.set_yticklabels(["0", "0.5", "1"])
            ax.grid(color="0.92", lw=0.5)
            ax.set_axisbelow(True)
        _hide_inner_labels(axes, len(methods))
        for k, ax in enumerate(axes.flat):
            if k >= len(methods):
                fig.delaxes(ax)
                continue
            # per panel, not fig.supxlabel: an outside legend and a supxlabel share the bottom edge and overlap
            if k + ncols >= len(methods):
                ax.set_xlabel("false positive rate")
            if k % ncols == 0:
                ax.set_ylabel("true positive rate")
        if title:
            fig.suptitle(title)
        seeds_txt = "–".join(map(str, (n_seeds[0], n_seeds[-1]) if len(n_seeds) > 1 else n_seeds))
        slides_txt = "–".join(map(str, (n_slides[0], n_slides[-1]) if len(n_slides) > 1 else n_slides))
        key = [Line2D([], [], color="0.35", lw=0.6, alpha=0.6, label=f"each seed's ROC ({seeds_txt} seeds)"),
               Line2D([], [], color="0.35", lw=1.6, label="mean of the seeds' ROCs"),
               Line2D([], [], color="0.6", lw=0.7, ls=":", label="chance")]
        fig.legend(handles=key, loc="outside lower center", ncols=3 if wide else 1, frameon=False,
                   title=f"panel titles: mean ± sd of the seeds' test AUCs;{' ' if wide else chr(10)}"
                         f"{slides_txt} test slides", title_fontsize=7)
        return _save(fig, Path(out_png), dpi)


def _panel_grid(n: int) -> tuple[int, int]:
    """Rows and columns for ``n`` panels: one row up to 5, else rows of 4 or 3, whichever leaves fewer empty."""
    if n <= 5:
        return 1, n
    ncols = min((4, 3), key=lambda c: (-n % c, -c))
    return int(np.ceil(n / ncols)), ncols


def plot_training_curves(history: pd.DataFrame, out_png: str | os.PathLike, *, dpi: int = 200) -> list[Path]:
    """Train (solid) and validation (dashed) AUC per epoch, one panel per method in order of appearance.

    ``history``: ``method, seed, epoch, train_auc, val_auc`` (NaN where an epoch was not evaluated), and
    optionally ``selected_epoch`` (per method x seed: the epoch whose model was kept, ``run.json``'s
    ``best_epoch``), marked on that seed's validation curve. Thin lines are the seeds, bold lines the mean
    over the seeds evaluated at that epoch. Each panel's epoch axis spans the epochs its runs have (shared
    only when every method ran about as long); no empty panels. Shows overfitting as a train curve rising to
    1 while the validation curve stays low. Returns the PNG and PDF paths.
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    _require(history, ("method", "seed", "epoch", "train_auc", "val_auc"), "training curves")
    methods = _order(history["method"])
    styles = method_styles(methods)
    spans = {m: (float(e.min()), float(e.max())) for m, e in history.groupby("method", sort=False)["epoch"]}
    lengths = [hi - lo + 1 for lo, hi in spans.values()]
    shared = max(lengths) <= 1.5 * min(lengths)  # else an 8-epoch run is a sliver on a 60-epoch axis
    if shared:
        lo, hi = min(s[0] for s in spans.values()), max(s[1] for s in spans.values())
        spans = {m: (lo, hi) for m in methods}
    selected = "selected_epoch" in history.columns
    nrows, ncols = _panel_grid(len(methods))
    width = COLUMN_IN if ncols <= 2 else PAGE_IN
    panel_h = 1.45 if ncols > 2 else 1.6
    curves = (("train_auc", "-", "train"), ("val_auc", "--", "validation"))
    with matplotlib.rc_context(_PAPER_RC):
        fig = _figure(width, panel_h * nrows + 0.75)
        axes = fig.subplots(nrows, ncols, sharex=shared, sharey=True, squeeze=False)
        for ax in axes.flat[len(methods):]:
            fig.delaxes(ax)
        for k, (ax, method) in enumerate(zip(axes.flat, methods)):
            colour = styles[method]["color"]
            h = history[history["method"] == method]
            for col, ls, _ in curves:
                wide = h.pivot_table(index="epoch", columns="seed", values=col, aggfunc="mean", dropna=False)
                wide = wide.sort_index()
                for seed in wide.columns:
                    s = wide[seed].dropna()
                    ax.plot(s.index, s.to_numpy(), color=colour, lw=0.5, ls=ls, alpha=0.45)
                mean = wide.mean(axis=1, skipna=True).dropna()
                ax.plot(mean.index, mean.to_numpy(), color=colour, lw=1.6, ls=ls)
            if selected:
                for _, g in h.groupby("seed", sort=False):
                    e = g["selected_epoch"].dropna()
                    if e.empty:
                        continue
                    at = g.loc[g["epoch"] == e.iloc[0], "val_auc"].dropna()
                    if not at.empty:
                        ax.plot([e.iloc[0]], [at.iloc[0]], ls="none", marker="o", ms=4, mfc="white",
                                mec=colour, mew=1.0, zorder=5, gid="selected_epoch")
            ax.axhline(0.5, color="0.6", lw=0.6, ls=":", zorder=0)
            ax.set_title(method, fontsize=7.5, pad=3)
            lo, hi = spans[method]
            pad = max(0.3, 0.03 * (hi - lo))
            ax.set_xlim(lo - pad, hi + pad)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
            ax.set_ylim(0, 1.02)
            ax.set_yticks([0, 0.5, 1])
            ax.grid(color="0.92", lw=0.5)
            ax.set_axisbelow(True)
            ax.tick_params(labelbottom=True)
            ax.set_xlabel("epoch")
            if k % ncols == 0:
                ax.set_ylabel("slide AUC")
        handles = [Line2D([], [], color="0.25", lw=1.6, ls=ls, label=f"{lab} (mean of the seeds)")
                   for _, ls, lab in curves]
        handles.append(Line2D([], [], color="0.25", lw=0.5, alpha=0.6, label="one seed"))
        if selected:
            handles.append(Line2D([], [], ls="none", marker="o", ms=4, mfc="white", mec="0.25", mew=1.0,
                                  label="selected epoch (one per seed)"))
        handles.append(Line2D([], [], color="0.6", lw=0.6, ls=":", label="chance"))
        fig.legend(handles=handles, loc="outside upper center", ncols=3, frameon=False)
        return _save(fig, Path(out_png), dpi)


#: legend names of the DTFD-MIL tiers: Tier 1's AUC is over pseudo-bags (each with its slide's label)
TIER_LABELS = {"Tier 2": "Tier 2: slide AUC", "Tier 1": "Tier 1: pseudo-bag AUC"}


def plot_dtfd_ablation(df: pd.DataFrame, out_png: str | os.PathLike, *, dpi: int = 200) -> list[Path]:
    """DTFD-MIL test AUC against the number of pseudo-bags (log2 axis), one line per tier.

    ``df``: ``n_pseudo_bags, seed, tier, auc`` (tier ``"Tier 1"`` / ``"Tier 2"``). Points are the seeds, the
    line the mean over seeds and the band mean ± sample sd (clipped to [0, 1]); dotted grey: chance. The
    y axis ("test AUC") spans the AUC's range; the legend, under the axes, names what each tier's AUC is over
    (:data:`TIER_LABELS`): Tier 2 slides, Tier 1 pseudo-bags. Returns the PNG and PDF paths.
    """
    _require(df, ("n_pseudo_bags", "seed", "tier", "auc"), "the DTFD pseudo-bag ablation")
    if (df["n_pseudo_bags"] <= 0).any():
        raise FigureInputError("cannot plot the DTFD ablation: n_pseudo_bags must be >= 1 (log2 axis)")
    tiers = sorted(_order(df["tier"]), key=str)
    palette = ["#0072B2", "#E69F00", "#009E73", "#CC79A7"]
    markers = ["o", "s", "^", "D"]
    ks = np.sort(df["n_pseudo_bags"].unique()).astype(float)
    with matplotlib.rc_context(_PAPER_RC):
        fig = _figure(COLUMN_IN, 2.7)
        ax = fig.add_subplot()
        nt = len(tiers)
        for i, tier in enumerate(tiers):
            d = df[df["tier"] == tier]
            colour, marker = palette[i % len(palette)], markers[i % len(markers)]
            g = d.groupby("n_pseudo_bags")["auc"]
            mean = g.mean()
            std = g.std(ddof=1).fillna(0.0)
            x = mean.index.to_numpy(dtype=float)
            dodge = 2 ** ((i - (nt - 1) / 2) * 0.06)  # keep the tiers' seed points apart
            ax.fill_between(x, (mean - std).clip(0, 1), (mean + std).clip(0, 1), color=colour, alpha=0.18, lw=0)
            ax.scatter(d["n_pseudo_bags"].astype(float) * dodge, d["auc"], s=9, color=colour, alpha=0.55,
                       edgecolors="none", zorder=3)
            ax.plot(x, mean.to_numpy(), color=colour, marker=marker, ms=4.5, lw=1.5, mec="white", mew=0.5,
                    label=TIER_LABELS.get(str(tier), str(tier)), zorder=4)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks)
        ax.set_xticklabels([f"{k:g}" for k in ks])
        ax.minorticks_off()
        ax.set_xlim(ks.min() / 1.25, ks.max() * 1.25)
        ax.set_xlabel("number of pseudo-bags per slide")
        ax.set_ylabel("test AUC")
        ax.grid(axis="y", color="0.92", lw=0.5)
        ax.set_axisbelow(True)
        ax.set_ylim(0.0, 1.0)  # the AUC's whole range: a truncated axis exaggerates the tiers' differences
        ax.axhline(0.5, color="0.6", lw=0.7, ls=":", zorder=1, gid="chance")
        ax.text(1.0, 0.5, "chance ", transform=ax.get_yaxis_transform(), ha="right", va="bottom",
                fontsize=7, color="0.45")
        handles, labels = ax.get_legend_handles_labels()
        order = sorted(range(len(labels)), key=lambda j: labels[j], reverse=True)  # Tier 2 (the slide) first
        # under the axes: the title sits above them, so the two never meet
        fig.legend([handles[j] for j in order], [labels[j] for j in order], loc="outside lower center",
                   ncols=nt if nt <= 2 else 2, frameon=False)
        ax.set_title("DTFD-MIL: pseudo-bag ablation", loc="left")
        return _save(fig, Path(out_png), dpi)


def _method_legend(fig: Figure, methods: Sequence[str], styles: Mapping[str, dict], loc: str) -> None:
    """One legend entry per method, each family starting its own row (max-pooling rows first)."""
    from matplotlib.lines import Line2D

    ncols = min(len(methods), 6 if fig.get_figwidth() > 5 else 3)
    fams = list(dict.fromkeys(styles[m]["family"] for m in methods))
    fams.sort(key=lambda f: {"max-pooling": 0, "attention": 1}.get(f, 2))
    rows: list[list] = []
    for fam in fams:
        members = [m for m in methods if styles[m]["family"] == fam]
        for i in range(0, len(members), ncols):
            rows.append(members[i : i + ncols])
    ncols = max(len(r) for r in rows)
    grid = [r + [None] * (ncols - len(r)) for r in rows]  # blanks keep each family on its own rows

    def handle(m):
        if m is None:
            return Line2D([], [], alpha=0.0, label=" ")
        st = styles[m]
        return Line2D([], [], color=st["color"], ls=st["ls"], marker=st["marker"], ms=3.5, lw=1.2, label=m)

    # matplotlib fills a legend column by column: hand it the row-major grid transposed
    handles = [handle(grid[r][c]) for c in range(ncols) for r in range(len(grid))]
    fig.legend(handles=handles, loc=loc, ncols=ncols, frameon=False, handlelength=2.4, columnspacing=1.2)


def plot_dose_response(
    df: pd.DataFrame,
    out_png: str | os.PathLike,
    *,
    fixed_fraction: float | None = None,
    fixed_strength: float | None = None,
    dpi: int = 200,
) -> list[Path]:
    """Poison dose-response: test AUC against poison strength (left) and against the fraction of patches
    poisoned (right), one line per method, chance at 0.5 (dotted grey line).

    ``df``: ``method, seed, axis, value, auc`` with ``axis`` ``"strength"`` or ``"fraction"``. A marker is
    the mean of the seeds' AUCs at one level, the band mean ± sample sd (clipped to [0, 1]); straight lines
    join the levels measured, and each panel's x ticks are exactly those levels (nothing lies between them).
    Line style and marker by family (max-pooling solid with circles, attention dashed with squares). The
    fraction held fixed on the strength sweep (and the other way round) can be named in the panel titles.
    Returns the PNG and PDF paths.
    """
    _require(df, ("method", "seed", "axis", "value", "auc"), "the poison dose-response")
    bad = sorted(set(df["axis"]) - {"strength", "fraction"})
    if bad:
        raise FigureInputError(f"cannot plot the poison dose-response: axis values {bad}; use 'strength' or 'fraction'")
    methods = _order(df["method"])
    styles = method_styles(methods)
    panels = [
        ("strength", "poison strength",
         "AUC vs poison strength" + (f" (fraction {fixed_fraction:g})" if fixed_fraction is not None else "")),
        ("fraction", "fraction of patches poisoned",
         "AUC vs poisoned fraction" + (f" (strength {fixed_strength:g})" if fixed_strength is not None else "")),
    ]
    panels = [p for p in panels if (df["axis"] == p[0]).any()]
    with matplotlib.rc_context(_PAPER_RC):
        rows_legend = sum(int(np.ceil(sum(styles[m]["family"] == f for m in methods) / 6))
                          for f in {styles[m]["family"] for m in methods})
        fig = _figure(PAGE_IN if len(panels) > 1 else COLUMN_IN, 2.5 + 0.16 * rows_legend)
        axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
        for ax, (axis, xlabel, title) in zip(axes, panels):
            d = df[df["axis"] == axis]
            for method in methods:
                st = styles[method]
                g = d[d["method"] == method].groupby("value")["auc"]
                if g.ngroups == 0:
                    continue
                mean, std = g.mean(), g.std(ddof=1).fillna(0.0)
                x = mean.index.to_numpy(dtype=float)
                ax.fill_between(x, (mean - std).clip(0, 1), (mean + std).clip(0, 1), color=st["color"], alpha=0.10,
                                lw=0)
                ax.plot(x, mean.to_numpy(), color=st["color"], ls=st["ls"], marker=st["marker"], ms=4.5,
                        lw=1.2, mec="white", mew=0.4, clip_on=False, zorder=3, gid=f"method:{method}")
            ax.axhline(0.5, color="0.45", lw=0.8, ls=":", zorder=1, gid="chance")
            ax.text(1.0, 0.5, "chance ", transform=ax.get_yaxis_transform(), ha="right", va="bottom",
                    fontsize=7, color="0.45")
            levels = np.sort(d["value"].astype(float).unique())
            ax.set_xticks(levels)
            ax.set_xticklabels([f"{v:g}" if v else "0 (clean)" for v in levels])  # no poison: the clean runs
            ax.minorticks_off()
            span = levels[-1] - levels[0] if len(levels) > 1 else 1.0
            ax.set_xlim(levels[0] - 0.05 * span, levels[-1] + 0.05 * span)
            ax.set_xlabel(xlabel)
            ax.set_title(title, loc="left")
            ax.set_ylim(0, 1)
            ax.set_yticks(np.linspace(0, 1, 6))
            ax.grid(axis="y", color="0.92", lw=0.5)
            ax.set_axisbelow(True)
        axes[0].set_ylabel("test slide AUC")
        _method_legend(fig, methods, styles, "outside lower center")
        return _save(fig, Path(out_png), dpi)


def plot_metric_bars(
    df: pd.DataFrame,
    out_png: str | os.PathLike,
    metric_col: str,
    ylabel: str,
    *,
    chance: float | None = None,
    dpi: int = 200,
) -> list[Path]:
    """Dot plot of ``metric_col`` per method (rows) in one panel per experiment (columns, shared rows).

    ``df``: ``experiment, method, seed, <metric_col>``. Small points are the seeds, the large marker with bar
    the mean ± sample std; method colours and family markers as in every figure. Methods are listed
    max-pooling family first (in order of appearance), then attention. ``ylabel`` names the metric (it is the
    value axis, drawn horizontally). AUC-like metrics span 0..1 and get a chance line at 0.5 (``chance``).

    Unlike :func:`plot_metric_by_method` (methods on x, experiments as colours), this shows experiments
    side by side with one colour per method, readable with up to 16 methods.
    Returns the PNG and PDF paths.
    """
    from matplotlib.lines import Line2D

    _require(df, ("experiment", "method", "seed", metric_col), f"{metric_col!r} per method")
    experiments = _order(df["experiment"])
    methods = _order(df["method"])
    styles = method_styles(methods)
    fam_rank = {"max-pooling": 0, "attention": 1}
    methods = sorted(methods, key=lambda m: fam_rank.get(styles[m]["family"], 2))  # stable: keeps appearance
    if chance is None and (metric_col.endswith("auc") or "auc" in ylabel.lower()):
        chance = 0.5
    unit = chance is not None or any(metric_col.endswith(u) for u in _UNIT_METRICS)
    n = len(experiments)
    ncols = min(n, 4)
    nrows = int(np.ceil(n / ncols))
    width = COLUMN_IN if ncols == 1 else min(PAGE_IN, 1.3 + 1.6 * ncols) if ncols < 4 else PAGE_IN
    height = (0.55 + 0.16 * len(methods)) * nrows + 0.35
    y = np.arange(len(methods))[::-1]  # first method on top
    with matplotlib.rc_context(_PAPER_RC):
        fig = _figure(width, height)
        axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
        for k, ax in enumerate(axes.flat):
            if k >= n:
                ax.set_visible(False)
                continue
            exp = experiments[k]
            d = df[df["experiment"] == exp]
            for yi, method in zip(y, methods):
                st = styles[method]
                v = d.loc[d["method"] == method, metric_col].astype(float).to_numpy()
                v = v[np.isfinite(v)]
                if len(v) == 0:
                    continue
                jitter = np.linspace(-0.22, 0.22, len(v)) if len(v) > 1 else np.zeros(1)
                ax.scatter(v, yi + jitter, s=7, color=st["color"], alpha=0.5, edgecolors="none", zorder=3,
                           clip_on=False)
                ax.errorbar(v.mean(), yi, xerr=_std(v), fmt=st["marker"], ms=4.5, color=st["color"], mec="black",
                            mew=0.5, ecolor=st["color"], elinewidth=1.2, capsize=2, zorder=4, clip_on=False)
            if chance is not None:
                ax.axvline(chance, color="0.45", ls=":", lw=0.8, zorder=1)
            fams = [styles[m]["family"] for m in methods]
            for i in range(1, len(methods)):
                if fams[i] != fams[i - 1]:  # a rule between the families
                    ax.axhline((y[i] + y[i - 1]) / 2, color="0.75", lw=0.6)
            ax.set_title(str(exp), loc="left")
            ax.grid(axis="x", color="0.92", lw=0.5)
            ax.set_axisbelow(True)
            ax.spines["left"].set_visible(False)
            ax.tick_params(axis="y", length=0)
            if unit:
                ax.set_xlim(0, 1)
                ax.set_xticks([0, 0.25, 0.5, 0.75, 1])
                ax.set_xticklabels(["0", ".25", ".5", ".75", "1"])
            if k // ncols == nrows - 1 or k + ncols >= n:
                ax.set_xlabel(ylabel)
                ax.tick_params(labelbottom=True)
        fig.legend(handles=[Line2D([], [], ls="none", color="0.35", marker=_FAMILY_STYLE[f]["marker"], ms=4,
                                   label=f"{f} family") for f in ("max-pooling", "attention")
                            if any(styles[m]["family"] == f for m in methods)],
                   loc="outside upper right", ncols=2, frameon=False, handletextpad=0.2)
        ax0 = axes.flat[0]
        ax0.set_yticks(y)
        ax0.set_yticklabels(methods)
        ax0.set_ylim(-0.6, len(methods) - 0.4)
        return _save(fig, Path(out_png), dpi)
