"""Algorithmic unit tests of the MIL assumption (Raff & Holt, NeurIPS 2023, arXiv 2310.17867).

Test 1, single-concept standard MIL with a poison: a bag is positive iff it holds at least one instance of
the concept. A *poison* instance appears only in negative bags of the training (and validation) split and
only in positive bags of the test split. A model that respects the standard MIL assumption cannot use the
poison (it never marks a positive instance) and scores the test split as well as validation; a model that
learned "poison => negative" scores ~1.0 on validation and near 0 on test.

Instances are Gaussian: background N(0, I), concept N(mu_c, I), poison N(mu_p, I), with mu_c and mu_p
random orthogonal directions of length ``shift``. Written in the feature-file contract plus a sample sheet,
so every method trains on it through the same loop and CLI as on slides.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wsimil.features.store import write_features
from wsimil.io import write_csv_atomic

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "dim": 32,
    "bags": {"train": 100, "val": 50, "test": 100},
    "bag_size": [20, 50],
    "witnesses": [1, 3],
    "poisons": [1, 3],
    "shift": 6.0,
}


def generate(params: dict[str, Any] | None = None) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """The sample sheet and one (N, dim) float32 array per bag; bags alternate negative / positive."""
    p = {**DEFAULTS, **(params or {})}
    rng = np.random.default_rng(p["seed"])
    dim = int(p["dim"])
    q, _ = np.linalg.qr(rng.normal(size=(dim, 2)))
    concept, poison = q[:, 0] * p["shift"], q[:, 1] * p["shift"]
    rows, feats = [], {}
    for split in ("train", "val", "test"):
        for i in range(int(p["bags"][split])):
            label = i % 2
            sid = f"{split}_{i:04d}"
            x = rng.normal(size=(int(rng.integers(p["bag_size"][0], p["bag_size"][1] + 1)), dim))
            slots = rng.permutation(len(x))
            k = 0
            if label == 1:
                n = int(rng.integers(p["witnesses"][0], p["witnesses"][1] + 1))
                x[slots[:n]] += concept
                k = n
            poisoned = (split in ("train", "val") and label == 0) or (split == "test" and label == 1)
            if poisoned:
                n = int(rng.integers(p["poisons"][0], p["poisons"][1] + 1))
                x[slots[k : k + n]] += poison
            feats[sid] = x.astype(np.float32)
            rows.append({"slide_id": sid, "label": label, "split": split, "center": "0", "path": "", "annotation": "",
                         "poisoned": poisoned})
    return pd.DataFrame(rows), feats


def write(out_dir: str | os.PathLike, params: dict[str, Any] | None = None) -> Path:
    """Write ``features/<id>.h5`` and ``slides.csv`` (with a ``poisoned`` column) under ``out_dir``."""
    out_dir = Path(out_dir)
    sheet, feats = generate(params)
    for sid, x in feats.items():
        write_features(out_dir / "features" / f"{sid}.h5", x, np.zeros((len(x), 2), np.int64),
                       attrs={"extractor": "milunit-single-concept", "slide_id": sid})
    write_csv_atomic(sheet, out_dir / "slides.csv")
    return out_dir / "slides.csv"
