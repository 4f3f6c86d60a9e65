"""The evidence behind SUMMARY.md: a slide-AUC interval per method and cell, and for every claim of the papers
a paired interval of the difference it is about, with a three-valued verdict.

Intervals (:mod:`wsimil.evaluation.intervals`): each method's score of a slide is the mean over its seeds;
the slides are resampled with replacement within each class (a stratified bootstrap), and every AUC that
enters one contrast is computed on the *same* resample of the slides they share (the test slides clean and
poisoned; the test slides and their copies from the held-out hospital; the training or validation slides of
two methods). Two slide sets that are different slides are resampled independently. The rules below, the
margin and the bar were fixed before any run; the verdict is whatever the intervals give.

Claims (``MARGIN`` = 0.05 AUC; direction: which sign the papers claim):

- **poison**: attention's clean-to-poisoned loss minus max-pooling's > 0 (FocusMIL).
- **ood**: max-pooling's change from the test slides to the unseen hospital minus attention's > 0 (FocusMIL).
- **dtfd_tier1**: DTFD's Tier-1 AUC at the largest number of pseudo-bags minus at the smallest < 0, and
  **dtfd_tier2**: the same change of the Tier-2 (slide) AUC lies within +-margin (DTFD-MIL): an equivalence
  claim, supported when the whole interval lies inside +-margin, contradicted when it lies beyond -margin.
- **patch**: max-pooling's mean patch AUC minus attention's > 0 (FocusMIL: max-pooling localises tumour far
  better): on the patches of the test tumour slides, positives = any tumour in the patch (the definition the
  synthetic tumour's look is calibrated on with a supervised probe, docs/data.md), paired by resampling the
  tumour slides with all their patches (a cluster bootstrap) for every method and seed at once; a method's
  AUC is the mean of its seeds' patch AUCs (instance scores of different seeds are not on one scale).
- **minet_gap**: mi-Net's train - validation AUC gap minus FocusMIL's > 0 (FocusMIL's "why mi-Net overfits").
- **milunit** (per method, Raff & Holt): "did not learn the task" when the mean validation AUC is below
  ``LEARN_BAR``; else "learned the poison" when the test AUC interval lies below 0.5, "respects the MIL
  assumption" when it lies above 0.5, "inconclusive" otherwise.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from wsimil.evaluation.evaluate import ANY_TUMOUR, read_instance_scores, read_predictions, read_tumor_fraction
from wsimil.evaluation.intervals import (Interval, cluster_auc_matrix, cluster_aucs, contrast_interval, seed_averaged,
                                         stratified_counts, verdict)
from wsimil.experiments import Cell, experiment_cells, manifest_subpath, plan_cells
from wsimil.features.store import feature_path
from wsimil.io import WsimilError

#: the margin (AUC) a paired interval must clear for a claim to be decided
MARGIN = 0.05
#: MIL unit test: below this mean validation AUC a method "did not learn the task"
LEARN_BAR = 0.7
#: bootstrap resamples of every interval, and its seed
N_BOOT = 2000
BOOT_SEED = 0
#: a cell is flagged "not converged" when more than this share of its runs selected their last epoch
LAST_EPOCH_FLAG = 0.25
FAMILIES = ("max-pooling", "attention")
CLAIM_COLUMNS = ["claim", "statement", "contrast", "estimate", "ci_low", "ci_high", "margin", "claimed_sign",
                 "verdict", "rule"]


@dataclass(frozen=True)
class Claim:
    """One checked claim: the contrast, its paired interval and the verdict by the rule fixed before the run."""

    key: str
    claim: str
    contrast: str
    interval: Interval
    margin: float
    direction: int
    verdict: str
    rule: str

    def row(self) -> dict[str, Any]:
        iv = self.interval
        return {"claim": self.key, "statement": self.claim, "contrast": self.contrast, "estimate": iv.estimate,
                "ci_low": iv.low, "ci_high": iv.high, "margin": self.margin, "claimed_sign": "positive" if self.direction > 0 else "negative",
                "verdict": self.verdict, "rule": self.rule}


def family_of(method: str) -> str:
    from wsimil.models.base import get_method

    return get_method(method).family


# ------------------------------------------------------------------------------------------------ scores


def run_dir(results: Path, cell: str, method: str, seed: int) -> Path:
    return Path(results) / "runs" / cell / method / f"seed{seed}"


def cell_scores(results: Path, cell: Cell, seeds: Sequence[int], split: str = "test",
                methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Seed-averaged slide scores of ``cell`` on ``split``: indexed by slide_id, a ``label`` column and one
    column per method (the mean of its seeds' probabilities), rows sorted by slide id."""
    parts = []
    for m in methods or cell.methods:
        for s in seeds:
            p = read_predictions(run_dir(results, cell.name, m, s) / "predictions.csv")
            p = p[p["split"] == split]
            parts.append(pd.DataFrame({"slide_id": p["slide_id"].astype(str), "label": p["label"].astype(int),
                                       "method": m, "seed": s, "score": p["score"].astype(float)}))
    if not parts or not sum(len(p) for p in parts):
        raise WsimilError(f"cell {cell.name}: no {split} slides in its predictions.csv files")
    return seed_averaged(pd.concat(parts, ignore_index=True)).sort_index()


def auc_intervals(results: Path, cell: Cell, seeds: Sequence[int]) -> pd.DataFrame:
    """Per method of ``cell``: the test slide AUC of the seed-averaged score and its 95% stratified bootstrap
    interval (columns method, slide_auc_seedavg, slide_auc_ci_low, slide_auc_ci_high, n_test, n_test_pos)."""
    wide = cell_scores(results, cell, seeds)
    y = wide["label"].to_numpy()
    rows = []
    for m in cell.methods:
        iv = _one_auc(wide, m)
        rows.append({"method": m, "slide_auc_seedavg": iv.estimate, "slide_auc_ci_low": iv.low,
                     "slide_auc_ci_high": iv.high, "n_test": len(y), "n_test_pos": int(y.sum())})
    return pd.DataFrame(rows)


def _one_auc(frame: pd.DataFrame, method: str) -> Interval:
    """The slide AUC of ``method``'s seed-averaged scores in ``frame`` (a :func:`cell_scores` table) and its 95%
    stratified bootstrap interval."""
    return contrast_interval([(frame["label"].to_numpy(), frame[[method]].to_numpy())], [np.ones(1)],
                             n_boot=N_BOOT, seed=BOOT_SEED)


def aligned_to(config: Mapping[str, Any], base: pd.DataFrame, other: pd.DataFrame) -> tuple[pd.DataFrame, bool]:
    """``other`` re-indexed onto ``base``'s slides when they are the same tissue (the held-out hospital's copies of
    the test slides, or the very same slides), and whether it could be: then the two are paired."""
    if list(other.index) == list(base.index):
        return other, True
    tissue = tissue_map(config)
    keys = [tissue.get(s, s) for s in other.index]
    if sorted(keys) == list(base.index) and len(set(keys)) == len(keys):
        return other.set_axis(keys).loc[base.index], True
    return other, False


def auc_changes(config: Mapping[str, Any], results: Path, base: Cell, other: Cell, seeds: Sequence[int],
                methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Per method run in both cells: the test slide AUC of the seed-averaged scores on ``base`` and on ``other``
    with their 95% intervals, and the change ``other − base`` with its 95% interval, resampling the two slide
    sets together when they are the same slides or tissue (``paired``), independently otherwise.

    Columns: method, base_auc, base_ci_low, base_ci_high, other_auc, other_ci_low, other_ci_high, change,
    change_ci_low, change_ci_high, paired. The numbers of the cards and of the comparison tables."""
    methods = [m for m in (methods or base.methods) if m in base.methods and m in other.methods]
    a = cell_scores(results, base, seeds, methods=methods)
    b, paired = aligned_to(config, a, cell_scores(results, other, seeds, methods=methods))
    if paired and not (a["label"].to_numpy() == b["label"].to_numpy()).all():
        raise WsimilError(f"cells {base.name} and {other.name} give the same slides different labels")
    rows = []
    for m in methods:
        x, y = _one_auc(a, m), _one_auc(b, m)
        ch = contrast_interval([(a["label"].to_numpy(), a[[m]].to_numpy()), (b["label"].to_numpy(), b[[m]].to_numpy())],
                               [np.array([-1.0]), np.array([1.0])], n_boot=N_BOOT, seed=BOOT_SEED,
                               pair_keys=["test", "test"] if paired else ["base", "other"])
        rows.append({"method": m, "base_auc": x.estimate, "base_ci_low": x.low, "base_ci_high": x.high,
                     "other_auc": y.estimate, "other_ci_low": y.low, "other_ci_high": y.high,
                     "change": ch.estimate, "change_ci_low": ch.low, "change_ci_high": ch.high, "paired": paired})
    return pd.DataFrame(rows)


def _family_weights(methods: Sequence[str], sign: Mapping[str, float]) -> np.ndarray:
    """Weights that average each family's AUCs: sign[family] / (methods in the family)."""
    fams = [family_of(m) for m in methods]
    count = {f: fams.count(f) for f in set(fams)}
    return np.array([sign.get(f, 0.0) / count[f] for f in fams], dtype=float)


def _has_both_families(methods: Sequence[str]) -> bool:
    return set(FAMILIES) <= {family_of(m) for m in methods}


def tissue_map(config: Mapping[str, Any]) -> dict[str, str]:
    """slide id -> the slide whose tissue it is (a held-out hospital's copy of a test slide), synthetic only."""
    if config["dataset"]["source"] != "synthetic":
        return {}
    from wsimil.slides.synthetic import plan_dataset

    plan = plan_dataset(config["synthetic"])
    return dict(zip(plan["slide_id"], plan["tissue_of"]))


# ------------------------------------------------------------------------------------------------ claims


def _unavailable(key: str, claim: str, why: str, direction: int = 1) -> Claim:
    nan = Interval(math.nan, math.nan, math.nan)
    return Claim(key, claim, why, nan, MARGIN, direction, "inconclusive", "cannot be checked: " + why)


def _rule(direction: int) -> str:
    side = f"> +{MARGIN}" if direction > 0 else f"< -{MARGIN}"
    other = f"< -{MARGIN}" if direction > 0 else f"> +{MARGIN}"
    return (f"supported when the whole 95% interval is {side}, contradicted when it is {other}, "
            "inconclusive otherwise")


def poison_claim(results: Path, cells: Mapping[str, Cell], seeds: Sequence[int]) -> Claim:
    claim = "max-pooling resists the poison, attention does not (FocusMIL)"
    clean, pois = cells["standard"], cells["poison"]
    methods = [m for m in pois.methods if m in clean.methods]
    if not _has_both_families(methods):
        return _unavailable("poison", claim, "the poison cell needs methods of both families")
    a = cell_scores(results, clean, seeds, methods=methods)
    b = cell_scores(results, pois, seeds, methods=methods)
    if list(a.index) != list(b.index) or not (a["label"].to_numpy() == b["label"].to_numpy()).all():
        raise WsimilError("standard and poison cells score different test slides: cannot pair them")
    y = a["label"].to_numpy()
    # (att_clean - att_pois) - (mp_clean - mp_pois) = w.AUC_clean - w.AUC_pois with w = att - mp averages
    w = _family_weights(methods, {"attention": 1.0, "max-pooling": -1.0})
    iv = contrast_interval([(y, a[methods].to_numpy()), (y, b[methods].to_numpy())], [w, -w],
                           n_boot=N_BOOT, seed=BOOT_SEED, pair_keys=["test", "test"])
    return Claim("poison", claim, "attention's loss (clean − poisoned AUC) − max-pooling's loss, paired on the "
                 f"{len(y)} test slides", iv, MARGIN, 1, verdict(iv, MARGIN, 1), _rule(1))


def ood_claim(config: Mapping[str, Any], results: Path, cells: Mapping[str, Cell], seeds: Sequence[int]) -> Claim:
    claim = "max-pooling is more robust to an unseen hospital (FocusMIL)"
    std, ood = cells["standard"], cells["ood"]
    methods = [m for m in ood.methods if m in std.methods]
    if not _has_both_families(methods):
        return _unavailable("ood", claim, "the ood cell needs methods of both families")
    # the same tissue stained by the held-out hospital: resample the pairs together
    iv, paired, a, b = _family_change(config, results, std, ood, methods, seeds, ("test", "ood"))
    how = (f"paired on the {len(a)} test slides and their copies from the held-out hospital" if paired else
           f"{len(a)} test and {len(b)} out-of-distribution slides resampled independently")
    return Claim("ood", claim, f"max-pooling's change (ood − standard AUC) − attention's, {how}", iv, MARGIN, 1,
                 verdict(iv, MARGIN, 1), _rule(1))


def patch_auc_draws(config: Mapping[str, Any], results: Path, cell: Cell, seeds: Sequence[int],
                    methods: Sequence[str]) -> tuple[np.ndarray, np.ndarray, str] | str:
    """Each method's patch AUC (any tumour) on the patches of the test tumour slides, the mean of its seeds',
    on the slides as they are and on ``N_BOOT`` resamples of the tumour slides with all their patches (one
    cluster bootstrap shared by every method and seed). Returns ``(point (M,), boot (N_BOOT, M), what)`` or the
    reason it cannot be computed."""
    test = cell_scores(results, cell, seeds, methods=methods)
    features = Path(results) / manifest_subpath(cell)
    tumour = [s for s in test.index if test.loc[s, "label"] == 1]
    try:
        files = {s: feature_path(features, s) for s in tumour}
    except WsimilError as exc:  # e.g. feature files deleted after training to save disk
        return f"the feature files of the test tumour slides (patch labels) cannot be read: {exc}"
    fractions = {s: read_tumor_fraction(files[s]) for s in tumour}
    tumour = [s for s in tumour if fractions[s] is not None]
    if len(tumour) < 2:
        return "fewer than two test tumour slides have patch labels (tumor_fraction)"
    slide_of = np.concatenate([np.full(len(fractions[s]), k) for k, s in enumerate(tumour)])
    labels = (np.concatenate([fractions[s] for s in tumour]) >= ANY_TUMOUR).astype(int)  # as the *_any metrics
    if labels.all() or not labels.any():
        return "the test tumour slides' patches are all of one class"
    rng = np.random.default_rng(BOOT_SEED)
    counts = rng.multinomial(len(tumour), np.full(len(tumour), 1.0 / len(tumour)), size=N_BOOT)
    point, boot = np.zeros(len(methods)), np.zeros((N_BOOT, len(methods)))
    for j, m in enumerate(methods):
        for sd in seeds:
            path = run_dir(results, cell.name, m, sd) / "instance_scores.h5"
            sc = read_instance_scores(path, tumour)
            score = np.concatenate([sc[s] for s in tumour])
            if len(score) != len(labels):
                raise WsimilError(f"{path}: {len(score)} instance scores for {len(labels)} patches of the test "
                                  "tumour slides (instance scores must follow the feature files' patch order)")
            if not np.isfinite(score).all():
                return f"{m} seed {sd} has non-finite instance scores"
            mat = cluster_auc_matrix(labels, slide_of, score, len(tumour))
            point[j] += cluster_aucs(*mat, np.ones(len(tumour)))[0] / len(seeds)
            boot[:, j] += cluster_aucs(*mat, counts) / len(seeds)
    return point, boot, f"the {len(labels)} patches of the {len(tumour)} test tumour slides, resampled by slide"


def froc_draws(config: Mapping[str, Any], results: Path, cell: Cell, seeds: Sequence[int],
               methods: Sequence[str]) -> tuple[np.ndarray, np.ndarray, str] | str:
    """Each method's CAMELYON16 FROC on the test slides, the mean of its seeds', on the slides as they are and
    on ``N_BOOT`` stratified resamples of the slides (each drawn slide with all its lesions and false
    positives; the same resamples for every method and seed). Returns ``(point (M,), boot (N_BOOT, M), what)``
    or the reason it cannot be computed."""
    from wsimil.evaluation.evaluate import annotations_from_sheet, froc_inputs
    from wsimil.evaluation.froc import resampled_froc, slide_matches

    test = cell_scores(results, cell, seeds, methods=methods)
    slides = list(test.index)
    labels = {s: int(test.loc[s, "label"]) for s in slides}
    sheet = Path(results) / "data" / "slides.csv"
    annotations = annotations_from_sheet(sheet) if sheet.is_file() else None
    features = Path(results) / manifest_subpath(cell)
    counts, lesion_cache = None, {}
    point, boot = np.zeros(len(methods)), np.zeros((N_BOOT, len(methods)))
    for j, m in enumerate(methods):
        for sd in seeds:
            inputs = froc_inputs(run_dir(results, cell.name, m, sd), features, slides, labels, annotations,
                                 lesion_cache)
            if isinstance(inputs, str):
                return inputs
            detections, lesions, _ = inputs
            usable = list(detections)
            if counts is None:
                y = np.array([labels[s] for s in usable])
                counts = stratified_counts(y, N_BOOT, np.random.default_rng(BOOT_SEED))
            matches = slide_matches(detections, lesions, usable)
            point[j] += resampled_froc(matches, np.ones((1, len(usable))))[0] / len(seeds)
            boot[:, j] += resampled_froc(matches, counts) / len(seeds)
    n_pos = int(sum(labels[s] for s in usable))
    return point, boot, f"the {len(usable)} test slides ({n_pos} tumour), stratified resamples of the slides"


def patch_claim(config: Mapping[str, Any], results: Path, cell: Cell, seeds: Sequence[int]) -> Claim:
    claim = "max-pooling localises tumour patches better than attention (FocusMIL)"
    methods = list(cell.methods)
    if not _has_both_families(methods):
        return _unavailable("patch", claim, "the standard cell needs methods of both families")
    draws = patch_auc_draws(config, results, cell, seeds, methods)
    if isinstance(draws, str):
        return _unavailable("patch", claim, draws)
    point, boot, what = draws
    w = _family_weights(methods, {"max-pooling": 1.0, "attention": -1.0})
    diff = boot @ w
    if not np.isfinite(diff).all():
        return _unavailable("patch", claim, "a resample of the tumour slides had patches of one class only")
    lo, hi = np.quantile(diff, [0.025, 0.975])
    iv = Interval(float(point @ w), float(lo), float(hi), 0.95, N_BOOT)
    return Claim("patch", claim, f"max-pooling mean − attention mean of the patch AUC (any tumour) on {what}", iv,
                 MARGIN, 1, verdict(iv, MARGIN, 1), _rule(1))


def minet_claim(results: Path, cell: Cell, seeds: Sequence[int]) -> Claim:
    claim = "mi-Net overfits more than FocusMIL (FocusMIL, 'why mi-Net overfits')"
    if not {"minet", "focusmil"} <= set(cell.methods):
        return _unavailable("minet_gap", claim, "minet_curves.methods must hold minet and focusmil")
    methods = ["minet", "focusmil"]
    tr = cell_scores(results, cell, seeds, "train", methods)
    va = cell_scores(results, cell, seeds, "val", methods)
    w = np.array([1.0, -1.0])  # (train_minet - train_focus) - (val_minet - val_focus)
    iv = contrast_interval([(tr["label"].to_numpy(), tr[methods].to_numpy()), (va["label"].to_numpy(), va[methods].to_numpy())],
                           [w, -w], n_boot=N_BOOT, seed=BOOT_SEED, pair_keys=["train", "val"])
    return Claim("minet_gap", claim, f"mi-Net's (train − validation AUC) − FocusMIL's; {len(tr)} training and "
                 f"{len(va)} validation slides, each paired across the two methods", iv, MARGIN, 1,
                 verdict(iv, MARGIN, 1), _rule(1))


def train_val_gaps(results: Path, cell: Cell, seeds: Sequence[int]) -> pd.DataFrame:
    """Per method of ``cell``: the training and validation AUC of the seed-averaged scores and their gap
    (columns method, train_auc_seedavg, val_auc_seedavg, train_minus_val_seedavg): the values whose difference
    the mi-Net claim is about."""
    tr = cell_scores(results, cell, seeds, "train")
    va = cell_scores(results, cell, seeds, "val")
    rows = []
    for m in cell.methods:
        t, v = _one_auc(tr, m).estimate, _one_auc(va, m).estimate
        rows.append({"method": m, "train_auc_seedavg": t, "val_auc_seedavg": v, "train_minus_val_seedavg": t - v})
    return pd.DataFrame(rows)


def _pseudo_bag_scores(results: Path, cell: Cell, method: str, seeds: Sequence[int]) -> pd.DataFrame:
    """Seed-averaged Tier-1 score of every test pseudo-bag: columns slide_id, pseudo_bag, label, score."""
    parts = []
    for s in seeds:
        path = run_dir(results, cell.name, method, s) / "pseudo_bags.csv"
        if not path.is_file():
            raise WsimilError(f"{path} not found: DTFD runs write their pseudo-bags' Tier-1 scores there")
        p = pd.read_csv(path, dtype={"slide_id": str})
        parts.append(p[p["split"] == "test"])
    p = pd.concat(parts, ignore_index=True)
    return p.groupby(["slide_id", "pseudo_bag"], as_index=False).agg(label=("label", "first"), score=("score", "mean"))


def _cluster_aucs(labels: np.ndarray, slide_of: np.ndarray, scores: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """AUC of rows (pseudo-bags, patches) whose slides are drawn ``counts`` (n_boot, n_slides) times: every row
    of a drawn slide is counted with its slide's weight. Returns (n_boot,)."""
    return cluster_aucs(*cluster_auc_matrix(labels, slide_of, scores, counts.shape[1]), counts)


def _tier_aucs(results: Path, cell: Cell, seeds: Sequence[int],
               counts: np.ndarray | None = None) -> dict[str, tuple[float, np.ndarray]]:
    """Tier 1 (the test pseudo-bags, each labelled with its slide) and Tier 2 (the test slides) AUC of a DTFD
    cell's seed-averaged scores, and their values on the slide resamples ``counts`` (n_boot, n_slides)."""
    method = cell.methods[0]
    frame = cell_scores(results, cell, seeds, methods=[method])
    n = len(frame)
    counts = np.ones((0, n)) if counts is None else counts
    ones = np.ones((1, n))
    index = {s: i for i, s in enumerate(frame.index)}
    pb = _pseudo_bag_scores(results, cell, method, seeds)
    slide_of = pb["slide_id"].map(index).to_numpy()
    lab, sc = pb["label"].to_numpy(), pb["score"].to_numpy()
    y, s2, one = frame["label"].to_numpy(), frame[method].to_numpy(), np.arange(n)
    return {"Tier 1": (float(_cluster_aucs(lab, slide_of, sc, ones)[0]), _cluster_aucs(lab, slide_of, sc, counts)),
            "Tier 2": (float(_cluster_aucs(y, one, s2, ones)[0]), _cluster_aucs(y, one, s2, counts))}


def dtfd_points(results: Path, cells: Sequence[Cell], seeds: Sequence[int]) -> pd.DataFrame:
    """Per pseudo-bag count and tier: the test AUC of the seed-averaged scores (columns n_pseudo_bags, tier,
    auc_seedavg), the values whose differences the DTFD claims are about."""
    rows = []
    for cell in sorted(cells, key=lambda c: c.params["n_pseudo_bags"]):
        for tier, (auc, _) in sorted(_tier_aucs(results, cell, seeds).items(), reverse=True):
            rows.append({"n_pseudo_bags": cell.params["n_pseudo_bags"], "tier": tier, "auc_seedavg": auc})
    return pd.DataFrame(rows, columns=["n_pseudo_bags", "tier", "auc_seedavg"])


def dtfd_claims(results: Path, cells: Sequence[Cell], seeds: Sequence[int]) -> list[Claim]:
    """Tier 1 falls with more pseudo-bags; Tier 2 does not move (within the margin). Both paired on the
    test slides (a slide's pseudo-bags are resampled with it)."""
    c1 = "more pseudo-bags hurt DTFD's Tier 1 (DTFD-MIL)"
    c2 = "more pseudo-bags leave DTFD's Tier 2 unchanged (DTFD-MIL)"
    if len(cells) < 2:
        return [_unavailable("dtfd_tier1", c1, "dtfd_ablation needs two or more pseudo-bag counts", -1),
                _unavailable("dtfd_tier2", c2, "dtfd_ablation needs two or more pseudo-bag counts")]
    ordered = sorted(cells, key=lambda c: c.params["n_pseudo_bags"])
    lo, hi = ordered[0], ordered[-1]
    m_lo, m_hi = lo.params["n_pseudo_bags"], hi.params["n_pseudo_bags"]
    a = cell_scores(results, lo, seeds, methods=[lo.methods[0]])
    slides, y = list(a.index), a["label"].to_numpy()
    if list(cell_scores(results, hi, seeds, methods=[hi.methods[0]]).index) != slides:
        raise WsimilError(f"cells {lo.name} and {hi.name} score different test slides: cannot pair them")
    counts = stratified_counts(y, N_BOOT, np.random.default_rng(BOOT_SEED))
    t_lo, t_hi = _tier_aucs(results, lo, seeds, counts), _tier_aucs(results, hi, seeds, counts)
    out = []
    for key, claim, (e0, d0), (e1, d1), direction in (
        ("dtfd_tier1", c1, t_lo["Tier 1"], t_hi["Tier 1"], -1),
        ("dtfd_tier2", c2, t_lo["Tier 2"], t_hi["Tier 2"], 0),
    ):
        diff = d1 - d0
        iv = Interval(e1 - e0, float(np.quantile(diff, 0.025)), float(np.quantile(diff, 0.975)), 0.95, N_BOOT)
        what = f"{'Tier-1 (pseudo-bag)' if key == 'dtfd_tier1' else 'Tier-2 (slide)'} AUC at M={m_hi} − at M={m_lo}, " \
               f"paired on the {len(slides)} test slides"
        if direction:
            out.append(Claim(key, claim, what, iv, MARGIN, direction, verdict(iv, MARGIN, direction), _rule(direction)))
        else:
            v = equivalence_verdict(iv, MARGIN)
            out.append(Claim(key, claim, what, iv, MARGIN, 1, v,
                             f"supported when the whole 95% interval lies within ±{MARGIN}, contradicted when it "
                             f"lies beyond −{MARGIN} or beyond +{MARGIN}, inconclusive otherwise"))
    return out


def equivalence_verdict(iv: Interval, margin: float) -> str:
    """"No change": supported when the interval lies within +-margin, contradicted when it lies wholly
    outside it (beyond -margin or beyond +margin), inconclusive otherwise (also NaN)."""
    if not (math.isfinite(iv.low) and math.isfinite(iv.high)):
        return "inconclusive"
    if -margin < iv.low and iv.high < margin:
        return "supported"
    if iv.high < -margin or iv.low > margin:
        return "contradicted"
    return "inconclusive"


def milunit_readings(results: Path, cell: Cell, seeds: Sequence[int]) -> pd.DataFrame:
    """Per method: mean validation AUC, the test AUC with its interval, and the reading (rule in the module
    docstring)."""
    val = cell_scores(results, cell, seeds, "val")
    test = cell_scores(results, cell, seeds, "test")
    yt = test["label"].to_numpy()
    rows = []
    for m in cell.methods:
        v = contrast_interval([(val["label"].to_numpy(), val[[m]].to_numpy())], [np.ones(1)], n_boot=N_BOOT, seed=BOOT_SEED)
        t = contrast_interval([(yt, test[[m]].to_numpy())], [np.ones(1)], n_boot=N_BOOT, seed=BOOT_SEED)
        if not v.estimate >= LEARN_BAR:
            reading = "did not learn the task"
        elif t.high < 0.5:
            reading = "learned the poison"
        elif t.low > 0.5:
            reading = "respects the MIL assumption"
        else:
            reading = "inconclusive"
        rows.append({"method": m, "family": family_of(m), "val_auc": v.estimate, "val_ci_low": v.low,
                     "val_ci_high": v.high, "test_auc": t.estimate, "test_ci_low": t.low, "test_ci_high": t.high,
                     "reading": reading})
    return pd.DataFrame(rows)


def _family_change(config: Mapping[str, Any], results: Path, base: Cell, other: Cell, methods: Sequence[str],
                   seeds: Sequence[int], unpaired_keys: tuple[str, str]) -> tuple[Interval, bool, pd.DataFrame, pd.DataFrame]:
    """Max-pooling's change from ``base`` to ``other`` minus attention's, its interval, whether the two slide sets
    were paired, and the two score tables (test slides x methods)."""
    a = cell_scores(results, base, seeds, methods=methods)
    b, paired = aligned_to(config, a, cell_scores(results, other, seeds, methods=methods))
    w = _family_weights(methods, {"max-pooling": 1.0, "attention": -1.0})
    groups = [(a["label"].to_numpy(), a[methods].to_numpy()), (b["label"].to_numpy(), b[methods].to_numpy())]
    iv = contrast_interval(groups, [-w, w], n_boot=N_BOOT, seed=BOOT_SEED,
                           pair_keys=["test", "test"] if paired else list(unpaired_keys))
    return iv, paired, a, b


def family_change_claim(config: Mapping[str, Any], results: Path, base: Cell, other: Cell, key: str,
                        claim: str) -> Claim:
    """Max-pooling's change in test slide AUC from ``base`` to ``other`` (other − base) minus attention's, with
    the paired interval (the same test slides, or the same tissue, resampled together) and the directional
    verdict (claimed sign positive: max-pooling is hurt less): the form of the ood claim, for an experiment's
    own trial (:meth:`wsimil.experiments.Experiment.claims`)."""
    methods = [m for m in other.methods if m in base.methods]
    if not _has_both_families(methods):
        return _unavailable(key, claim, f"the {other.name} cell needs methods of both families")
    iv, paired, a, b = _family_change(config, results, base, other, methods, list(config["training"]["seeds"]),
                                      ("base", "other"))
    how = (f"paired on the {len(a)} test slides" if paired else
           f"{len(a)} and {len(b)} test slides resampled independently")
    return Claim(key, claim, f"max-pooling's change ({other.name} − {base.name} AUC) − attention's, {how}", iv,
                 MARGIN, 1, verdict(iv, MARGIN, 1), _rule(1))


def clean_context(results: Path, cell: Cell, seeds: Sequence[int]) -> Interval | None:
    """Max-pooling mean AUC − attention mean AUC on the clean test slides (context, not a claim)."""
    if not _has_both_families(cell.methods):
        return None
    wide = cell_scores(results, cell, seeds)
    w = _family_weights(cell.methods, {"max-pooling": 1.0, "attention": -1.0})
    return contrast_interval([(wide["label"].to_numpy(), wide[list(cell.methods)].to_numpy())], [w],
                             n_boot=N_BOOT, seed=BOOT_SEED)


def claims(config: Mapping[str, Any], results: Path) -> list[Claim]:
    """Every claim the configured experiments check (:meth:`wsimil.experiments.Experiment.claims`), in SUMMARY
    order."""
    from wsimil.experiments import configured

    cells = {c.name: c for c in plan_cells(config)}
    out: list[Claim] = []
    for exp in sorted(configured(config), key=lambda e: e.summary_order):
        out += exp.claims(config, results, cells)
    return out


# ------------------------------------------------------------------------------------------------ runs


def convergence(results: Path, cells: Sequence[Cell], seeds: Sequence[int]) -> pd.DataFrame:
    """Per cell: runs, optimiser steps (min-max), runs whose selected epoch was the last one (flagged "not
    converged" above ``LAST_EPOCH_FLAG``), and runs whose selected validation AUC was tied by another epoch."""
    rows = []
    for c in cells:
        metas = []
        for m in c.methods:
            for s in seeds:
                p = run_dir(results, c.name, m, s) / "run.json"
                try:
                    metas.append(json.loads(p.read_text()))
                except (OSError, json.JSONDecodeError) as exc:
                    raise WsimilError(f"cannot read run record {p}: {exc}") from exc
        steps = [int(x["optimizer_steps"]) for x in metas if x.get("optimizer_steps") is not None]
        last = sum(bool(x.get("selected_last_epoch")) for x in metas)
        tied = sum(int(x.get("val_auc_ties") or 0) > 0 for x in metas)
        rows.append({"cell": c.name, "runs": len(metas), "steps_min": min(steps) if steps else None,
                     "steps_max": max(steps) if steps else None, "selected_last_epoch": last,
                     "selected_tied_val_auc": tied, "not_converged": last > LAST_EPOCH_FLAG * len(metas)})
    return pd.DataFrame(rows)
