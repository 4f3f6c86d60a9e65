"""Robustness cards' readings of the patch AUC and the FROC from hand-made bootstrap draws (no Snakemake; the
workflow test checks a real card against the tables)."""

import math

import numpy as np
import pytest

from wsimil.reporting import cards
from wsimil.reporting.evidence import MARGIN


def _draws(centres, spread=0.01, n=2000):
    rng = np.random.default_rng(0)
    centres = np.asarray(centres, dtype=float)
    return centres, centres + rng.uniform(-spread, spread, size=(n, len(centres))), "hand-made"


METHODS = ["maxpool", "abmil", "mine"]


@pytest.mark.parametrize("centres, want", [
    ([0.80, 0.60, 0.90], {"abmil": ("above chance", "worse"), "mine": ("above chance", "better")}),
    ([0.52, 0.50, 0.53], {"abmil": ("inconclusive", "inconclusive"), "mine": ("inconclusive", "inconclusive")}),
    ([0.80, 0.30, 0.80], {"abmil": ("below chance", "worse"), "mine": ("above chance", "inconclusive")}),
])
def test_patch_auc_reads_against_chance_and_the_reference(centres, want):
    draws = _draws(centres)
    for m, (chance, versus) in want.items():
        value, diff = cards._localisation_rows(*cards.ROWS[6:8], draws, METHODS, m)
        assert value["reading"] == chance and diff["reading"] == versus, (m, value, diff)
        j = METHODS.index(m)
        assert value["value"] == centres[j]
        assert diff["value"] == pytest.approx(centres[j] - centres[0])
        assert diff["ci_low"] <= diff["value"] <= diff["ci_high"]
    value, diff = cards._localisation_rows(*cards.ROWS[6:8], draws, METHODS, "maxpool")
    assert diff["reading"] == "the reference" and math.isnan(diff["value"])


def test_a_difference_exactly_on_the_margin_is_inconclusive():
    point = np.array([0.0, MARGIN])  # a FROC of 0 for the reference: the difference is MARGIN exactly
    boot = np.tile(point, (2000, 1))
    _, diff = cards._localisation_rows(*cards.ROWS[8:10], (point, boot, ""), ["maxpool", "mine"], "mine")
    assert diff["ci_low"] == pytest.approx(MARGIN) and diff["reading"] == "inconclusive"


def test_undefined_resamples_give_the_value_without_an_interval():
    point, boot, _ = _draws([0.4, 0.6])
    boot[:7, 0] = np.nan  # 7 resamples held no non-ITC lesion
    value, diff = cards._localisation_rows(*cards.ROWS[8:10], (point, boot, ""), ["maxpool", "mine"], "mine")
    assert value["value"] == 0.6 and value["reading"] == ""  # this method's own draws are all defined
    assert diff["value"] == pytest.approx(0.2) and math.isnan(diff["ci_low"])
    assert diff["reading"] == "no interval: 7 of 2000 resamples had no non-ITC lesion"
    assert cards._fmt(diff["value"], diff["ci_low"], diff["ci_high"], signed=True) == "+0.200 [no interval]"


def test_missing_inputs_and_a_missing_reference_are_named():
    value, diff = cards._localisation_rows(*cards.ROWS[6:8], "fewer than two test tumour slides have patch labels",
                                           METHODS, "mine")
    assert value["reading"] == "not available: fewer than two test tumour slides have patch labels"
    assert math.isnan(value["value"]) and diff["reading"] == "not available"
    _, diff = cards._localisation_rows(*cards.ROWS[6:8], _draws([0.8, 0.9]), ["abmil", "mine"], "mine")
    assert diff["reading"] == "not run: maxpool is not in the standard cell"
