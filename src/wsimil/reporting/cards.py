"""A robustness card per method: the battery of the papers for one aggregator, beside every other method's values.

``cards/<method>.md`` (+ ``.csv``, ``.png``): the clean test slide AUC, the poisoned AUC and the paired change,
the change at the unseen hospital, the MIL unit test (validation -> test AUC and its reading), the patch AUC
and the FROC and their paired differences to max-pooling (``maxpool``, the papers' reference aggregator), for
the standard cell's methods. The intervals are SUMMARY's (:mod:`wsimil.reporting.evidence`): slide AUCs from
seed-averaged scores and a stratified bootstrap over slides, paired where the slides are the same or the same
tissue; patch AUCs as SUMMARY's patch claim (the mean of the seeds' AUCs, the tumour slides resampled with all
their patches); FROC the mean of the seeds' FROCs on stratified resamples of the test slides, each drawn slide
with its lesions and false positives. The same resamples serve every method, so a difference is paired.

Readings, by SUMMARY's rules and margin (``MARGIN``): a change is ``unaffected`` when its whole interval lies
within +-margin, ``affected`` when it lies beyond, ``inconclusive`` otherwise (the equivalence rule); a patch
AUC is ``above chance`` when its interval minus 0.5 clears +margin, ``below chance`` when it lies below -margin;
a difference to max-pooling is ``better`` / ``worse`` / ``inconclusive`` by the directional rule.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from wsimil.evaluation.intervals import Interval, contrast_interval, verdict
from wsimil.experiments import Cell, plan_cells
from wsimil.io import WsimilError, write_text_atomic
from wsimil.reporting import evidence as ev

#: the method every card's patch AUC and FROC are compared with (paired): the papers' max-pooling baseline
REFERENCE = "maxpool"
#: the quantities of a card, each named as every table names it (the slide AUCs are those of the seed-averaged
#: scores, as in SUMMARY.md; the patch AUC and the FROC are the mean of the seeds' values)
ROWS = ("clean slide AUC of seed-averaged scores", "poisoned slide AUC of seed-averaged scores",
        "change under the poison (poisoned − clean)", "change at the unseen hospital (ood − standard)",
        "MIL unit test: validation AUC of seed-averaged scores", "MIL unit test: test AUC of seed-averaged scores",
        "patch AUC (any tumour), mean of seeds", f"patch AUC − {REFERENCE}'s", "FROC, mean of seeds",
        f"FROC − {REFERENCE}'s")
READING = {"supported": "unaffected", "contradicted": "affected", "inconclusive": "inconclusive"}
CHANCE = {"supported": "above chance", "contradicted": "below chance", "inconclusive": "inconclusive"}
VERSUS = {"supported": "better", "contradicted": "worse", "inconclusive": "inconclusive"}


def _iv_row(quantity: str, iv: Interval | None, reading: str = "", why: str = "not run") -> dict[str, Any]:
    if iv is None:
        return {"quantity": quantity, "value": math.nan, "ci_low": math.nan, "ci_high": math.nan, "reading": why}
    return {"quantity": quantity, "value": iv.estimate, "ci_low": iv.low, "ci_high": iv.high, "reading": reading}


def _change_row(quantity: str, r: pd.Series) -> dict[str, Any]:
    """A row of :func:`wsimil.reporting.evidence.auc_changes` as a card row, read by the equivalence rule."""
    iv = Interval(float(r["change"]), float(r["change_ci_low"]), float(r["change_ci_high"]), 0.95, ev.N_BOOT)
    reading = READING[ev.equivalence_verdict(iv, ev.MARGIN)]
    if not r["paired"]:
        reading += " (unpaired: different slides)"
    return _iv_row(quantity, iv, reading)


def _draws_interval(point: float, draws: np.ndarray) -> Interval:
    """The 95% percentile interval of bootstrap draws (NaN bounds when a resample had no value)."""
    if not np.isfinite(draws).all():
        return Interval(float(point), math.nan, math.nan, 0.95, len(draws))
    lo, hi = np.quantile(draws, [0.025, 0.975])
    return Interval(float(point), float(lo), float(hi), 0.95, len(draws))


def _undefined(draws: np.ndarray, what: str) -> str:
    return f"no interval: {int((~np.isfinite(draws)).sum())} of {len(draws)} resamples had {what}"


def _localisation_rows(name: str, diff_name: str, draws: tuple | str, methods: list[str], m: str) -> list[dict[str, Any]]:
    """The value row and the paired difference to ``REFERENCE`` of a patch AUC or a FROC (``draws`` from
    :func:`wsimil.reporting.evidence.patch_auc_draws` / ``froc_draws``, or the reason it is missing)."""
    if isinstance(draws, str):
        return [_iv_row(name, None, why=f"not available: {draws}"), _iv_row(diff_name, None, why="not available")]
    point, boot, _ = draws
    lacking = "patches of one class only" if name.startswith("patch") else "no non-ITC lesion"
    j = methods.index(m)
    iv = _draws_interval(point[j], boot[:, j])
    if not math.isfinite(iv.low):
        value = _iv_row(name, iv, _undefined(boot[:, j], lacking))
    elif name.startswith("patch"):
        value = _iv_row(name, iv, CHANCE[verdict(Interval(iv.estimate - 0.5, iv.low - 0.5, iv.high - 0.5, iv.level,
                                                          iv.n_boot), ev.MARGIN, 1)])
    else:
        value = _iv_row(name, iv)
    if REFERENCE not in methods:
        return [value, _iv_row(diff_name, None, why=f"not run: {REFERENCE} is not in the standard cell")]
    if m == REFERENCE:
        return [value, _iv_row(diff_name, None, why="the reference")]
    r = methods.index(REFERENCE)
    d = _draws_interval(point[j] - point[r], boot[:, j] - boot[:, r])
    reading = VERSUS[verdict(d, ev.MARGIN, 1)] if math.isfinite(d.low) else _undefined(boot[:, j] - boot[:, r], lacking)
    return [value, _iv_row(diff_name, d, reading)]


def card_table(config: Mapping[str, Any], results: str | os.PathLike) -> pd.DataFrame:
    """Long table: method x quantity (``ROWS``) -> value, ci_low, ci_high (95%), reading."""
    results = Path(results)
    seeds = list(config["training"]["seeds"])
    cells = {c.name: c for c in plan_cells(config)}
    if "standard" not in cells:
        raise WsimilError("robustness cards need the standard experiment")
    std = cells["standard"]
    changes = {}
    for name in ("poison", "ood"):
        if name in cells:
            changes[name] = ev.auc_changes(config, results, std, cells[name], seeds).set_index("method")
    unit = ev.milunit_readings(results, cells["milunit"], seeds).set_index("method") if "milunit" in cells else None
    methods = list(std.methods)
    patch = ev.patch_auc_draws(config, results, std, seeds, methods)
    froc = ev.froc_draws(config, results, std, seeds, methods)
    clean = ev.auc_intervals(results, std, seeds).set_index("method")
    rows = []
    for m in methods:
        c = clean.loc[m]
        r = [{"quantity": ROWS[0], "value": c["slide_auc_seedavg"], "ci_low": c["slide_auc_ci_low"],
              "ci_high": c["slide_auc_ci_high"], "reading": ""}]
        pois = changes.get("poison")
        if pois is not None and m in pois.index:
            p = pois.loc[m]
            r.append({"quantity": ROWS[1], "value": p["other_auc"], "ci_low": p["other_ci_low"],
                      "ci_high": p["other_ci_high"], "reading": ""})
            r.append(_change_row(ROWS[2], p))
        else:
            r += [_iv_row(ROWS[1], None), _iv_row(ROWS[2], None)]
        ood = changes.get("ood")
        r.append(_change_row(ROWS[3], ood.loc[m]) if ood is not None and m in ood.index else _iv_row(ROWS[3], None))
        if unit is not None and m in unit.index:
            u = unit.loc[m]
            r.append({"quantity": ROWS[4], "value": u["val_auc"], "ci_low": u["val_ci_low"], "ci_high": u["val_ci_high"],
                      "reading": ""})
            r.append({"quantity": ROWS[5], "value": u["test_auc"], "ci_low": u["test_ci_low"],
                      "ci_high": u["test_ci_high"], "reading": u["reading"]})
        else:
            r += [_iv_row(ROWS[4], None), _iv_row(ROWS[5], None)]
        r += _localisation_rows(*ROWS[6:8], patch, methods, m) + _localisation_rows(*ROWS[8:10], froc, methods, m)
        for row in r:
            row["method"] = m
        rows += r
    cols = ["method", "quantity", "value", "ci_low", "ci_high", "reading"]
    table = pd.DataFrame(rows)[cols]
    from wsimil.experiments import configured

    extra = [e.card_rows(config, results, cells, methods) for e in configured(config) if e.in_cards]
    extra = [x[cols] for x in extra if len(x)]
    if not extra:
        return table
    order = {m: i for i, m in enumerate(methods)}  # each method's rows together, the experiments' after the built-in
    out = pd.concat([table, *extra], ignore_index=True)
    return out.sort_values("method", key=lambda c: c.map(order), kind="stable").reset_index(drop=True)


def change_rows(config: Mapping[str, Any], results: Path, base: Cell, other: Cell, quantity: str,
                methods: Sequence[str]) -> pd.DataFrame:
    """Card rows of each method's change in test slide AUC from ``base`` to ``other`` (other − base, paired where
    the test slides are the same), read by the equivalence rule as the built-in changes are: for an experiment's
    :meth:`~wsimil.experiments.Experiment.card_rows`."""
    ch = ev.auc_changes(config, Path(results), base, other, list(config["training"]["seeds"]),
                        [m for m in methods if m in other.methods and m in base.methods]).set_index("method")
    rows = []
    for m in methods:
        row = _change_row(quantity, ch.loc[m]) if m in ch.index else _iv_row(quantity, None)
        rows.append({"method": m, **row})
    return pd.DataFrame(rows, columns=["method", "quantity", "value", "ci_low", "ci_high", "reading"])


def _fmt(v: float, lo: float, hi: float, signed: bool = False) -> str:
    if not math.isfinite(v):
        return "–"
    f = "+.3f" if signed else ".3f"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{v:{f}} [no interval]".replace("-", "−")
    return f"{v:{f}} [{lo:{f}}, {hi:{f}}]".replace("-", "−")


def _cells(t: pd.DataFrame) -> list[str]:
    return [_fmt(v, lo, hi, q.startswith("change") or " − " in q) for q, v, lo, hi in zip(t["quantity"], t["value"], t["ci_low"], t["ci_high"])]


def write_cards(config: Mapping[str, Any], results: str | os.PathLike) -> list[Path]:
    """``cards/<method>.{md,csv,html,png,pdf}`` for every method of the standard cell, and ``cards/cards.csv``."""
    from wsimil.io import write_csv_atomic

    results = Path(results)
    table = card_table(config, results)
    out_dir = results / "cards"
    written = []
    write_csv_atomic(table, out_dir / "cards.csv")
    written.append(out_dir / "cards.csv")
    methods = list(dict.fromkeys(table["method"]))
    wide = table.assign(cell=_cells(table))
    quantities = list(dict.fromkeys(table["quantity"]))  # ROWS, then any experiment's own
    wide = wide.pivot(index="quantity", columns="method", values="cell").loc[quantities, methods]
    dataset = config["dataset"]["name"]
    for m in methods:
        mine = table[table["method"] == m]
        write_csv_atomic(mine, out_dir / f"{m}.csv")
        own = pd.DataFrame({"quantity": mine["quantity"],
                            "value [95% CI]": _cells(mine),
                            "reading": mine["reading"]})
        others = wide[[m] + [o for o in methods if o != m]].reset_index()
        text = (f"# Robustness card: {m} ({dataset})\n\n"
                f"The papers' battery for one method (wsimil.reporting.cards): intervals as in SUMMARY.md (seed-averaged "
                f"scores, stratified bootstrap over slides, paired where the slides are the same), a change read "
                f"'unaffected' when its whole interval lies within ±{ev.MARGIN}, 'affected' when it lies beyond, "
                f"'inconclusive' otherwise. Patch AUC (the mean of the seeds' AUCs, the test tumour slides "
                f"resampled with their patches): 'above' / 'below chance' when its interval clears 0.5 ± "
                f"{ev.MARGIN}. FROC: the mean of the seeds' FROCs, the test slides resampled with their lesions. "
                f"A difference to {REFERENCE} is paired (the same resamples): 'better' / 'worse' when its "
                f"interval clears ±{ev.MARGIN}, 'inconclusive' otherwise.\n\n"
                f"{own.to_markdown(index=False)}\n\n## Beside the other methods of this run\n\n"
                f"{others.to_markdown(index=False)}\n")
        write_text_atomic(out_dir / f"{m}.md", text)
        figs = plot_card(table, m, out_dir / f"{m}.png")
        from wsimil.reporting.html import document, figure_html, markdown_html

        write_text_atomic(out_dir / f"{m}.html", document(f"{m}: robustness card", markdown_html(text).replace(
            "<table>", '<table class="wsimil">') + figure_html(figs[0])))
        written += [out_dir / f"{m}.csv", out_dir / f"{m}.md", out_dir / f"{m}.html", *figs]
    return written


def _is_change(quantity: str) -> bool:
    """A change or a difference (signed, -1..+1) rather than a value (0..1): as the card's cells sign them."""
    return quantity.startswith("change") or " − " in quantity


def plot_card(table: pd.DataFrame, method: str, out_png) -> list[Path]:
    """The card as a figure: one row per quantity with a value, ``method``'s value and 95% interval in colour
    (its reading at the right), every other method of the run as a grey dot with its interval.

    ``table``: :func:`card_table`'s rows (``method, quantity, value, ci_low, ci_high, reading``). Values (slide
    and patch AUCs, FROC) sit in the upper panel on 0..1 with a dotted line at an AUC's chance (0.5); changes
    and differences in the lower panel on -1..+1 with a line at zero. Returns the PNG and PDF paths.
    """
    import textwrap

    import matplotlib
    from matplotlib.lines import Line2D

    from wsimil.reporting.figures import _PAPER_RC, _figure, _save, method_colors

    present = [q for q in dict.fromkeys(table["quantity"]) if table.loc[table["quantity"] == q, "value"].notna().any()]
    groups = [(qs, lim, xlabel) for qs, lim, xlabel in (
        ([q for q in present if not _is_change(q)], (0.0, 1.0), "value (AUC or FROC, 0 to 1)"),
        ([q for q in present if _is_change(q)], (-1.0, 1.0), "change or difference (−1 to +1)"),
    ) if qs]
    colour = method_colors([method])[method]
    n_others = table.loc[table["method"] != method, "method"].nunique()
    with matplotlib.rc_context(_PAPER_RC):
        fig = _figure(6.5, 0.3 * len(present) + 0.75 * len(groups) + 0.6)
        axes = fig.subplots(len(groups), 1, squeeze=False, height_ratios=[len(g[0]) + 0.6 for g in groups])[:, 0]
        for ax, (qs, lim, xlabel) in zip(axes, groups):
            for i, q in enumerate(qs):
                y = len(qs) - 1 - i
                d = table[table["quantity"] == q]
                others = d[(d["method"] != method) & d["value"].notna()]
                for k, (_, r) in enumerate(others.iterrows()):
                    dy = -0.08 - 0.22 * k / max(len(others) - 1, 1)  # below the method's row, spread apart
                    bar = ([[r["value"] - r["ci_low"]], [r["ci_high"] - r["value"]]]
                           if math.isfinite(r["ci_low"]) and math.isfinite(r["ci_high"]) else None)
                    ax.errorbar(r["value"], y + dy, xerr=bar, fmt="o", ms=3, color="0.62", elinewidth=0.7,
                                capsize=0, zorder=2, clip_on=False, gid="other")
                own = d[d["method"] == method]
                if own.empty:
                    continue
                r = own.iloc[0]
                if math.isfinite(r["value"]):
                    bar = ([[r["value"] - r["ci_low"]], [r["ci_high"] - r["value"]]]
                           if math.isfinite(r["ci_low"]) and math.isfinite(r["ci_high"]) else None)
                    ax.errorbar(r["value"], y + 0.15, xerr=bar, fmt="o", ms=5, color=colour, mec="black", mew=0.5,
                                elinewidth=1.6, capsize=2.5, zorder=4, clip_on=False, gid="own")
                if isinstance(r["reading"], str) and r["reading"]:
                    ax.text(1.03, y, r["reading"], transform=ax.get_yaxis_transform(), va="center", ha="left",
                            fontsize=7, color="0.25")
            if lim[0] < 0:
                ax.axvline(0, color="0.3", lw=0.8, zorder=1, gid="zero")
            else:
                ax.axvline(0.5, color="0.55", lw=0.7, ls=":", zorder=1, gid="chance")
            ax.set_xlim(*lim)
            ax.set_ylim(-0.6, len(qs) - 0.4)
            ax.set_yticks(range(len(qs)), [textwrap.fill(q, 34, break_on_hyphens=False) for q in reversed(qs)])
            ax.tick_params(axis="y", length=0)
            ax.set_xlabel(xlabel)
            ax.grid(axis="x", color="0.92", lw=0.5)
            ax.set_axisbelow(True)
        handles = [Line2D([], [], ls="-", marker="o", ms=5, color=colour, mec="black", mew=0.5, lw=1.6,
                          label=f"{method}: value and 95% CI (reading at the right)"),
                   Line2D([], [], ls="-", marker="o", ms=3, color="0.62", lw=0.7,
                          label=f"other methods of this run ({n_others}), each with its 95% CI")]
        if any(lim[0] >= 0 for _, lim, _ in groups):
            handles.append(Line2D([], [], color="0.55", lw=0.7, ls=":", label="AUC chance (0.5)"))
        if any(lim[0] < 0 for _, lim, _ in groups):
            handles.append(Line2D([], [], color="0.3", lw=0.8, label="no change (0)"))
        fig.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False)
        axes[0].set_title(f"Robustness card: {method}", loc="left", fontsize=9)
    return _save(fig, Path(out_png), 200)
