"""Cells: the sets of runs the experiments plan (wsimil.experiments.registry), and what they share.

A cell is a set of runs that share their features, sample sheet and training overrides:
``results/<dataset>/runs/<cell>/<method>/seed<k>/``. Most experiments are one cell (``standard``, ``ood``,
``poison``, ``milunit``); a sweep is one cell per value (``dtfd_ablation_m4``: DTFD with 4 pseudo-bags;
``minet_curves_beta0.1``: FocusMIL with beta 0.1; ``dose_s0.5_f0.5``: poison strength 0.5 on half the
patches). A point that another experiment already trains is shared, not trained twice: the dose-response
curves start at the ``standard`` cell (no poison) and pass through the ``poison`` cell.

Pure functions of the validated config: the Snakefile, ``wsimil report`` and the tests plan the same cells.
Each experiment plans its own (its module in this package); here are the cell, the names of feature sets and
the helpers more than one experiment uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import pandas as pd

from wsimil.io import WsimilError

@dataclass(frozen=True)
class Cell:
    """One set of runs: every ``methods`` x seed on the features ``features`` and the sheet ``sheet``.

    ``features``: ``clean``, a poison tag (:func:`poison_tag`) or ``milunit``; ``sheet``: ``main``, ``ood``
    or ``milunit``; ``overrides``: per-method training overrides on top of ``training.overrides``;
    ``params``: the values the cell stands for in its experiment's table (``{"n_pseudo_bags": 4}``).
    """

    name: str
    experiment: str
    features: str
    sheet: str
    methods: tuple[str, ...]
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)


def fmt_number(x: float) -> str:
    """A number as it appears in paths and cell names: 0.25 -> '0.25', 1.0 -> '1', 1e-3 -> '0.001'."""
    return format(float(x), "g")


def poison_tag(strength: float, fraction: float, seed: int) -> str:
    """Feature folder name of one poison level (the parameters that change the features are in it)."""
    return f"poison_s{fmt_number(strength)}_f{fmt_number(fraction)}_seed{int(seed)}"


def patch_tag(config: Mapping[str, Any]) -> str:
    """Folder name of the patch grid: the parameters that change the patches are in it."""
    return f"{config['patching']['target_mpp']}mpp_{config['patching']['patch_size']}px"


def features_root(config: Mapping[str, Any]) -> str:
    """The folder of every feature set (clean, each poison level) under ``results/<dataset>/``."""
    if config["dataset"]["source"] == "features":
        return f"features/imported_{config['imported_features']['format']}"
    return f"features/{patch_tag(config)}/{config['features']['extractor']}"


def features_subdir(config: Mapping[str, Any], kind: str) -> str:
    """Feature folder of a cell's ``features`` (``clean`` or a poison tag) under ``results/<dataset>/``."""
    return f"{features_root(config)}/{kind}"


def feature_set(cell: Cell) -> str:
    """The name of a cell's feature set: its features on its sheet's slides (``clean``, ``clean_ood``, a poison
    tag, ``milunit``). Cells on the same set read the same files through one manifest."""
    return cell.features if cell.sheet in ("main", cell.features) else f"{cell.features}_{cell.sheet}"


def manifest_subpath(cell: Cell) -> str:
    """A cell's feature manifest under ``results/<dataset>/`` (wsimil.features.store.write_manifest): the file
    through which every job after extraction reads the cell's features, one per feature set."""
    return f"manifests/{feature_set(cell)}.tsv"


def _deep_merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def dose_levels(config: Mapping[str, Any]) -> list[tuple[float, float]]:
    """The (strength, fraction) points of the dose-response curves: each strength at the configured poison
    fraction, each fraction at the configured poison strength (the poison experiment's point is on both)."""
    p, d = config["poison"], config["dose_response"]
    s0, f0 = float(p["strength"]), float(p["fraction"])
    levels = [(float(s), f0) for s in d["strengths"]] + [(s0, float(f)) for f in d["fractions"]]
    levels.append((s0, f0))
    out: list[tuple[float, float]] = []
    for lv in levels:
        if lv not in out and lv[0] > 0 and lv[1] > 0:
            out.append(lv)
    return out


def dose_cell(config: Mapping[str, Any], strength: float, fraction: float) -> str:
    """The cell that holds the runs of one dose level (the poison cell for its own point)."""
    p = config["poison"]
    if "poison" in config["experiments"] and (strength, fraction) == (float(p["strength"]), float(p["fraction"])):
        dose_methods = set(config["dose_response"]["methods"] or config["training"]["methods"])
        if dose_methods <= set(config["training"]["methods"]):
            return "poison"
    return f"dose_s{fmt_number(strength)}_f{fmt_number(fraction)}"


def cell_overrides(config: Mapping[str, Any], cell: Cell, method: str) -> dict[str, Any]:
    """Training overrides of one method in one cell: ``training.overrides``, ``training.max_steps`` (the same
    cap on optimiser steps for every method), ``training.stop`` (the stopping rule of every method),
    ``training.max_epochs`` (a cap on the published epochs), then the cell's own (the swept parameter)."""
    from wsimil.models.base import get_method

    out = dict(config["training"]["overrides"].get(method, {}))
    steps = config["training"].get("max_steps")
    if steps is not None and "max_steps" not in out:
        out["max_steps"] = int(steps)
    stop = config["training"].get("stop")
    if stop is not None and "stop" not in out:
        out["stop"] = dict(stop)
    cap = config["training"].get("max_epochs")
    if cap is not None and "epochs" not in out:
        published = int(get_method(method).hparams()["epochs"])
        if published > cap:
            out["epochs"] = int(cap)
    return _deep_merge(out, cell.overrides.get(method, {}))


def ood_sheet(sheet: pd.DataFrame, train_centers: Sequence[Any] | None) -> pd.DataFrame:
    """The out-of-distribution sheet (CAMELYON17 protocol: train on some hospitals, test on the held-out ones):
    the training and validation slides of the ``train_centers`` keep their split, and every slide of every
    other centre, whatever its split in ``sheet``, becomes a test slide. ``train_centers`` null: the first half
    of the centres in sorted order (at least one). Centres are compared as text (ints or hospital names)."""
    centers = sorted(sheet["center"].astype(str).unique(), key=lambda c: (len(c), c))
    if len(centers) < 2:
        raise WsimilError(f"experiment ood: the sample sheet has one centre ({centers}); it needs two or more")
    train = [str(c) for c in train_centers] if train_centers else centers[: max(1, len(centers) // 2)]
    unknown = sorted(set(train) - set(centers))
    if unknown:
        raise WsimilError(f"ood.train_centers: {unknown} not among the sheet's centres {centers}")
    if set(train) == set(centers):
        raise WsimilError(f"ood.train_centers: {train} are all the centres; none is left to test on")
    inside = sheet["center"].astype(str).isin(train)
    out = sheet[(inside & sheet["split"].isin(["train", "val"])) | ~inside].copy()
    out.loc[~out["center"].astype(str).isin(train), "split"] = "test"
    out = out.reset_index(drop=True)
    for split in ("train", "test"):
        labels = set(out.loc[out["split"] == split, "label"])
        if labels != {0, 1}:
            where = f"centres {train}" if split == "train" else "the held-out centres"
            raise WsimilError(f"experiment ood: the {split} slides of {where} do not hold both classes "
                              f"(labels {sorted(labels)})")
    return out


def experiment_cells(cells: Sequence[Cell], experiment: str) -> list[Cell]:
    return [c for c in cells if c.experiment == experiment]


def train_val_rows(sheet: pd.DataFrame) -> list[tuple[str, int, str]]:
    """(slide id, label, split) of the training and validation slides of ``sheet``, in sheet order."""
    rows = sheet[sheet["split"].isin(["train", "val"])]
    return list(zip(rows["slide_id"], rows["label"].astype(int), rows["split"]))


def reused_models(config: Mapping[str, Any], cells: Mapping[str, Cell], sheet: pd.DataFrame,
                  main_sheet: pd.DataFrame) -> dict[str, str | None]:
    """Cell name -> the cell whose trained models it scores instead of training its own, or None.

    A cell reuses the standard cell's models when it trains a subset of its methods on the same features and the
    same training and validation slides, in the same order, with the same effective hyperparameters (the
    synthetic ood cell, whose held-out hospital stains only test slides; the DTFD ablation's point at the default
    number of pseudo-bags), so that training again would give the same models bit for bit (same seeds, same
    data). A cell on a sheet an experiment derives (wsimil.experiments.registry.derived_sheet) reuses them only
    when that sheet's training and validation rows are the main sheet's. ``sheet``: every slide (ood_sheet sees
    the external copies too); ``main_sheet``: the standard cell's."""
    std = cells.get("standard")
    out: dict[str, str | None] = {name: None for name in cells}
    if std is None:
        return out
    from wsimil.models.base import get_method  # the registry imports torch: only when a cell may reuse

    from wsimil.experiments.registry import derived_sheet, get_experiment

    rows: dict[str, list] = {}
    for name, c in cells.items():
        if name == "standard" or c.features != std.features or not set(c.methods) <= set(std.methods):
            continue
        if c.sheet != "main" and not get_experiment(c.sheet).derives_sheet:
            continue  # a data set of its own (the unit test's bags)
        if any(get_method(m).hparams(cell_overrides(config, c, m)) != get_method(m).hparams(cell_overrides(config, std, m))
               for m in c.methods):
            continue
        if c.sheet != "main":
            if c.sheet not in rows:
                rows[c.sheet] = train_val_rows(derived_sheet(config, c.sheet, sheet))
            if rows[c.sheet] != train_val_rows(main_sheet):
                continue
        out[name] = "standard"
    return out
