"""The supervised patch probe: how separable tumour patches are in a feature space, with patch labels.

No MIL method sees it. It is the instrument the synthetic tumour's appearance is calibrated on
(``benchmarks/synthetic_stats.py probe``, docs/data.md "Calibration"): a linear probe on frozen ImageNet
features is what the pathology-foundation-model literature reports for real patches, so the synthetic
data can be set to the same difficulty without looking at any MIL result.

The rule, fixed in advance and never tuned on test patches:

- features standardised with the training patches' mean and s.d. (``StandardScaler``);
- ``LogisticRegression(C=PROBE_C, class_weight="balanced")``, L2, lbfgs; one probe per positive definition
  (:data:`POSITIVES`: ``half`` = tumour fraction >= 0.5, the evaluation's patch positives; ``any`` = > 0);
- trained on the patches of the ``train`` split's slides, scored on the patches of the ``test`` split's;
- the patch AUC / AP, with a 95 % percentile interval over test *slides* resampled with replacement
  (patches of one slide are not independent), and the balanced accuracy of the probe's own decisions
  (logit > 0), the metric the eva benchmark reports for linear probes on PatchCamelyon (docs/data.md).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

__all__ = ["PROBE_C", "PROBE_CLASS_WEIGHT", "POSITIVES", "load_probe_data", "slide_bootstrap_auc", "probe"]

#: inverse L2 strength on standardised features: moderately regularised, as a linear probe on a few thousand
#: patches of ~1,000-d features needs; fixed in advance
PROBE_C = 0.1
PROBE_CLASS_WEIGHT = "balanced"
#: positive definitions: name -> predicate on the tumour fraction (N,) -> bool (N,)
POSITIVES: dict[str, Callable[[np.ndarray], np.ndarray]] = {"half": lambda tf: tf >= 0.5, "any": lambda tf: tf > 0}


def load_probe_data(features_dir: str | Path, sheet: str | Path | pd.DataFrame) -> dict[str, np.ndarray]:
    """Features ``X`` (N, D), tumour fractions ``tf`` (N,), ``slide_id`` (N,) and ``split`` (N,) of every patch
    of the sheet's slides, from ``features_dir/<slide_id>.h5`` (CLAM/TRIDENT layout: ``features``,
    ``tumor_fraction``). A normal slide (label 0) without ``tumor_fraction`` is all normal; a tumour slide
    without one is an error (its patch labels are unknown)."""
    from wsimil.features.store import feature_path
    from wsimil.h5gate import open_h5

    df = sheet if isinstance(sheet, pd.DataFrame) else pd.read_csv(sheet)
    missing = {"slide_id", "label", "split"} - set(df.columns)
    if missing:
        raise ValueError(f"{sheet if not isinstance(sheet, pd.DataFrame) else 'sheet'}: missing columns {sorted(missing)}")
    feats, tfs, sids, splits = [], [], [], []
    for row in df.itertuples():
        path = feature_path(features_dir, row.slide_id)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no feature file for slide {row.slide_id}")
        with open_h5(path) as f:
            if "features" not in f:
                raise ValueError(f"{path}: no 'features' dataset")
            x = np.asarray(f["features"][()], dtype=np.float32)
            if "tumor_fraction" in f:
                tf = np.asarray(f["tumor_fraction"][()], dtype=np.float64).reshape(-1)
            elif int(row.label) == 0:
                tf = np.zeros(len(x))
            else:
                raise ValueError(f"{path}: tumour slide {row.slide_id} has no tumor_fraction (patch labels unknown)")
        if x.ndim != 2 or len(tf) != len(x):
            raise ValueError(f"{path}: {len(tf)} tumor_fraction values for features of shape {x.shape}")
        feats.append(x)
        tfs.append(tf)
        sids += [row.slide_id] * len(x)
        splits += [row.split] * len(x)
    if not feats:
        raise ValueError("the sheet lists no slides")
    return {"X": np.concatenate(feats), "tf": np.concatenate(tfs), "slide_id": np.asarray(sids),
            "split": np.asarray(splits)}


def slide_bootstrap_auc(y: np.ndarray, score: np.ndarray, slide: np.ndarray, n_boot: int = 200, seed: int = 0,
                        level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the patch AUC of ``score`` (N,) for labels ``y`` (N,) over the slides of
    ``slide`` (N,) resampled with replacement; NaNs if fewer than half the resamples have both classes."""
    from wsimil.evaluation.intervals import cluster_auc_matrix, cluster_aucs

    ids, inv = np.unique(slide, return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(ids), (n_boot, len(ids)))
    counts = np.stack([np.bincount(d, minlength=len(ids)) for d in draws])
    aucs = cluster_aucs(*cluster_auc_matrix(y, inv, score, len(ids)), counts)
    aucs = aucs[np.isfinite(aucs)]
    if len(aucs) < n_boot / 2:
        return math.nan, math.nan
    lo, hi = np.quantile(aucs, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def probe(data: dict[str, np.ndarray], C: float = PROBE_C, class_weight: str | None = PROBE_CLASS_WEIGHT,
          train_splits: Sequence[str] = ("train",), test_splits: Sequence[str] = ("test",), n_boot: int = 200,
          seed: int = 0) -> dict:
    """Fit the probe on ``data`` (from :func:`load_probe_data`) and score it. Returns ``auc_<pos>``,
    ``ap_<pos>``, ``bacc_<pos>``, ``auc_<pos>_lo`` / ``_hi`` for every positive definition (NaN where a part lacks a class),
    the patch counts ``{train,test}_{pos,neg}_<pos>`` and ``{train,test}_partial`` (0 < fraction < 0.5,
    isolated-tumour-cell-like), and the slide / patch counts."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score, balanced_accuracy_score, roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    tr, te = np.isin(data["split"], train_splits), np.isin(data["split"], test_splits)
    if not tr.any() or not te.any():
        raise ValueError(f"no patches in the train splits {list(train_splits)} or the test splits {list(test_splits)}")
    out: dict = {"C": C, "class_weight": class_weight or "none", "feature_dim": int(data["X"].shape[1]),
                 "train_slides": int(len(np.unique(data["slide_id"][tr]))),
                 "test_slides": int(len(np.unique(data["slide_id"][te]))),
                 "train_patches": int(tr.sum()), "test_patches": int(te.sum())}
    for part, m in (("train", tr), ("test", te)):
        tf = data["tf"][m]
        out[f"{part}_partial"] = int(((tf > 0) & (tf < 0.5)).sum())
    for name, positive in POSITIVES.items():
        y = positive(data["tf"]).astype(int)
        for part, m in (("train", tr), ("test", te)):
            out[f"{part}_pos_{name}"], out[f"{part}_neg_{name}"] = int(y[m].sum()), int((1 - y[m]).sum())
        if len(np.unique(y[tr])) < 2 or len(np.unique(y[te])) < 2:
            out.update({f"auc_{name}": math.nan, f"ap_{name}": math.nan, f"auc_{name}_lo": math.nan,
                        f"auc_{name}_hi": math.nan, f"bacc_{name}": math.nan})
            continue
        model = make_pipeline(StandardScaler(), LogisticRegression(C=C, class_weight=class_weight, max_iter=5000))
        model.fit(data["X"][tr], y[tr])
        s = model.decision_function(data["X"][te])
        out[f"auc_{name}"] = float(roc_auc_score(y[te], s))
        out[f"ap_{name}"] = float(average_precision_score(y[te], s))
        out[f"bacc_{name}"] = float(balanced_accuracy_score(y[te], s > 0))
        out[f"auc_{name}_lo"], out[f"auc_{name}_hi"] = slide_bootstrap_auc(y[te], s, data["slide_id"][te], n_boot,
                                                                            seed)
    return out
