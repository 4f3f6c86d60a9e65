"""FocusMIL's unpublished choices, studied: one factor at a time around wsimil's defaults, validation only.

FocusMIL has no public code and the paper's implementation details could not be read (docs/references.md,
"FocusMIL"), so beta, the KL's normalisation, the log-variance head's initialisation, the latent size, the
learning rate, the training length and the bags per step are wsimil's choices. This study trains FocusMIL
with each alternative on three problems and reads only their training and validation splits:

- ``toy``: the separable toy of the test suite (:func:`wsimil.datasets.toy.separable_bags`, 100 training and
  20 validation bags; its test bags are never generated);
- ``milunit``: Raff & Holt's unit test (its validation split has the training distribution, poison included);
- ``standard``: the standard cell's slides (clean features, the dataset's training and validation slides).

Test slides are dropped before any feature is read, so no test split, poison or OOD result can inform the
choice. Every setting gets the same optimiser steps (``max_steps``; the ``steps`` factor multiplies them).

The selection rule (:func:`select`) was written and committed before the first run of the study:

1. per setting and problem, the mean over seeds of the validation AUC of the selected epoch, and of the
   train-validation gap (training AUC with mu, no sampling, minus validation AUC, same model);
2. a setting's score is the mean of its validation AUCs over the problems (each problem counts once);
3. the settings within ``TIE_MARGIN`` (0.01) of the best score are tied; among them the current default is
   kept if it is tied, otherwise the smallest mean gap wins, then the order of the grid.

A setting *learns the toy* when its mean toy validation AUC is at least ``LEARNS_TOY`` (0.95, the bar of
tests/test_training.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from wsimil.io import WsimilError

log = logging.getLogger(__name__)

METHOD = "focusmil"
PROBLEMS = ("toy", "milunit", "standard")
TIE_MARGIN = 0.01
LEARNS_TOY = 0.95
DEFAULT = "default"

# factor -> (training override key, alternative levels); the default level is the method's own default.
FACTORS: dict[str, tuple[str, tuple[Any, ...]]] = {
    "beta": ("model.beta", (0.0, 1e-4, 1e-3, 1e-1, 1.0)),
    "kl": ("model.kl", ("sum_dims", "selected")),
    "logvar_init": ("model.logvar_init", (None, -4.0, -8.0)),  # None: PyTorch's init (sigma ~ 1 at the start)
    "latent": ("model.latent", (32,)),
    "lr": ("lr", (1e-3,)),
    "steps": ("steps", (4,)),  # a multiple of max_steps
    "bags_per_batch": ("bags_per_batch", (1, 32)),
}


@dataclass(frozen=True)
class Setting:
    """One trained configuration: ``factor`` set to ``level``, everything else at the default."""

    name: str
    factor: str
    level: Any
    overrides: Mapping[str, Any] = field(default_factory=dict)
    steps_multiple: int = 1


def _fmt(level: Any) -> str:
    if level is None:
        return "pytorch"
    return format(level, "g") if isinstance(level, float) else str(level)


def default_level(factor: str) -> Any:
    from wsimil.models.base import get_method

    key = FACTORS[factor][0]
    if key == "steps":
        return 1
    hp = get_method(METHOD).hparams()
    return hp["model"][key.split(".", 1)[1]] if key.startswith("model.") else hp[key]


def settings(factors: Mapping[str, Sequence[Any]] | None = None) -> list[Setting]:
    """The default, then one setting per alternative level of each factor (``factors`` overrides the levels)."""
    grid = {f: tuple(levels) for f, (_, levels) in FACTORS.items()}
    for f, levels in (factors or {}).items():
        if f not in FACTORS:
            raise WsimilError(f"focusmil_sensitivity: unknown factor {f!r}; known: {', '.join(FACTORS)}")
        grid[f] = tuple(levels)
    out = [Setting(DEFAULT, DEFAULT, DEFAULT)]
    for f, levels in grid.items():
        key = FACTORS[f][0]
        for level in levels:
            if level == default_level(f):
                continue
            if key == "steps":
                out.append(Setting(f"steps=x{int(level)}", f, int(level), {}, int(level)))
            else:
                out.append(Setting(f"{f}={_fmt(level)}", f, level, {key: level}))
    return out


def train_val_only(sheet: pd.DataFrame) -> pd.DataFrame:
    """The training and validation rows of a sample sheet: the study never reads a test slide."""
    return sheet[sheet["split"].isin(["train", "val"])].reset_index(drop=True)


def run_setting(bags, setting: Setting, seed: int, max_steps: int, problem: str) -> dict[str, Any]:
    """Train FocusMIL with ``setting`` on ``bags`` (train / val only); one row of the study's table."""
    from wsimil.training.loop import predict, safe_auc, train

    if len(bags.indices("test")):
        raise WsimilError(f"focusmil_sensitivity: problem {problem!r} holds test bags; the study reads none")
    # an epoch count no step budget reaches: the study's budget, not the method's 100 epochs, ends training
    overrides = {**setting.overrides, "epochs": 1_000_000, "max_steps": int(max_steps) * setting.steps_multiple}
    t0 = time.perf_counter()
    result = train(bags, METHOD, seed=seed, overrides=overrides)
    tr, va = bags.indices("train"), bags.indices("val")
    train_auc = safe_auc(bags.labels[tr], predict(result.model, bags, tr).probs)
    val_auc = float(result.history[result.best_epoch]["val_auc"])
    return {"setting": setting.name, "factor": setting.factor, "level": _fmt(setting.level), "problem": problem,
            "seed": int(seed), "val_auc": val_auc, "train_auc": float(train_auc), "gap": float(train_auc - val_auc),
            "best_epoch": int(result.best_epoch), "epochs": len(result.history), "steps": int(result.steps),
            "seconds": round(time.perf_counter() - t0, 2)}


def run_problem(bags, problem: str, seeds: Sequence[int], max_steps: int,
                factors: Mapping[str, Sequence[Any]] | None = None, progress: bool = False) -> pd.DataFrame:
    """Every setting x seed on one problem -> one row each (:func:`run_setting`)."""
    grid = [(s, seed) for s in settings(factors) for seed in seeds]
    if progress:
        from tqdm import tqdm

        grid = tqdm(grid, desc=f"focusmil sensitivity, {problem}", unit="run")
    rows = []
    for s, seed in grid:
        rows.append(run_setting(bags, s, seed, max_steps, problem))
        log.info("%s %s seed %d: val AUC %.3f, gap %.3f", problem, s.name, seed, rows[-1]["val_auc"], rows[-1]["gap"])
    return pd.DataFrame(rows)


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per setting: mean val AUC and gap per problem (``val_auc_<problem>``, ``gap_<problem>``), their
    means over problems (``score``, ``gap``), seeds run, in the grid's order (the default first)."""
    need = {"setting", "factor", "level", "problem", "seed", "val_auc", "gap"}
    if missing := need - set(rows.columns):
        raise WsimilError(f"focusmil_sensitivity: the runs table lacks {sorted(missing)}")
    order = list(dict.fromkeys(rows["setting"]))
    per = rows.groupby(["setting", "problem"], sort=False).agg(val_auc=("val_auc", "mean"), gap=("gap", "mean"),
                                                             seeds=("seed", "nunique"))
    wide = per.unstack("problem")
    problems = [p for p in PROBLEMS if p in set(rows["problem"])] + sorted(set(rows["problem"]) - set(PROBLEMS))
    out = pd.DataFrame(index=pd.Index(order, name="setting"))
    first = rows.drop_duplicates("setting").set_index("setting")
    out["factor"], out["level"] = first["factor"], first["level"]
    for p in problems:
        out[f"val_auc_{p}"] = wide[("val_auc", p)]
        out[f"gap_{p}"] = wide[("gap", p)]
    out["score"] = out[[f"val_auc_{p}" for p in problems]].mean(axis=1, skipna=False)
    out["gap"] = out[[f"gap_{p}" for p in problems]].mean(axis=1, skipna=False)
    out["seeds"] = wide["seeds"].min(axis=1)
    return out.reset_index()


@dataclass(frozen=True)
class Selection:
    chosen: str
    tied: tuple[str, ...]
    reason: str
    learns_toy: bool | None


def select(summary: pd.DataFrame, default: str = DEFAULT, margin: float = TIE_MARGIN) -> Selection:
    """The selection rule of the module docstring, on :func:`summarise`'s table (rows in grid order)."""
    if summary.empty or summary["score"].isna().all():
        raise WsimilError("focusmil_sensitivity: no setting has a validation AUC on every problem")
    ok = summary.dropna(subset=["score"]).reset_index(drop=True)
    best = float(ok["score"].max())
    tied = ok[ok["score"] >= best - margin]
    if default in set(tied["setting"]):
        chosen = default
        why = f"the default is within {margin:g} of the best mean validation AUC ({best:.3f}): kept"
    else:
        pick = tied.sort_values("gap", kind="stable").iloc[0]  # stable: grid order breaks equal gaps
        chosen = str(pick["setting"])
        which = (f"the only setting within {margin:g} of the best mean validation AUC ({best:.3f})" if len(tied) == 1 else
                 f"of the {len(tied)} settings within {margin:g} of the best mean validation AUC ({best:.3f}), the one "
                 f"with the smallest train-validation gap ({pick['gap']:.3f})")
        why = f"{chosen} is {which}; the default is not among them"
    row = ok.set_index("setting").loc[chosen]
    learns = None if "val_auc_toy" not in ok else bool(row["val_auc_toy"] >= LEARNS_TOY)
    return Selection(chosen, tuple(tied["setting"]), why, learns)


# ------------------------------------------------------------------------------------------------ problems


def load_problem(problem: str, features: str | None = None, sheet: str | None = None):
    """The problem's bags, training and validation splits only. ``toy`` is generated; ``milunit`` and
    ``standard`` read ``sheet`` (its test rows dropped first) and ``features/<id>.h5``."""
    from wsimil.datasets.sheet import read_sheet
    from wsimil.datasets.toy import separable_bags
    from wsimil.training.data import load_bags

    if problem == "toy":
        return separable_bags(n=(100, 20, 0))  # tests/test_training.py's toy, without its test bags
    if problem not in PROBLEMS:
        raise WsimilError(f"focusmil_sensitivity: unknown problem {problem!r}; known: {', '.join(PROBLEMS)}")
    if features is None or sheet is None:
        raise WsimilError(f"focusmil_sensitivity: problem {problem!r} needs --features and --slides")
    rows = train_val_only(read_sheet(sheet))
    if not {"train", "val"} <= set(rows["split"]):
        raise WsimilError(f"{sheet}: the study needs training and validation slides; found {sorted(set(rows['split']))}")
    return load_bags(rows, features)


# ------------------------------------------------------------------------------------------------ report

SUMMARY_COLUMNS = {"setting": "setting", "score": "mean val AUC", "gap": "mean gap"}


def study_table(summary: pd.DataFrame, selection: Selection) -> pd.DataFrame:
    """The report's table: one row per setting, each problem's validation AUC and gap, the mean over
    problems, and which setting the rule chose (``chosen``) and which were tied."""
    problems = [c.removeprefix("val_auc_") for c in summary.columns if c.startswith("val_auc_")]
    cols = ["setting"] + [c for p in problems for c in (f"val_auc_{p}", f"gap_{p}")] + ["score", "gap", "seeds"]
    out = summary[cols].copy()
    num = [c for c in cols if c != "setting"]
    out[num] = out[num].astype(float)
    out["seeds"] = out["seeds"].astype(int)
    out["selection"] = ["chosen" if s == selection.chosen else "tied" if s in selection.tied else ""
                        for s in out["setting"]]
    names = {f"val_auc_{p}": f"{p} val AUC" for p in problems} | {f"gap_{p}": f"{p} gap" for p in problems}
    return out.rename(columns={"score": "mean val AUC", "gap": "mean gap", **names})


def write_study(rows: pd.DataFrame, stem_table, stem_figure, captions=None) -> list:
    """``tables/focusmil_sensitivity.{csv,md,tex,html}`` (+ ``_runs.csv``, every seed), the figure, and the
    page ``pages/focusmil_sensitivity.html`` beside ``tables/``."""
    from pathlib import Path

    from wsimil.io import write_csv_atomic
    from wsimil.reporting.tables import write_table

    summary = summarise(rows)
    sel = select(summary)
    table = study_table(summary, sel)
    toy = ("" if sel.learns_toy is None else
           " The chosen setting learns the separable toy (validation AUC >= 0.95)." if sel.learns_toy else
           " No chosen setting learns the separable toy (validation AUC < 0.95): tests/test_training.py keeps its xfail.")
    learners = table.loc[table.get("toy val AUC", pd.Series(dtype=float)) >= LEARNS_TOY, "setting"].tolist()
    caption = (f"FocusMIL's unpublished choices, one factor at a time around wsimil's defaults: validation AUC and "
               f"train-validation gap (training AUC minus validation AUC, same model) per problem, means over "
               f"{int(summary['seeds'].min())} seeds; no test slide is read. Rule (fixed before the runs): the highest "
               f"mean validation AUC over problems, within {TIE_MARGIN:g} the default is kept, otherwise the smallest "
               f"gap. Chosen: {sel.chosen} ({sel.reason}).{toy} Settings that learn the toy: "
               f"{', '.join(learners) if learners else 'none'}.")
    stem_table = Path(stem_table)
    out = write_table(table, stem_table, caption)
    runs = stem_table.with_name(stem_table.name + "_runs.csv")
    write_csv_atomic(rows, runs)
    from wsimil.reporting.html import experiment_page

    figs = plot_study(table, stem_figure)
    results = stem_table.parent.parent
    import os

    files = [os.path.relpath(p, results).replace(os.sep, "/") for p in out + figs]
    page = experiment_page(results, "focusmil_sensitivity", "focusmil_sensitivity", files, captions)
    return out + [runs] + figs + [page]  # the page sits in <table folder>/../pages


def plot_study(table: pd.DataFrame, out_png) -> list:
    """Validation AUC (dots) and train-validation gap (bars) per setting and problem; the default's validation
    AUC as a dashed line per problem, the chosen setting in bold."""
    from pathlib import Path

    from wsimil.reporting.figures import _figure, _save

    problems = [c.removesuffix(" val AUC") for c in table.columns if c.endswith(" val AUC") and c != "mean val AUC"]
    fig = _figure(3.0 * len(problems) + 1.2, 0.28 * len(table) + 1.4)
    axes = fig.subplots(1, len(problems), sharey=True, squeeze=False)[0]
    y = np.arange(len(table))[::-1]
    for ax, p in zip(axes, problems):
        ax.barh(y, table[f"{p} gap"], color="#bbbbbb", height=0.6, label="train - val gap")
        ax.plot(table[f"{p} val AUC"], y, "o", color="#1f4e9c", ms=4, label="val AUC")
        ax.axvline(float(table.loc[table["setting"] == DEFAULT, f"{p} val AUC"].iloc[0]), color="#1f4e9c", lw=0.8,
                   ls="--")
        ax.axvline(0, color="black", lw=0.5)
        ax.set_xlim(min(-0.05, float(table[f"{p} gap"].min()) - 0.05), 1.02)
        ax.set_title(p, fontsize=9)
        ax.set_xlabel("AUC / gap", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_yticks(y, table["setting"])
    for label, sel in zip(axes[0].get_yticklabels(), table["selection"]):
        label.set_fontweight("bold" if sel == "chosen" else "normal")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.suptitle("FocusMIL sensitivity (validation only); bold: chosen by the rule", fontsize=9)
    return _save(fig, Path(out_png), 200)
