"""A training run on disk: the run directory contract of docs/architecture.md, written atomically.

``<run_dir>/``: ``predictions.csv`` (slide_id,label,split,score), ``instance_scores.h5`` (one dataset per
slide, same order as its feature file), ``history.csv``, ``model.pt`` (weights_only-loadable), ``run.json``;
``score_maps.h5`` (a group per other heatmap quantity of the model, ``MILModel.score_maps``: DSMIL's and
DTFD's attention and each patch's pseudo-bag, CLAM-MB's A_raw of the predicted class; empty for the others),
``pseudo_bags.csv``
(slide_id,label,split,pseudo_bag,score: DTFD's Tier-1 score of each pseudo-bag; the header alone for the others).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import torch

import wsimil
from wsimil.precision import describe_device
from wsimil.io import WsimilError, plain_mode, write_csv_atomic, write_json_atomic
from wsimil.models.base import get_method
from wsimil.training.data import BagSet, load_bags
from wsimil.training.loop import FIT_BAR, TrainResult, predict, train

log = logging.getLogger(__name__)


def software_versions() -> dict[str, str]:
    import sklearn

    return {
        "wsimil": wsimil.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "scikit-learn": sklearn.__version__,
        "h5py": h5py.__version__,
    }


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def write_run(run_dir: str | os.PathLike, bags: BagSet, result: TrainResult, meta: dict[str, Any], device: str = "cpu") -> None:
    """Score every slide with the selected model and write the run directory atomically (temp dir, then rename)."""
    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.", dir=run_dir.parent))
    try:  # also on Ctrl-C (KeyboardInterrupt): the finally removes the half-written folder
        os.chmod(tmp, plain_mode(folder=True))  # mkdtemp makes 0700; the run folder gets a plain mkdir's mode
        pred = predict(result.model, bags, np.arange(len(bags.slide_ids)), device)
        write_csv_atomic(pd.DataFrame({
            "slide_id": bags.slide_ids, "label": bags.labels, "split": bags.splits, "score": pred.probs,
        }), tmp / "predictions.csv", float_format="%.6g")
        # DTFD: Tier-1 score of every pseudo-bag (the ablation's Tier-1 AUC); the columns alone for a model without
        # pseudo-bags, so that every run folder holds the same files (the workflow declares them all)
        write_csv_atomic(pd.DataFrame([
            {"slide_id": sid, "label": lab, "split": sp, "pseudo_bag": k, "score": float(v)}
            for sid, lab, sp, g in zip(bags.slide_ids, bags.labels, bags.splits, pred.group_scores or ())
            for k, v in enumerate(g)
        ], columns=["slide_id", "label", "split", "pseudo_bag", "score"]), tmp / "pseudo_bags.csv",
            float_format="%.6g")
        with h5py.File(tmp / "instance_scores.h5", "w") as f:
            for sid, scores in zip(bags.slide_ids, pred.instance_scores):
                f.create_dataset(sid, data=scores.astype(np.float32))
            f.attrs["score"] = type(result.model).instance_score_name
        with h5py.File(tmp / "score_maps.h5", "w") as f:  # the other heatmap quantities (may hold none)
            for name, per_bag in pred.score_maps.items():
                g = f.create_group(name)
                for sid, scores in zip(bags.slide_ids, per_bag):
                    g.create_dataset(sid, data=scores.astype(np.float32))
        write_csv_atomic(pd.DataFrame(result.history), tmp / "history.csv", float_format="%.6g")
        torch.save({
            "method": meta["method"], "in_dim": bags.dim, "hparams": _plain(result.hparams),
            "state_dict": {k: v.detach().cpu() for k, v in result.model.state_dict().items()},
        }, tmp / "model.pt")
        write_json_atomic(tmp / "run.json", {
            **meta, "hparams": _plain(result.hparams), "best_epoch": result.best_epoch,
            "epochs_run": len(result.history), "planned_epochs": result.planned_epochs,
            "optimizer_steps": result.steps, "selected_last_epoch": result.selected_last_epoch,
            "val_auc_ties": result.val_auc_ties, "selection_blind": result.selection_blind,
            "final_train_auc": _finite(result.final_train_auc), "final_train_loss": _finite(result.final_train_loss),
            "fits_training_set": result.fits, "fit_bar": FIT_BAR, "loss_plateaued": result.loss_plateaued,
            "stopped_by": result.stopped_by,
            "train_seconds": round(result.seconds, 3), "device": device, "device_name": describe_device(device),
            "precision": result.precision, "versions": software_versions(),
            "git_commit": git_commit(), "excluded_slides": bags.excluded, "n_slides": {s: int((bags.splits == s).sum()) for s in ("train", "val", "test")},
        })
        if run_dir.exists():
            shutil.rmtree(run_dir)
        os.replace(tmp, run_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def load_model(path: str | os.PathLike):
    """Rebuild a trained model from ``model.pt`` (no unpickling: weights_only=True)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    spec = get_method(ckpt["method"])
    model = spec.build(ckpt["in_dim"], ckpt["hparams"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def train_and_write(
    sheet: pd.DataFrame, features_dir: str | os.PathLike, method: str, seeds: list[int], out_dirs: list[Path],
    overrides: dict[str, Any] | None = None, device: str = "cpu", meta: dict[str, Any] | None = None,
    progress: bool = True, precision: str = "fp32", bags: BagSet | None = None,
) -> None:
    """Load the bags once (or take ``bags`` already loaded), then train and write one run per seed."""
    bags = bags if bags is not None else load_bags(sheet, features_dir)
    for seed, out in zip(seeds, out_dirs):
        result = train(bags, method, seed, overrides, device=device, progress=progress, precision=precision)
        best = result.history[result.best_epoch]
        log.info("%s seed %d: %d epochs (%d optimiser steps) in %.1f s, selected epoch %d (val AUC %.3f, "
                 "val loss %.3f) -> %s", method, seed, len(result.history), result.steps, result.seconds,
                 result.best_epoch, best.get("val_auc", float("nan")),
                 best.get("val_loss", float("nan")), out)
        write_run(out, bags, result, {**(meta or {}), "method": method, "seed": seed,
                                      "features_dir": str(features_dir), "overrides": overrides or {}}, device)


def score_and_write(
    trained: str | os.PathLike, out: str | os.PathLike, bags: BagSet, device: str = "cpu",
    meta: dict[str, Any] | None = None,
) -> None:
    """A run directory for the slides of ``bags`` scored by the model of the finished run ``trained``, without
    training again: for a cell whose training slides, method, seed and overrides are another cell's (the ood
    cell of a synthetic dataset whose held-out hospital stains only test slides). ``history.csv`` and the
    training record are the trained run's; ``run.json`` names it in ``scored_with``."""
    trained = Path(trained)
    try:
        record = json.loads((trained / "run.json").read_text())
        history = pd.read_csv(trained / "history.csv").to_dict("records")
    except (OSError, ValueError) as exc:
        raise WsimilError(f"{trained}: not a finished training run ({exc})") from exc
    model = load_model(trained / "model.pt")
    if model_dim(trained / "model.pt") != bags.dim:
        raise WsimilError(f"{trained / 'model.pt'} takes {model_dim(trained / 'model.pt')}-d features, the slides "
                          f"to score have {bags.dim}-d")
    result = TrainResult(model, record["hparams"], history, int(record["best_epoch"]),
                         float(record.get("train_seconds", 0.0)), record.get("precision", "fp32"),
                         int(record.get("optimizer_steps") or 0), int(record.get("planned_epochs") or len(history)),
                         _nan(record.get("final_train_auc")), _nan(record.get("final_train_loss")),
                         record.get("stopped_by") or "schedule")
    keep = {k: record[k] for k in ("method", "seed", "overrides") if k in record}
    write_run(out, bags, result, {**keep, **(meta or {}), "scored_with": str(trained)}, device)


def model_dim(path: str | os.PathLike) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["in_dim"])


def _finite(x: float) -> float | None:
    """A number for run.json: None for NaN or infinity (JSON has neither)."""
    return float(x) if x is not None and np.isfinite(x) else None


def _nan(x: Any) -> float:
    return float("nan") if x is None else float(x)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
