"""The oracle ceiling of DTFD-MIL's Tier-1 AUC: how high a perfect instance detector could score on the same
pseudo-bags.

DTFD-MIL (Zhang et al., CVPR 2022) cuts each slide into M pseudo-bags that all inherit the slide's label, and
its First-Tier AUC is computed over the test pseudo-bags, each labelled with its slide's label (the official
test loop, ``hrzhang1123/DTFD-MIL``, ``Main_DTFD_MIL.py``; here ``evaluate``'s ``tier1_*`` keys from
``pseudo_bags.csv``). A positive slide's tumour may sit in few of its pseudo-bags; the others hold no tumour
yet are labelled positive, and the more pseudo-bags, the more of them. So even a perfect instance detector
cannot reach a Tier-1 AUC of 1, and part of the Tier-1 drop with M is arithmetic.

The ceiling: a pseudo-bag's oracle score is 1 when it holds at least one tumour patch (``tumor_fraction >=``
:data:`~wsimil.evaluation.evaluate.ANY_TUMOUR`, any tumour at all) and 0 otherwise; its label is its slide's;
the ceiling is the ROC AUC of the oracle scores against the labels, ties counting one half (as sklearn's
``roc_auc_score``). A normal slide's pseudo-bags score 0 (no tumour), a positive slide's score 1 exactly where
they hold tumour: with n_1 positive-slide pseudo-bags of which t hold tumour and n_0 normal-slide pseudo-bags,
the ceiling is t/n_1 + (1 - t/n_1)/2 = 1/2 + t/(2 n_1) (normal slides hold no tumour).

It is computed on the pseudo-bags the run itself scored: ``pseudo_bags.csv`` (one row per non-empty pseudo-bag,
``pseudo_bag`` its index among the slide's non-empty pseudo-bags) and ``score_maps.h5``'s ``pseudo_bag`` map
(the index of every patch's pseudo-bag, same numbering, slide patch order; written by
:meth:`wsimil.models.dtfd.DTFDMIL.score_maps` in eval mode), with the patches' ``tumor_fraction`` from the
slides' feature files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pandas as pd

from wsimil.evaluation.evaluate import ANY_TUMOUR, PSEUDO_BAG_COLUMNS, SPLITS, _read_csv, read_tumor_fraction
from wsimil.evaluation.metrics import score_auc
from wsimil.h5gate import dataset, open_h5
from wsimil.io import WsimilError, excerpt

#: the ``score_maps.h5`` group holding each patch's pseudo-bag (``DTFDMIL.score_maps``)
PSEUDO_BAG_MAP = "pseudo_bag"
ORACLE_COLUMNS = ("slide_id", "pseudo_bag", "label", "oracle")


def pseudo_bag_tumour(pseudo_bag_index: np.ndarray, tumour_fraction: np.ndarray, n_groups: int) -> np.ndarray:
    """Which of a slide's ``n_groups`` pseudo-bags hold at least one tumour patch -> (n_groups,) bool.

    ``pseudo_bag_index``: (N,) the pseudo-bag of each patch, integers in [0, n_groups) (floats holding integers
    are accepted, as ``score_maps.h5`` stores them); ``tumour_fraction``: (N,) each patch's tumour fraction, same
    patch order. A patch is tumour at ``tumour_fraction >= ANY_TUMOUR`` (any tumour). A pseudo-bag no patch is in
    is False. Raises ValueError for mismatched lengths (naming both), a non-integer or out-of-range index, or a
    NaN / infinite fraction.
    """
    index = np.asarray(pseudo_bag_index).reshape(-1)
    fraction = np.asarray(tumour_fraction, dtype=np.float64).reshape(-1)
    n_groups = int(n_groups)
    if len(index) != len(fraction):
        raise ValueError(f"{len(index)} pseudo-bag indices but {len(fraction)} tumour fractions")
    if n_groups < 0:
        raise ValueError(f"n_groups must be >= 0, got {n_groups}")
    idx = index.astype(np.float64)
    bad = ~np.isfinite(idx) | (idx != np.round(idx)) | (idx < 0) | (idx >= n_groups)
    if bad.any():
        raise ValueError(f"pseudo-bag indices must be integers in [0, {n_groups}); bad: {index[bad][:5].tolist()}")
    if not np.isfinite(fraction).all():
        raise ValueError("tumour fractions contain NaN or infinite values")
    tumour = (fraction >= ANY_TUMOUR).astype(np.int64)
    return np.bincount(idx.astype(np.int64), weights=tumour, minlength=n_groups)[:n_groups] > 0


def oracle_rows(
    run_dir: str | os.PathLike, feature_path_of: Callable[[str], Path], split: str = "test"
) -> pd.DataFrame:
    """The oracle score of every pseudo-bag of ``split`` in a DTFD-MIL run -> columns slide_id, pseudo_bag, label,
    oracle (0/1), one row per row of ``pseudo_bags.csv`` in that split, in its order.

    Reads ``<run_dir>/pseudo_bags.csv``, the ``pseudo_bag`` map of ``<run_dir>/score_maps.h5`` (through
    :func:`wsimil.h5gate.open_h5`, every dataset checked before it is read) and the ``tumor_fraction`` of each
    slide's feature file ``feature_path_of(slide_id)``. Raises :class:`WsimilError` naming the file when the map
    is missing (a run written before the map existed: retrain it), a slide has no map or no ``tumor_fraction``,
    a slide's patch counts disagree, or its pseudo-bags in the map are not those of ``pseudo_bags.csv``.
    """
    run_dir = Path(run_dir)
    if split not in SPLITS:
        raise WsimilError(f"unknown split {split!r} (expected one of {list(SPLITS)})")
    csv_path, maps_path = run_dir / "pseudo_bags.csv", run_dir / "score_maps.h5"
    if not csv_path.is_file():
        raise WsimilError(f"pseudo-bag file not found: {csv_path} (has the training run finished?)")
    df = _read_csv(csv_path, PSEUDO_BAG_COLUMNS)
    df = df[df["split"] == split]
    labels = pd.to_numeric(df["label"], errors="coerce")
    index = pd.to_numeric(df["pseudo_bag"], errors="coerce")
    bad = df["slide_id"][~labels.isin([0, 1]) | index.isna() | (index < 0) | (index != index.round())]
    if len(bad):
        raise WsimilError(f"{csv_path}: label must be 0/1 and pseudo_bag an integer >= 0; bad rows for slides "
                          f"{bad.tolist()[:5]}")
    df = df.assign(label=labels.astype(np.int64), pseudo_bag=index.astype(np.int64))
    if df.empty:
        return pd.DataFrame({c: pd.Series(dtype=object if c == "slide_id" else np.int64) for c in ORACLE_COLUMNS})
    slide_ids = list(dict.fromkeys(df["slide_id"]))
    oracle: dict[str, np.ndarray] = {}
    with open_h5(maps_path, "score maps file") as f:
        if PSEUDO_BAG_MAP not in f:
            raise WsimilError(
                f"{maps_path}: no {PSEUDO_BAG_MAP!r} map (found {[excerpt(k) for k in list(f.keys())[:10]]}): the "
                "run was written before DTFD-MIL recorded each patch's pseudo-bag; retrain it to get the ceiling"
            )
        group = f[PSEUDO_BAG_MAP]
        if not isinstance(group, h5py.Group):
            raise WsimilError(f"{maps_path}: {PSEUDO_BAG_MAP!r} is a dataset, not a group of slides")
        for sid in slide_ids:
            ks = df.loc[df["slide_id"] == sid, "pseudo_bag"].to_numpy()
            n_groups = len(ks)
            if sorted(ks.tolist()) != list(range(n_groups)):
                raise WsimilError(f"{csv_path}: slide {excerpt(sid)}'s pseudo_bag values are not 0..{n_groups - 1}")
            if sid not in group:
                raise WsimilError(f"{maps_path}: map {PSEUDO_BAG_MAP!r} has no entry for slide {excerpt(sid)}")
            assigned = np.asarray(dataset(group, sid, maps_path)[()], dtype=np.float64).reshape(-1)
            feat_path = Path(feature_path_of(sid))
            fraction = read_tumor_fraction(feat_path)
            if fraction is None:
                raise WsimilError(f"{feat_path}: no tumor_fraction (patch labels) for slide {excerpt(sid)}: the "
                                  "oracle ceiling needs every slide's tumour patches")
            try:
                tumour = pseudo_bag_tumour(assigned, fraction, n_groups)
            except ValueError as exc:
                raise WsimilError(f"{maps_path} / {feat_path}: slide {excerpt(sid)}: {exc}") from None
            used = np.unique(assigned).size
            if used != n_groups:
                raise WsimilError(f"{maps_path}: slide {excerpt(sid)}'s patches are in {used} pseudo-bags but "
                                  f"{csv_path.name} has {n_groups} for it")
            oracle[sid] = tumour
    out = df[["slide_id", "pseudo_bag", "label"]].reset_index(drop=True)
    out["oracle"] = [int(oracle[s][k]) for s, k in zip(out["slide_id"], out["pseudo_bag"])]
    return out


def tier1_ceiling(rows: pd.DataFrame) -> float:
    """ROC AUC of ``rows["oracle"]`` against ``rows["label"]`` (ties count one half, as ``roc_auc_score``): the
    highest Tier-1 AUC any instance scorer could reach on these pseudo-bags; NaN when the rows hold one class.

    ``rows``: (G, ...) with columns ``label`` and ``oracle`` (0/1), e.g. from :func:`oracle_rows`.
    """
    missing = [c for c in ("label", "oracle") if c not in rows.columns]
    if missing:
        raise ValueError(f"tier1_ceiling: rows lack columns {missing}")
    auc, _ = score_auc(rows["label"].to_numpy(np.int64), rows["oracle"].to_numpy(np.float64), "pseudo-bags")
    return auc
