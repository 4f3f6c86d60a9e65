"""FocusMIL's unpublished choices, studied: one factor at a time around wsimil's defaults, validation only.

FocusMIL has no public code and the paper's implementation details could not be read (REFERENCE.md), so
beta, the KL's normalisation, the log-variance head's initialisation, the latent size, the learning rate,
the training length and the bags per step are wsimil's choices. This study trains FocusMIL with each
alternative on three problems and reads only their training and validation splits:

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
    "logvar_init": ("model.logvar_init", (-4.0, -8.0)),
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
        why = (f"{chosen} has the smallest train-validation gap ({pick['gap']:.3f}) of the {len(tied)} settings "
               f"within {margin:g} of the best mean validation AUC ({best:.3f}); the default is not among them")
    row = ok.set_index("setting").loc[chosen]
    learns = None if "val_auc_toy" not in ok else bool(row["val_auc_toy"] >= LEARNS_TOY)
    return Selection(chosen, tuple(tied["setting"]), why, learns)
