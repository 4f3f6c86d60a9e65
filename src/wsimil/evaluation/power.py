"""A priori power of a test split: how precise its AUCs and paired AUC differences can be.

Uses only the slide counts of the split and assumed AUCs / correlations; no method's result.

- :func:`hanley_mcneil_se`: the Hanley & McNeil (1982) standard error of an AUC,
  ``Q1 = A / (2 - A)``, ``Q2 = 2 A^2 / (1 + A)``,
  ``SE^2 = (A(1-A) + (n_pos-1)(Q1-A^2) + (n_neg-1)(Q2-A^2)) / (n_pos n_neg)``.
- :func:`difference_se`: two AUCs of the same slides with correlated estimates (correlation r)
  and equal SE: ``SE_diff = sqrt(2 SE^2 (1 - r))``.
- :func:`min_detectable_difference`: the true difference whose paired interval's lower bound
  exceeds ``margin`` with probability ``power``: ``margin + (z_{1-alpha/2} + z_power) SE_diff``.

``python -m wsimil.evaluation.power --config config.yaml`` prints the table for the config's
test split (``synthetic.slides.test``) and the AUC resolution of its validation split.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd
from scipy.stats import norm

__all__ = [
    "auc_ci_width",
    "difference_se",
    "hanley_mcneil_se",
    "main",
    "min_detectable_difference",
    "power_table",
    "split_counts",
]


def _check(auc: float, n_pos: int, n_neg: int) -> None:
    if not (0.0 <= auc <= 1.0):
        raise ValueError(f"auc must be in [0, 1], got {auc}")
    if n_pos < 1 or n_neg < 1:
        raise ValueError(f"need at least one slide of each class, got n_pos={n_pos}, n_neg={n_neg}")


def _z(level: float) -> float:
    if not (0.0 < level < 1.0):
        raise ValueError(f"level must be in (0, 1), got {level}")
    return float(norm.ppf(1.0 - (1.0 - level) / 2.0))


def hanley_mcneil_se(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUC ``auc`` on n_pos tumour, n_neg normal slides."""
    _check(auc, n_pos, n_neg)
    a = float(auc)
    q1 = a / (2.0 - a)
    q2 = 2.0 * a * a / (1.0 + a)
    var = (a * (1.0 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    return math.sqrt(max(var, 0.0))


def auc_ci_width(auc: float, n_pos: int, n_neg: int, level: float = 0.95) -> float:
    """Width ``2 z SE`` of the normal-approximation interval of an AUC at ``level``."""
    return 2.0 * _z(level) * hanley_mcneil_se(auc, n_pos, n_neg)


def difference_se(auc: float, n_pos: int, n_neg: int, correlation: float) -> float:
    """SE ``sqrt(2 SE^2 (1 - r))`` of the difference of two AUCs (both ~``auc``) of the same slides."""
    if not (-1.0 <= correlation <= 1.0):
        raise ValueError(f"correlation must be in [-1, 1], got {correlation}")
    se = hanley_mcneil_se(auc, n_pos, n_neg)
    return math.sqrt(2.0 * se * se * (1.0 - correlation))


def min_detectable_difference(
    auc: float,
    n_pos: int,
    n_neg: int,
    correlation: float,
    margin: float = 0.0,
    level: float = 0.95,
    power: float = 0.8,
) -> float:
    """True AUC difference whose paired interval's low bound exceeds ``margin`` with ``power``:
    ``margin + (z_{1-alpha/2} + z_power) * SE_diff``."""
    if not (0.0 < power < 1.0):
        raise ValueError(f"power must be in (0, 1), got {power}")
    z_power = float(norm.ppf(power))
    return margin + (_z(level) + z_power) * difference_se(auc, n_pos, n_neg, correlation)


def power_table(
    n_pos: int,
    n_neg: int,
    aucs: Sequence[float] = (0.6, 0.7, 0.8, 0.9),
    correlations: Sequence[float] = (0.3, 0.5, 0.7),
    margin: float = 0.05,
) -> pd.DataFrame:
    """One row per (auc, correlation): ``auc, correlation, ci_width, se_difference,
    min_detectable_difference`` (95% intervals, 80% power, the given margin)."""
    rows = [
        {
            "auc": a,
            "correlation": r,
            "ci_width": auc_ci_width(a, n_pos, n_neg),
            "se_difference": difference_se(a, n_pos, n_neg, r),
            "min_detectable_difference": min_detectable_difference(a, n_pos, n_neg, r, margin),
        }
        for a in aucs
        for r in correlations
    ]
    return pd.DataFrame(rows)


def split_counts(slides: Mapping, split: str) -> tuple[int, int]:
    """``(n_pos, n_neg)`` = (tumour, normal) of ``slides[split]`` (the ``synthetic.slides`` section)."""
    if split not in slides:
        raise ValueError(f"synthetic.slides has no {split!r} split (has {sorted(slides)})")
    counts = slides[split]
    try:
        return int(counts["tumour"]), int(counts["normal"])
    except (KeyError, TypeError) as err:
        raise ValueError(
            f"synthetic.slides.{split} must be {{normal: int, tumour: int}}, got {counts!r}"
        ) from err


def main(argv: Sequence[str] | None = None) -> int:
    """Print the test split's power table and the validation split's AUC resolution."""
    import yaml

    ap = argparse.ArgumentParser(prog="python -m wsimil.evaluation.power", description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, default=Path("config.yaml"), help="workflow config YAML")
    ap.add_argument("--margin", type=float, default=0.05, help="margin of the verdicts (default 0.05)")
    args = ap.parse_args(argv)

    cfg = yaml.safe_load(args.config.read_text()) or {}
    slides = (cfg.get("synthetic") or {}).get("slides")
    if not slides:
        ap.error(f"{args.config} has no synthetic.slides section")
    n_pos, n_neg = split_counts(slides, "test")
    print(f"Test split: {n_pos} tumour + {n_neg} normal = {n_pos + n_neg} slides "
          f"(95% intervals, 80% power, margin {args.margin})\n")
    print(power_table(n_pos, n_neg, margin=args.margin).to_markdown(index=False, floatfmt=".3f"))
    if "val" in slides:
        v_pos, v_neg = split_counts(slides, "val")
        pairs = v_pos * v_neg
        if pairs:
            print(f"\nValidation split: {v_pos} tumour + {v_neg} normal: {pairs + 1} possible AUC "
                  f"values (resolution 1/{pairs} = {1.0 / pairs:.4f})")
        else:
            print("\nValidation split: one class is empty, its AUC is undefined")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
