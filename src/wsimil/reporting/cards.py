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
from typing import Any, Mapping

import numpy as np
import pandas as pd

from wsimil.evaluation.intervals import Interval, contrast_interval, verdict
from wsimil.experiments import plan_cells
from wsimil.io import WsimilError, write_text_atomic
from wsimil.reporting import evidence as ev

#: the method every card's patch AUC and FROC are compared with (paired): the papers' max-pooling baseline
REFERENCE = "maxpool"
ROWS = ("clean slide AUC", "poisoned slide AUC", "change under the poison", "change at the unseen hospital",
        "MIL unit test: validation AUC", "MIL unit test: test AUC", "patch AUC (any tumour)",
        f"patch AUC − {REFERENCE}'s", "FROC", f"FROC − {REFERENCE}'s")
READING = {"supported": "unaffected", "contradicted": "affected", "inconclusive": "inconclusive"}
CHANCE = {"supported": "above chance", "contradicted": "below chance", "inconclusive": "inconclusive"}
VERSUS = {"supported": "better", "contradicted": "worse", "inconclusive": "inconclusive"}


def _iv_row(quantity: str, iv: Interval | None, reading: str = "", why: str = "not run") -> dict[str, Any]:
    if iv is None:
        return {"quantity": quantity, "value": math.nan, "ci_low": math.nan, "ci_high": math.nan, "reading": why}
    return {"quantity": quantity, "value": iv.estimate, "ci_low": iv.low, "ci_high": iv.high, "reading": reading}


def _paired_change(a: pd.DataFrame, b: pd.DataFrame, method: str) -> Interval:
    """AUC on ``b`` minus AUC on ``a`` (same slides, rows aligned), resampled together."""
    y = a["label"].to_numpy()
    return contrast_interval([(y, a[[method]].to_numpy()), (b["label"].to_numpy(), b[[method]].to_numpy())],
                             [np.array([-1.0]), np.array([1.0])], n_boot=ev.N_BOOT, seed=ev.BOOT_SEED,
                             pair_keys=["test", "test"])


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
    clean = ev.cell_scores(results, std, seeds)
    pois = ev.cell_scores(results, cells["poison"], seeds) if "poison" in cells else None
    ood = ev.cell_scores(results, cells["ood"], seeds) if "ood" in cells else None
    if ood is not None:
        tissue = ev.tissue_map(config)
        keys = [tissue.get(s, s) for s in ood.index]
        if sorted(keys) == list(clean.index) and len(set(keys)) == len(keys):
            ood = ood.set_axis(keys).loc[clean.index]
        else:
            ood = None  # different slides: no paired change per method (SUMMARY's ood claim says how it pairs)
    unit = ev.milunit_readings(results, cells["milunit"], seeds).set_index("method") if "milunit" in cells else None
    methods = list(std.methods)
    patch = ev.patch_auc_draws(config, results, std, seeds, methods)
    froc = ev.froc_draws(config, results, std, seeds, methods)
    rows = []
    for m in methods:
        one = lambda w: contrast_interval([(w["label"].to_numpy(), w[[m]].to_numpy())], [np.ones(1)],  # noqa: E731
                                          n_boot=ev.N_BOOT, seed=ev.BOOT_SEED)
        r = [_iv_row(ROWS[0], one(clean))]
        has_pois = pois is not None and m in pois.columns
        r.append(_iv_row(ROWS[1], one(pois) if has_pois else None))
        if has_pois:
            ch = _paired_change(clean, pois, m)
            r.append(_iv_row(ROWS[2], ch, READING[ev.equivalence_verdict(ch, ev.MARGIN)]))
        else:
            r.append(_iv_row(ROWS[2], None))
        if ood is not None and m in ood.columns:
            ch = _paired_change(clean, ood, m)
            r.append(_iv_row(ROWS[3], ch, READING[ev.equivalence_verdict(ch, ev.MARGIN)]))
        else:
            r.append(_iv_row(ROWS[3], None))
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
    return pd.DataFrame(rows)[["method", "quantity", "value", "ci_low", "ci_high", "reading"]]


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
    wide = wide.pivot(index="quantity", columns="method", values="cell").loc[list(ROWS), methods]
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


def plot_card(table: pd.DataFrame, method: str, out_png) -> list[Path]:
    """One row per quantity: every method's value and interval, ``method`` in colour, the others grey."""
    from wsimil.reporting.figures import _figure, _save, method_colors

    qs = [q for q in ROWS if table.loc[table["quantity"] == q, "value"].notna().any()]
    fig = _figure(6.5, 0.42 * len(qs) + 0.9)
    ax = fig.add_subplot()
    colour = method_colors([method])[method]
    for i, q in enumerate(qs):
        y = len(qs) - 1 - i
        d = table[table["quantity"] == q]
        for _, r in d.iterrows():
            if not math.isfinite(r["value"]):
                continue
            me = r["method"] == method
            ax.errorbar(r["value"], y + (0.12 if me else 0), xerr=[[r["value"] - r["ci_low"]], [r["ci_high"] - r["value"]]],
                        fmt="o", ms=5 if me else 3, color=colour if me else "0.65", elinewidth=1.4 if me else 0.8,
                        zorder=3 if me else 2)
    ax.axvline(0, color="0.3", lw=0.6, ls=":")
    ax.set_yticks(range(len(qs)), list(reversed(qs)), fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title(f"{method} (colour) beside the other methods (grey)", fontsize=8, loc="left")
    ax.grid(axis="x", color="0.92", lw=0.5)
    return _save(fig, Path(out_png), 200)
