"""The evidence behind SUMMARY.md: a slide-AUC interval per method and cell, and for every claim of the papers
the interval of the difference it is about, read method pair by method pair, with a three-valued verdict.

**What varies between reproductions** is both the test slides and training. A claim is read on the papers'
quantity, the AUC of a single trained model: per seed, the contrast of that seed's models (seed s of every
method and cell trained with seed s), averaged over the seeds. Its interval is a two-stage bootstrap
(:mod:`wsimil.evaluation.hierarchical`): the seeds are drawn with replacement, then the test slides within each
class, every AUC of one contrast on the same resampled slides where they are the same slides or tissue (clean
and poisoned; a slide and its copy from the held-out hospital; a DTFD slide with its pseudo-bags; a tumour slide
with its patches). The seed-averaged ("ensemble") AUCs of the tables and cards stand beside them, labelled.

**Method by method.** A family claim (max-pooling vs attention) is read on every pair of a max-pooling and an
attention method of the run; its verdict comes from the pairs' (:func:`~wsimil.evaluation.hierarchical.
family_verdict`: supported only when no pair contradicts it and it survives leaving out any one method).

**Decisions.** Each reading gets one-sided bootstrap p-values of support (beyond ``MARGIN`` in the claimed
direction) and of contradiction (beyond it the other way); every reading of one SUMMARY is decided together
at family-wise level ``ALPHA`` by Holm's step-down adjustment, and only on at least ``MIN_SEEDS`` seeds whose
runs all fit their training set (run.json ``fits_training_set``): a run that does not is left out with its
seed and listed. The rules, the margin and the bars were fixed before any run; the verdict is whatever the
numbers give.

Claims (``MARGIN`` = 0.05 AUC; direction: which sign the papers claim):

- **poison**: attention's clean-to-poisoned loss minus max-pooling's > 0 (FocusMIL).
- **ood**: max-pooling's change from the test slides to the unseen hospital minus attention's > 0 (FocusMIL).
- **dtfd_tier1**: DTFD's Tier-1 AUC at the largest number of pseudo-bags minus at the smallest < 0, and
  **dtfd_tier2**: the same change of the Tier-2 (slide) AUC lies within +-margin (DTFD-MIL): an equivalence
  claim (two one-sided tests), contradicted when it lies beyond -margin or beyond +margin.
- **patch**: max-pooling's patch AUC minus attention's > 0 (FocusMIL: max-pooling localises tumour far
  better): on the patches of the test tumour slides, positives = any tumour in the patch (the definition the
  synthetic tumour's look is calibrated on with a supervised probe, docs/data.md), the tumour slides resampled
  with all their patches (a cluster bootstrap); instance scores of different seeds are never pooled.
- **minet_gap**: mi-Net's train - validation AUC gap minus FocusMIL's > 0 (FocusMIL's "why mi-Net overfits").
- **milunit** (per method, Raff & Holt): "did not learn the task" when the mean validation AUC is below
  ``LEARN_BAR``; else "learned the poison" when the test AUC interval lies below 0.5, "respects the MIL
  assumption" when it lies above 0.5, "inconclusive" otherwise.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from wsimil.evaluation.evaluate import ANY_TUMOUR, read_instance_scores, read_predictions, read_tumor_fraction
from wsimil.evaluation.hierarchical import (decision_p_values, family_verdict, holm_adjust, seed_resamples,
                                            seed_slide_interval, two_stage_draws)
from wsimil.evaluation.intervals import (Interval, _percentile, cluster_auc_matrix, cluster_aucs, contrast_interval,
                                         seed_averaged, stratified_counts)
from wsimil.experiments import Cell, manifest_subpath, plan_cells
from wsimil.features.store import feature_path
from wsimil.io import WsimilError

#: the margin (AUC) a paired interval must clear for a claim to be decided
MARGIN = 0.05
#: family-wise error rate of one SUMMARY's decisions (Holm over every pair reading)
ALPHA = 0.05
#: a reading is decided only on at least this many seeds whose runs all fit their training set
MIN_SEEDS = 5
#: the fit gate's bar without a config (``evaluation.fit_bar``'s default; = wsimil.training.loop.FIT_BAR)
DEFAULT_FIT_BAR = 0.9
#: MIL unit test: below this mean validation AUC a method "did not learn the task"
LEARN_BAR = 0.7
#: bootstrap resamples of every interval, and its seed
N_BOOT = 2000
BOOT_SEED = 0
#: a cell is flagged "not converged" when more than this share of its runs ended with the training loss still
#: falling, or too short to tell (wsimil.training.loop.loss_plateaued)
NOT_CONVERGED_SHARE = 0.25
FAMILIES = ("max-pooling", "attention")
CLAIM_COLUMNS = ["claim", "level", "pair", "statement", "contrast", "estimate", "ci_low", "ci_high", "margin",
                 "claimed_sign", "seeds", "runs_left_out", "p_support", "p_contradict", "p_holm", "verdict", "rule"]


@dataclass(frozen=True)
class Reading:
    """One pre-declared contrast of a claim: a (max-pooling, attention) pair of methods, or the claim's only
    contrast. ``interval``: the two-stage (seeds x slides) 95% interval of the mean over seeds of the single
    models' difference; ``draws`` (N_BOOT,) its replicates; ``seeds``: the seeds it uses (those whose runs all fit);
    ``left_out``: the undertrained runs it leaves out; the p-values and verdict are set by :func:`adjust`."""

    label: str
    interval: Interval
    draws: np.ndarray = field(repr=False, compare=False)
    seeds: int = 0
    pair: tuple[str, str] | None = None
    left_out: tuple[str, ...] = ()
    p_support: float = math.nan
    p_contradict: float = math.nan
    p_holm: float = math.nan
    verdict: str = "inconclusive"
    note: str = ""


@dataclass(frozen=True)
class Claim:
    """One checked claim: its readings (one per pre-declared pair, or one), the interval of the contrast it is
    about (a family claim: the mean over its pairs), and the verdict by the rules fixed before the run."""

    key: str
    claim: str
    contrast: str
    interval: Interval
    margin: float
    direction: int
    verdict: str
    rule: str
    readings: tuple[Reading, ...] = ()
    why: str = ""
    equivalence: bool = False

    @property
    def is_family(self) -> bool:
        return len(self.readings) > 1 or any(r.pair is not None for r in self.readings)

    def row(self) -> dict[str, Any]:
        """The claim's own row of tables/claims (level "claim")."""
        iv = self.interval
        one = self.readings[0] if len(self.readings) == 1 else None
        return {"claim": self.key, "level": "claim",
                "pair": f"family ({len(self.readings)} pairs)" if self.is_family else (one.label if one else ""),
                "statement": self.claim, "contrast": self.contrast, "estimate": iv.estimate, "ci_low": iv.low,
                "ci_high": iv.high, "margin": self.margin, "claimed_sign": self.sign,
                "seeds": one.seeds if one is not None else min((r.seeds for r in self.readings), default=0),
                "runs_left_out": "; ".join(sorted({x for r in self.readings for x in r.left_out})),
                "p_support": one.p_support if one is not None and not self.is_family else math.nan,
                "p_contradict": one.p_contradict if one is not None and not self.is_family else math.nan,
                "p_holm": one.p_holm if one is not None and not self.is_family else math.nan,
                "verdict": self.verdict, "rule": self.rule + (f" ({self.why})" if self.why else "")}

    @property
    def sign(self) -> str:
        return "none (equivalence)" if self.equivalence else "positive" if self.direction > 0 else "negative"

    def rows(self) -> list[dict[str, Any]]:
        """The claim's row, then one row per pair of a family claim (level "pair")."""
        out = [self.row()]
        if self.is_family:
            for r in self.readings:
                iv = r.interval
                out.append({"claim": self.key, "level": "pair", "pair": r.label, "statement": self.claim,
                            "contrast": self.contrast, "estimate": iv.estimate, "ci_low": iv.low, "ci_high": iv.high,
                            "margin": self.margin, "claimed_sign": self.sign, "seeds": r.seeds,
                            "runs_left_out": "; ".join(r.left_out), "p_support": r.p_support,
                            "p_contradict": r.p_contradict, "p_holm": r.p_holm, "verdict": r.verdict,
                            "rule": READING_RULE + (f" ({r.note})" if r.note else "")})
        return out


READING_RULE = (f"Holm-adjusted p <= {ALPHA} over every reading of the summary, on >= {MIN_SEEDS} seeds whose runs "
                "fit their training set; else inconclusive")


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
#
# Every claim is read on the papers' quantity, the AUC of a single trained model: per seed, the contrast of that
# seed's models, averaged over the seeds, with a two-stage bootstrap over training seeds and test slides
# (wsimil.evaluation.hierarchical). A family claim ("max-pooling beats attention") is read on every pair of a
# max-pooling and an attention method in the run; the family verdict comes from its pairs by
# hierarchical.family_verdict. Every reading of one SUMMARY is decided at a family-wise ALPHA (Holm); a run
# that does not fit its training set (run.json fits_training_set) is left out with its seed, per reading.


def _unavailable(key: str, claim: str, why: str, direction: int = 1) -> Claim:
    nan = Interval(math.nan, math.nan, math.nan)
    return Claim(key, claim, why, nan, MARGIN, direction, "inconclusive", "cannot be checked: " + why)


def _rule(direction: int) -> str:
    side = f"> +{MARGIN}" if direction > 0 else f"< -{MARGIN}"
    other = f"< -{MARGIN}" if direction > 0 else f"> +{MARGIN}"
    return (f"a reading is supported when the difference is {side} (one-sided bootstrap p, Holm-adjusted over "
            f"the summary's readings, <= {ALPHA}; unadjusted, the whole 95% interval beyond the margin), "
            f"contradicted when it is {other} by the same test, inconclusive otherwise or on fewer than "
            f"{MIN_SEEDS} fitted seeds")


_EQUIVALENCE_RULE = (f"a reading is supported when the difference lies within ±{MARGIN} (two one-sided tests, the "
                     f"larger p, Holm-adjusted <= {ALPHA}; unadjusted, the whole 95% interval inside ±{MARGIN}), "
                     f"contradicted when it lies beyond −{MARGIN} or beyond +{MARGIN}, inconclusive otherwise or "
                     f"on fewer than {MIN_SEEDS} fitted seeds")


def _family_rule() -> str:
    return ("family verdict: supported when no pair contradicts and, whichever one method is left out, a supported "
            "pair remains; contradicted likewise; inconclusive otherwise")


def fit_bar(config: Mapping[str, Any] | None) -> float:
    """The fit gate's bar (``evaluation.fit_bar``; the schema's default without a config)."""
    return float(config["evaluation"]["fit_bar"]) if config else DEFAULT_FIT_BAR


def run_fit(results: Path, cell: str, method: str, seed: int, bar: float = DEFAULT_FIT_BAR) -> tuple[bool, float]:
    """Whether a run fits its training set, its last-epoch model's training slide AUC (run.json
    ``final_train_auc``) at least ``bar``, and that AUC (NaN when not recorded: a run recorded before the fit gate
    counts as fitting)."""
    p = run_dir(results, cell, method, seed) / "run.json"
    try:
        meta = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WsimilError(f"cannot read run record {p}: {exc}") from exc
    auc = meta.get("final_train_auc")
    auc = float(auc) if isinstance(auc, (int, float)) and not isinstance(auc, bool) else math.nan
    return (auc >= bar if math.isfinite(auc) else bool(meta.get("fits_training_set", True))), auc


def fitted_seeds(results: Path, runs: Sequence[tuple[str, str]], seeds: Sequence[int],
                 bar: float = DEFAULT_FIT_BAR) -> tuple[list[int], list[str]]:
    """The seeds whose runs ``(cell, method)`` all fit their training set, and the runs that do not
    ("cell/method/seedN")."""
    kept, out = [], []
    for s in seeds:
        bad = [f"{c}/{m}/seed{s}" for c, m in runs if not run_fit(results, c, m, s, bar)[0]]
        out += bad
        if not bad:
            kept.append(s)
    return kept, out


def undertrained(results: Path, cells: Sequence[Cell], seeds: Sequence[int],
                 bar: float = DEFAULT_FIT_BAR) -> pd.DataFrame:
    """Every run that does not fit its training set: columns cell, method, seed, final_train_auc."""
    rows = []
    for c in cells:
        for m in c.methods:
            for s in seeds:
                fits, auc = run_fit(results, c.name, m, s, bar)
                if not fits:
                    rows.append({"cell": c.name, "method": m, "seed": s, "final_train_auc": auc})
    return pd.DataFrame(rows, columns=["cell", "method", "seed", "final_train_auc"])


def seed_matrix(results: Path, cell: Cell, seeds: Sequence[int], split: str = "test",
                methods: Sequence[str] | None = None) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Every seed's own slide scores: ``(slide ids (n,) sorted, labels (n,), scores (S, n, M))`` for ``seeds`` x
    ``methods`` of ``cell`` on ``split``; refused when the runs score different slides or labels."""
    methods = list(methods or cell.methods)
    ids: list[str] | None = None
    labels = None
    out = np.zeros((len(seeds), 0, len(methods)))
    for i, s in enumerate(seeds):
        for j, m in enumerate(methods):
            path = run_dir(results, cell.name, m, s) / "predictions.csv"
            p = read_predictions(path)
            p = p[p["split"] == split].sort_values("slide_id")
            these = p["slide_id"].astype(str).tolist()
            if ids is None:
                ids, labels = these, p["label"].astype(int).to_numpy()
                out = np.zeros((len(seeds), len(ids), len(methods)))
                if not ids:
                    raise WsimilError(f"cell {cell.name}: no {split} slides in {path}")
            elif these != ids or not np.array_equal(p["label"].astype(int).to_numpy(), labels):
                raise WsimilError(f"{path}: its {split} slides or labels differ from the other runs of cell {cell.name}")
            out[i, :, j] = p["score"].astype(float).to_numpy()
    return ids or [], labels if labels is not None else np.zeros(0, int), out


def _reading(label: str, groups: list[tuple[np.ndarray, np.ndarray]], weights: list[np.ndarray],
             pair_keys: list[str], seeds: Sequence[int], left_out: Sequence[str],
             pair: tuple[str, str] | None) -> Reading:
    iv, draws = seed_slide_interval(groups, weights, n_boot=N_BOOT, seed=BOOT_SEED, pair_keys=pair_keys,
                                    return_draws=True)
    return Reading(label, iv, draws, len(seeds), pair, tuple(left_out))


def _no_seeds(label: str, left_out: Sequence[str], pair: tuple[str, str] | None) -> Reading:
    nan = Interval(math.nan, math.nan, math.nan)
    return Reading(label, nan, np.full(N_BOOT, math.nan), 0, pair, tuple(left_out), note="no seed whose runs all fit")


def family_pairs(methods: Sequence[str]) -> list[tuple[str, str]]:
    """Every pre-declared (max-pooling, attention) pair of ``methods``, in the run's method order."""
    mp = [m for m in methods if family_of(m) == "max-pooling"]
    att = [m for m in methods if family_of(m) == "attention"]
    return [(a, b) for a in mp for b in att]


def _family_claim(key: str, claim: str, contrast: str, readings: list[Reading], direction: int = 1) -> Claim:
    """A family claim from its pair readings; the interval is that of the mean over the pairs (their replicates
    share the seed and slide resamples when they use the same seeds). Verdicts are set by :func:`adjust`."""
    finite = [r for r in readings if np.isfinite(r.draws).all()]
    if finite:
        draws = np.mean([r.draws for r in finite], axis=0)
        iv = _percentile(float(np.mean([r.interval.estimate for r in finite])), draws, 0.95, N_BOOT)
    else:
        iv = Interval(math.nan, math.nan, math.nan)
    return Claim(key, claim, contrast, iv, MARGIN, direction, "inconclusive", _rule(direction) + "; " + _family_rule(),
                 tuple(readings))


def _two_cell_pairs(results: Path, base: Cell, other: Cell, seeds: Sequence[int], order: list[int] | None,
                    base_w: tuple[float, float], other_w: tuple[float, float], paired: bool,
                    keys: tuple[str, str], bar: float) -> list[Reading]:
    """One reading per (max-pooling, attention) pair run in both cells: base_w @ AUC_base + other_w @ AUC_other
    of the pair's single models, per seed; ``order`` re-indexes ``other``'s slides onto ``base``'s."""
    methods = [m for m in other.methods if m in base.methods]
    out = []
    for a, b in family_pairs(methods):
        kept, left = fitted_seeds(results, [(base.name, a), (base.name, b), (other.name, a), (other.name, b)], seeds,
                                  bar)
        if not kept:
            out.append(_no_seeds(f"{a} vs {b}", left, (a, b)))
            continue
        _, y0, s0 = seed_matrix(results, base, kept, methods=[a, b])
        _, y1, s1 = seed_matrix(results, other, kept, methods=[a, b])
        if order is not None:
            y1, s1 = y1[order], s1[:, order]
        out.append(_reading(f"{a} vs {b}", [(y0, s0), (y1, s1)], [np.array(base_w), np.array(other_w)],
                            ["test", "test"] if paired else list(keys), kept, left, (a, b)))
    return out


def _order_onto(config: Mapping[str, Any], base_ids: list[str], other_ids: list[str]) -> list[int] | None:
    """Indices that put ``other_ids`` in ``base_ids``' order when they are the same slides or the same tissue (a
    held-out hospital's copies), else None (then the two slide sets are resampled independently)."""
    if other_ids == base_ids:
        return list(range(len(base_ids)))
    tissue = tissue_map(config)
    keys = [tissue.get(s, s) for s in other_ids]
    if sorted(keys) == base_ids and len(set(keys)) == len(keys):
        where = {k: i for i, k in enumerate(keys)}
        return [where[s] for s in base_ids]
    return None


def poison_claim(results: Path, cells: Mapping[str, Cell], seeds: Sequence[int], bar: float = DEFAULT_FIT_BAR) -> Claim:
    claim = "max-pooling resists the poison, attention does not (FocusMIL)"
    clean, pois = cells["standard"], cells["poison"]
    methods = [m for m in pois.methods if m in clean.methods]
    if not _has_both_families(methods):
        return _unavailable("poison", claim, "the poison cell needs methods of both families")
    a, _, _ = seed_matrix(results, clean, seeds[:1], methods=methods[:1])
    b, _, _ = seed_matrix(results, pois, seeds[:1], methods=methods[:1])
    if a != b:
        raise WsimilError("standard and poison cells score different test slides: cannot pair them")
    # (att_clean - att_pois) - (mp_clean - mp_pois): clean weights (mp -1, att +1), poisoned (mp +1, att -1)
    readings = _two_cell_pairs(results, clean, pois, seeds, None, (-1.0, 1.0), (1.0, -1.0), True, ("test", "test"),
                               bar)
    return _family_claim("poison", claim, "attention's loss (clean − poisoned AUC) − max-pooling's loss, each seed's "
                         f"single models, paired on the {len(a)} test slides", readings)


def ood_claim(config: Mapping[str, Any], results: Path, cells: Mapping[str, Cell], seeds: Sequence[int]) -> Claim:
    claim = "max-pooling is more robust to an unseen hospital (FocusMIL)"
    return family_change_claim(config, results, cells["standard"], cells["ood"], "ood", claim, seeds,
                               "their copies from the held-out hospital")


def family_change_claim(config: Mapping[str, Any], results: Path, base: Cell, other: Cell, key: str,
                        claim: str, seeds: Sequence[int] | None = None, copies: str = "") -> Claim:
    """Max-pooling's change in test slide AUC from ``base`` to ``other`` (other − base) minus attention's, read on
    every (max-pooling, attention) pair with the two-stage interval (the same test slides, or the same tissue,
    resampled together) and the directional rule (claimed sign positive: max-pooling is hurt less): the form of
    the ood claim, for an experiment's own trial (:meth:`wsimil.experiments.Experiment.claims`)."""
    seeds = list(config["training"]["seeds"]) if seeds is None else list(seeds)
    methods = [m for m in other.methods if m in base.methods]
    if not _has_both_families(methods):
        return _unavailable(key, claim, f"the {other.name} cell needs methods of both families")
    a, _, _ = seed_matrix(results, base, seeds[:1], methods=methods[:1])
    b, _, _ = seed_matrix(results, other, seeds[:1], methods=methods[:1])
    order = _order_onto(config, a, b)
    paired = order is not None
    readings = _two_cell_pairs(results, base, other, seeds, order, (-1.0, 1.0), (1.0, -1.0), paired,
                               ("base", "other"), fit_bar(config))
    how = (f"paired on the {len(a)} test slides" + (f" and {copies}" if copies and a != b else "") if paired else
           f"{len(a)} and {len(b)} test slides resampled independently")
    return _family_claim(key, claim, f"max-pooling's change ({other.name} − {base.name} AUC) − attention's, each "
                         f"seed's single models, {how}", readings)


def _tumour_patches(results: Path, cell: Cell, ids: list[str], labels: np.ndarray):
    """The test tumour slides with patch labels, their patches' labels (any tumour) and slides, or the reason
    they cannot be read."""
    features = Path(results) / manifest_subpath(cell)
    tumour = [s for s, y in zip(ids, labels) if y == 1]
    try:
        files = {s: feature_path(features, s) for s in tumour}
    except WsimilError as exc:  # e.g. feature files deleted after training to save disk
        return f"the feature files of the test tumour slides (patch labels) cannot be read: {exc}"
    fractions = {s: read_tumor_fraction(files[s]) for s in tumour}
    tumour = [s for s in tumour if fractions[s] is not None]
    if len(tumour) < 2:
        return "fewer than two test tumour slides have patch labels (tumor_fraction)"
    slide_of = np.concatenate([np.full(len(fractions[s]), k) for k, s in enumerate(tumour)])
    patch_labels = (np.concatenate([fractions[s] for s in tumour]) >= ANY_TUMOUR).astype(int)  # as the *_any metrics
    if patch_labels.all() or not patch_labels.any():
        return "the test tumour slides' patches are all of one class"
    return tumour, patch_labels, slide_of


def patch_auc_per_seed(config: Mapping[str, Any], results: Path, cell: Cell, seeds: Sequence[int],
                       methods: Sequence[str]) -> tuple[np.ndarray, np.ndarray, str] | str:
    """Each method's and seed's patch AUC (any tumour) on the patches of the test tumour slides, on the slides as
    they are and on ``N_BOOT`` resamples of the tumour slides with all their patches (one cluster bootstrap shared
    by every method and seed). Returns ``(point (M, S), boot (N_BOOT, M, S), what)`` or why it cannot be
    computed."""
    ids, y, _ = seed_matrix(results, cell, list(seeds)[:1], methods=list(methods)[:1])
    got = _tumour_patches(results, cell, ids, y)
    if isinstance(got, str):
        return got
    tumour, labels, slide_of = got
    rng = np.random.default_rng(BOOT_SEED)
    counts = rng.multinomial(len(tumour), np.full(len(tumour), 1.0 / len(tumour)), size=N_BOOT)
    point, boot = np.zeros((len(methods), len(seeds))), np.zeros((N_BOOT, len(methods), len(seeds)))
    for j, m in enumerate(methods):
        for k, sd in enumerate(seeds):
            path = run_dir(results, cell.name, m, sd) / "instance_scores.h5"
            sc = read_instance_scores(path, tumour)
            score = np.concatenate([sc[s] for s in tumour])
            if len(score) != len(labels):
                raise WsimilError(f"{path}: {len(score)} instance scores for {len(labels)} patches of the test "
                                  "tumour slides (instance scores must follow the feature files' patch order)")
            if not np.isfinite(score).all():
                return f"{m} seed {sd} has non-finite instance scores"
            mat = cluster_auc_matrix(labels, slide_of, score, len(tumour))
            point[j, k] = cluster_aucs(*mat, np.ones(len(tumour)))[0]
            boot[:, j, k] = cluster_aucs(*mat, counts)
    return point, boot, f"the {len(labels)} patches of the {len(tumour)} test tumour slides, resampled by slide"


def patch_auc_draws(config: Mapping[str, Any], results: Path, cell: Cell, seeds: Sequence[int],
                    methods: Sequence[str]) -> tuple[np.ndarray, np.ndarray, str] | str:
    """Each method's patch AUC (any tumour), the mean of its seeds' (the cards' number): ``(point (M,), boot
    (N_BOOT, M), what)`` from :func:`patch_auc_per_seed`, or why it cannot be computed."""
    got = patch_auc_per_seed(config, results, cell, seeds, methods)
    if isinstance(got, str):
        return got
    point, boot, what = got
    return point.mean(axis=1), boot.mean(axis=2), what


def _per_seed_reading(label: str, point: np.ndarray, boot: np.ndarray, seeds: int, left_out: Sequence[str],
                      pair: tuple[str, str] | None) -> Reading:
    """A reading from each seed's contrast on the data as they are, ``point`` (S,), and on the shared slide
    resamples, ``boot`` (N_BOOT, S): the seed stage drawn here (wsimil.evaluation.hierarchical)."""
    if not (np.isfinite(point).all() and np.isfinite(boot).all()):
        nan = Interval(math.nan, math.nan, math.nan)
        return Reading(label, nan, np.full(N_BOOT, math.nan), seeds, pair, tuple(left_out),
                       note="a resample had one class only")
    counts = seed_resamples(point.shape[0], N_BOOT, np.random.default_rng(BOOT_SEED))
    draws = two_stage_draws(boot, counts)
    return Reading(label, _percentile(float(point.mean()), draws, 0.95, N_BOOT), draws, seeds, pair, tuple(left_out))


def patch_claim(config: Mapping[str, Any], results: Path, cell: Cell, seeds: Sequence[int]) -> Claim:
    claim = "max-pooling localises tumour patches better than attention (FocusMIL)"
    methods = list(cell.methods)
    if not _has_both_families(methods):
        return _unavailable("patch", claim, "the standard cell needs methods of both families")
    got = patch_auc_per_seed(config, results, cell, seeds, methods)
    if isinstance(got, str):
        return _unavailable("patch", claim, got)
    point, boot, what = got
    col = {m: j for j, m in enumerate(methods)}
    readings = []
    for a, b in family_pairs(methods):
        kept, left = fitted_seeds(results, [(cell.name, a), (cell.name, b)], seeds, fit_bar(config))
        if not kept:
            readings.append(_no_seeds(f"{a} vs {b}", left, (a, b)))
            continue
        k = [list(seeds).index(s) for s in kept]
        readings.append(_per_seed_reading(f"{a} vs {b}", point[col[a], k] - point[col[b], k],
                                          boot[:, col[a]][:, k] - boot[:, col[b]][:, k], len(kept), left, (a, b)))
    return _family_claim("patch", claim, f"max-pooling − attention patch AUC (any tumour) of each seed's single "
                         f"models on {what}", readings)


def minet_claim(results: Path, cell: Cell, seeds: Sequence[int], bar: float = DEFAULT_FIT_BAR) -> Claim:
    claim = "mi-Net overfits more than FocusMIL (FocusMIL, 'why mi-Net overfits')"
    if not {"minet", "focusmil"} <= set(cell.methods):
        return _unavailable("minet_gap", claim, "minet_curves.methods must hold minet and focusmil")
    methods = ["minet", "focusmil"]
    kept, left = fitted_seeds(results, [(cell.name, m) for m in methods], seeds, bar)
    if not kept:
        reading = _no_seeds("minet vs focusmil", left, None)
        n_tr = n_va = 0
    else:
        _, ytr, tr = seed_matrix(results, cell, kept, "train", methods)
        _, yva, va = seed_matrix(results, cell, kept, "val", methods)
        w = np.array([1.0, -1.0])  # (train_minet - train_focus) - (val_minet - val_focus)
        reading = _reading("minet vs focusmil", [(ytr, tr), (yva, va)], [w, -w], ["train", "val"], kept, left, None)
        n_tr, n_va = len(ytr), len(yva)
    return Claim("minet_gap", claim, f"mi-Net's (train − validation AUC) − FocusMIL's, each seed's single models at "
                 f"their selected epoch; {n_tr} training and {n_va} validation slides, each paired across the two "
                 "methods", reading.interval, MARGIN, 1, "inconclusive", _rule(1), (reading,))


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


def schedule_readings(results: Path, cell: Cell, seeds: Sequence[int]) -> pd.DataFrame:
    """Overfitting where it happens, per method and seed, over the whole schedule (history.csv, run.json): epochs
    run and the selected one; at the end, the last-epoch model's training AUC (run.json ``final_train_auc``, the
    model in eval mode; the last epoch's running training AUC for runs recorded before it) and validation AUC, and
    their gap; the largest train − validation gap of any epoch (running training AUC); the training and validation
    loss at the end, the validation loss's minimum and its epoch, and how far it rose after it (end − minimum)."""
    rows = []
    for m in cell.methods:
        for s in seeds:
            d = run_dir(results, cell.name, m, s)
            try:
                h = pd.read_csv(d / "history.csv")
                meta = json.loads((d / "run.json").read_text())
            except (OSError, ValueError) as exc:
                raise WsimilError(f"{d}: cannot read history.csv / run.json ({type(exc).__name__})") from exc
            need = [c for c in ("epoch", "train_auc", "val_auc", "val_loss") if c not in h.columns]
            if need or h.empty:
                raise WsimilError(f"{d / 'history.csv'}: no rows or no column(s) {need}")
            loss = "train_bce" if "train_bce" in h.columns else "train_loss"
            last = h.iloc[-1]
            end_train = meta.get("final_train_auc")
            end_train = float(end_train) if isinstance(end_train, (int, float)) else float(last["train_auc"])
            gap = h["train_auc"] - h["val_auc"]
            vmin = int(h["val_loss"].idxmin())
            rows.append({"method": m, "seed": s, "epochs_run": len(h), "selected_epoch": meta.get("best_epoch"),
                         "train_auc_end": end_train, "val_auc_end": float(last["val_auc"]),
                         "gap_end": end_train - float(last["val_auc"]),
                         "gap_max": float(gap.max()) if gap.notna().any() else math.nan,
                         "gap_max_epoch": int(h.loc[gap.idxmax(), "epoch"]) if gap.notna().any() else None,
                         "train_loss_end": float(last[loss]) if loss in h.columns else math.nan,
                         "val_loss_end": float(last["val_loss"]), "val_loss_min": float(h.loc[vmin, "val_loss"]),
                         "val_loss_min_epoch": int(h.loc[vmin, "epoch"]),
                         "val_loss_rise": float(last["val_loss"] - h.loc[vmin, "val_loss"])})
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


def dtfd_ceilings(results: Path, cells: Sequence[Cell], seeds: Sequence[int]) -> pd.DataFrame:
    """The oracle ceiling of the Tier-1 AUC on each run's own test pseudo-bags (:mod:`wsimil.evaluation.ceiling`:
    a pseudo-bag scores 1 when it holds tumour), per pseudo-bag count and seed: columns n_pseudo_bags, seed,
    ceiling (NaN, with ``why``, when the run's pseudo-bag map or the patches' tumour fractions are missing)."""
    from wsimil.evaluation.ceiling import oracle_rows, tier1_ceiling

    rows = []
    for cell in sorted(cells, key=lambda c: c.params["n_pseudo_bags"]):
        manifest = Path(results) / manifest_subpath(cell)
        for s in seeds:
            try:
                ceiling = tier1_ceiling(oracle_rows(run_dir(results, cell.name, cell.methods[0], s),
                                                    lambda slide: feature_path(manifest, slide)))
                why = ""
            except WsimilError as exc:
                ceiling, why = math.nan, str(exc)
            rows.append({"n_pseudo_bags": cell.params["n_pseudo_bags"], "seed": s, "ceiling": ceiling, "why": why})
    return pd.DataFrame(rows, columns=["n_pseudo_bags", "seed", "ceiling", "why"])


def dtfd_claims(results: Path, cells: Sequence[Cell], seeds: Sequence[int], bar: float = DEFAULT_FIT_BAR) -> list[Claim]:
    """Tier 1 falls with more pseudo-bags; Tier 2 does not move (within the margin). Each seed's single model,
    paired on the test slides (a slide's pseudo-bags are resampled with it), seeds x slides."""
    c1 = "more pseudo-bags hurt DTFD's Tier 1 (DTFD-MIL)"
    c2 = "more pseudo-bags leave DTFD's Tier 2 unchanged (DTFD-MIL)"
    if len(cells) < 2:
        return [_unavailable("dtfd_tier1", c1, "dtfd_ablation needs two or more pseudo-bag counts", -1),
                _unavailable("dtfd_tier2", c2, "dtfd_ablation needs two or more pseudo-bag counts")]
    ordered = sorted(cells, key=lambda c: c.params["n_pseudo_bags"])
    lo, hi = ordered[0], ordered[-1]
    m_lo, m_hi = lo.params["n_pseudo_bags"], hi.params["n_pseudo_bags"]
    method = lo.methods[0]
    kept, left = fitted_seeds(results, [(lo.name, method), (hi.name, hi.methods[0])], seeds, bar)
    slides, y, _ = seed_matrix(results, lo, list(seeds)[:1], methods=[method])
    if seed_matrix(results, hi, list(seeds)[:1], methods=[hi.methods[0]])[0] != slides:
        raise WsimilError(f"cells {lo.name} and {hi.name} score different test slides: cannot pair them")
    counts = stratified_counts(y, N_BOOT, np.random.default_rng(BOOT_SEED))
    per = {tier: (np.zeros(len(kept)), np.zeros((N_BOOT, len(kept)))) for tier in ("Tier 1", "Tier 2")}
    for k, s in enumerate(kept):
        t_lo, t_hi = _tier_aucs(results, lo, [s], counts), _tier_aucs(results, hi, [s], counts)
        for tier, (point, boot) in per.items():
            point[k] = t_hi[tier][0] - t_lo[tier][0]
            boot[:, k] = t_hi[tier][1] - t_lo[tier][1]
    out = []
    for key, claim, tier, direction in (("dtfd_tier1", c1, "Tier 1", -1), ("dtfd_tier2", c2, "Tier 2", 0)):
        label = f"{method}, M={m_hi} vs M={m_lo}"
        reading = (_per_seed_reading(label, *per[tier], len(kept), left, None) if kept else
                   _no_seeds(label, left, None))
        what = (f"{'Tier-1 (pseudo-bag)' if tier == 'Tier 1' else 'Tier-2 (slide)'} AUC at M={m_hi} − at M={m_lo}, "
                f"each seed's single model, paired on the {len(slides)} test slides")
        out.append(Claim(key, claim, what, reading.interval, MARGIN, direction or 1, "inconclusive",
                         _rule(direction) if direction else _EQUIVALENCE_RULE, (reading,), equivalence=not direction))
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
    return adjust(out)


def adjust(checked: Sequence[Claim]) -> list[Claim]:
    """Decide every reading of one summary together: its one-sided bootstrap p-values of support and
    contradiction (:func:`wsimil.evaluation.hierarchical.decision_p_values`), the decision p = 2 x the smaller
    (capped at 1), Holm-adjusted over every reading on at least ``MIN_SEEDS`` fitted seeds; a reading is decided
    (the side of the smaller p) when its adjusted p is at most ``ALPHA``. A family claim's verdict then follows
    from its pairs (:func:`wsimil.evaluation.hierarchical.family_verdict`); a claim of one reading takes its."""
    flat: list[tuple[int, int, float]] = []
    updated: list[list[Reading]] = []
    for i, c in enumerate(checked):
        rs = []
        for j, r in enumerate(c.readings):
            ps, pc = decision_p_values(r.draws, c.margin, 0 if c.equivalence else c.direction)
            note = r.note
            if r.seeds < MIN_SEEDS and not note:
                note = f"{r.seeds} fitted seed{'s' if r.seeds != 1 else ''}, fewer than {MIN_SEEDS}: not decided"
            rs.append(replace(r, p_support=ps, p_contradict=pc, note=note))
            if r.seeds >= MIN_SEEDS and math.isfinite(ps) and math.isfinite(pc):
                flat.append((i, j, min(1.0, 2.0 * min(ps, pc))))
        updated.append(rs)
    holm = holm_adjust([p for _, _, p in flat]) if flat else np.zeros(0)
    for (i, j, _), ph in zip(flat, holm):
        r = updated[i][j]
        v = ("supported" if r.p_support <= r.p_contradict else "contradicted") if ph <= ALPHA else "inconclusive"
        updated[i][j] = replace(r, p_holm=float(ph), verdict=v)
    out = []
    for c, rs in zip(checked, updated):
        if not rs:
            out.append(c)
        elif c.is_family:
            v, why = family_verdict({r.pair: r.verdict for r in rs})
            out.append(replace(c, readings=tuple(rs), verdict=v, why=why))
        else:
            out.append(replace(c, readings=tuple(rs), verdict=rs[0].verdict, why=rs[0].note))
    return out


# ------------------------------------------------------------------------------------------------ runs


def convergence(results: Path, cells: Sequence[Cell], seeds: Sequence[int],
                bar: float = DEFAULT_FIT_BAR) -> pd.DataFrame:
    """Per cell, judged on the runs' loss trajectories and selection (run.json): runs; optimiser steps and epochs
    run (min, max); runs whose training loss was still falling at the end (``loss_plateaued`` false with at least
    2 x PLATEAU_WINDOW epochs) and runs too short to tell; the cell is flagged ``not_converged`` when more than
    ``NOT_CONVERGED_SHARE`` of its runs were still falling or too short to tell. Beside them: runs that selected
    their last epoch, runs whose selected validation AUC another epoch tied, runs whose selection was blind (the
    validation AUC sat at its ceiling 1.0 over several epochs), and undertrained runs (the fit gate, ``bar``)."""
    from wsimil.training.loop import PLATEAU_WINDOW

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
        epochs = [int(x["epochs_run"]) for x in metas if x.get("epochs_run") is not None]
        short = sum(int(x.get("epochs_run") or 0) < 2 * PLATEAU_WINDOW for x in metas)
        falling = sum(int(x.get("epochs_run") or 0) >= 2 * PLATEAU_WINDOW and not x.get("loss_plateaued", True)
                      for x in metas)
        auc = [x.get("final_train_auc") for x in metas]
        under = sum(isinstance(a, (int, float)) and math.isfinite(a) and a < bar for a in auc)
        rows.append({"cell": c.name, "runs": len(metas), "steps_min": min(steps) if steps else None,
                     "steps_max": max(steps) if steps else None, "epochs_min": min(epochs) if epochs else None,
                     "epochs_max": max(epochs) if epochs else None, "loss_still_falling": falling,
                     "too_short_to_tell": short, "selected_last_epoch": sum(bool(x.get("selected_last_epoch")) for x in metas),
                     "selected_tied_val_auc": sum(int(x.get("val_auc_ties") or 0) > 0 for x in metas),
                     "selection_blind": sum(bool(x.get("selection_blind")) for x in metas), "undertrained": under,
                     "not_converged": falling + short > NOT_CONVERGED_SHARE * len(metas)})
    return pd.DataFrame(rows)
