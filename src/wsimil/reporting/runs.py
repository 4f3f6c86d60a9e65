"""The runs table: what every run directory records about how it was made (device, precision, seed, commit,
versions, time), one row per run, for the report."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from wsimil.io import WsimilError

COLUMNS = ["cell", "method", "seed", "device", "device_name", "precision", "epochs", "optimizer_steps", "best_epoch",
           "selected_last_epoch", "val_auc_ties", "train_seconds", "git_commit", "torch", "wsimil"]


def run_table(run_files: list[str | os.PathLike]) -> pd.DataFrame:
    """One row per ``runs/<cell>/<method>/seed<k>/run.json``, in the order given."""
    rows = []
    for path in map(Path, run_files):
        try:
            meta = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise WsimilError(f"cannot read run record {path}: {exc}") from exc
        versions = meta.get("versions", {})
        rows.append([path.parent.parent.parent.name, meta.get("method"), meta.get("seed"), meta.get("device"),
                     meta.get("device_name", ""), meta.get("precision"),
                     meta.get("epochs_run", meta.get("hparams", {}).get("epochs")), meta.get("optimizer_steps"),
                     meta.get("best_epoch"), meta.get("selected_last_epoch"), meta.get("val_auc_ties"),
                     meta.get("train_seconds"), (meta.get("git_commit") or "")[:12],
                     versions.get("torch"), versions.get("wsimil")])
    return pd.DataFrame(rows, columns=COLUMNS)


def caption(df: pd.DataFrame) -> str:
    commits = sorted(set(df["git_commit"]) - {""})
    return (f"Every run of this dataset ({len(df)}): cell, method and seed; the device it trained on and the "
            f"arithmetic; epochs run, optimiser steps taken, the epoch selected, whether it was the last one (not "
            f"converged) and how many other epochs tied its validation AUC; training seconds; the git commit "
            f"({', '.join(commits) or 'unknown'}) and the torch and wsimil versions. Each run's run.json has the "
            "full record (hyper-parameters, all package versions, slides per split).")
