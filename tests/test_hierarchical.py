"""Intervals over seeds and slides, Holm's adjustment and the family verdict (wsimil.evaluation.hierarchical):
coverage on a simulated case whose seed and slide variance are known, hand-computed values, every outcome of the
family rule."""

import math

import numpy as np
import pytest
from scipy.stats import norm

from wsimil.evaluation.hierarchical import bootstrap_p_value, family_verdict, holm_adjust, seed_slide_interval
from wsimil.evaluation.intervals import _aucs_on_counts, stratified_counts


def _simulate(rng, n_per_class, n_seeds, delta0, tau, sigma):
    """One reproduction: fresh test slides (latent x ~ N(0, 1), shifted by a run's separation delta_s ~ N(delta0,
    tau^2) on tumour slides) and fresh training seeds (each run adds its own N(0, sigma^2) noise per slide)."""
    y = np.r_[np.zeros(n_per_class), np.ones(n_per_class)].astype(int)
    x = rng.normal(size=y.size)
    deltas = rng.normal(delta0, tau, size=n_seeds)
    scores = x[None, :] + deltas[:, None] * y[None, :] + sigma * rng.normal(size=(n_seeds, y.size))
    return y, scores


def test_the_seed_and_slide_interval_covers_a_known_truth_where_slides_alone_do_not():
    """The quantity: the expected AUC of one trained model on a fresh slide set, Phi(delta0 / sqrt(2 (1 + sigma^2)
    + tau^2)) in closed form. 300 reproductions of 5 seeds x 60 slides: the two-stage interval covers it at
    close to 95 %; resampling the slides alone (the seeds fixed) misses the training randomness and covers less."""
    delta0, tau, sigma, seeds, n = 1.0, 0.6, 0.5, 5, 30
    truth = norm.cdf(delta0 / math.sqrt(2 * (1 + sigma**2) + tau**2))
    rng = np.random.default_rng(7)
    both = slides = 0
    reps = 300
    for r in range(reps):
        y, scores = _simulate(rng, n, seeds, delta0, tau, sigma)
        iv = seed_slide_interval([(y, scores)], [np.ones(1)], n_boot=400, seed=r)
        both += iv.low <= truth <= iv.high
        counts = stratified_counts(y, 400, np.random.default_rng(r))
        draws = np.mean([_aucs_on_counts(y, scores[s][:, None], counts)[1][:, 0] for s in range(seeds)], axis=0)
        low, high = np.quantile(draws, [0.025, 0.975])
        slides += low <= truth <= high
    # the numbers hierarchical.py's docstring quotes (0.92 and 0.83), and the gap between them
    assert abs(both / reps - 0.92) <= 0.02 and abs(slides / reps - 0.83) <= 0.02, (both / reps, slides / reps)
    assert slides / reps <= both / reps - 0.05, (slides / reps, both / reps)


def test_the_point_estimate_is_the_mean_of_the_seeds_contrasts_and_one_seed_gives_the_slide_interval():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(20), np.ones(20)].astype(int)
    a, b = rng.normal(size=(3, 40)) + y, rng.normal(size=(3, 40)) + 0.5 * y
    iv = seed_slide_interval([(y, np.stack([a, b], axis=2))], [np.array([1.0, -1.0])], n_boot=200)
    per_seed = [_aucs_on_counts(y, np.stack([a[s], b[s]], axis=1), None)[0] @ [1, -1] for s in range(3)]
    assert iv.estimate == pytest.approx(np.mean(per_seed))
    assert iv.low < iv.estimate < iv.high
    # with one seed, stage 1 has nothing to draw: the interval is the slide bootstrap of that seed's contrast
    from wsimil.evaluation.intervals import contrast_interval

    one = seed_slide_interval([(y, np.stack([a[:1], b[:1]], axis=2))], [np.array([1.0, -1.0])], n_boot=200, seed=3)
    assert one.estimate == pytest.approx(per_seed[0])
    # the same slides in two groups with one key share their resamples: a set against itself has zero width
    same = seed_slide_interval([(y, a[:, :, None]), (y, a[:, :, None])], [np.ones(1), -np.ones(1)], n_boot=200,
                               pair_keys=["t", "t"])
    assert same.estimate == 0 and same.low == same.high == 0
    with pytest.raises(ValueError, match="group 1: 2 seeds, group 0 has 3"):
        seed_slide_interval([(y, a[:, :, None]), (y, a[:2, :, None])], [np.ones(1), np.ones(1)], n_boot=10)
    assert contrast_interval  # imported for the single-seed reading above


def test_holm_adjusts_as_computed_by_hand_and_keeps_unchecked_claims_out():
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    out = holm_adjust([0.02, float("nan"), 0.5])
    assert out[0] == pytest.approx(0.04) and math.isnan(out[1]) and out[2] == pytest.approx(0.5)
    assert holm_adjust([0.6, 0.7]) == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError, match="must lie in"):
        holm_adjust([1.5])


def test_the_bootstrap_p_value_counts_replicates_on_the_wrong_side_of_the_margin():
    draws = np.array([0.1, 0.2, 0.04, 0.3])
    assert bootstrap_p_value(draws, 0.05) == pytest.approx((1 + 1) / 5)
    assert bootstrap_p_value(-draws, 0.05, direction=-1) == pytest.approx(2 / 5)
    assert bootstrap_p_value(np.full(99, 0.2), 0.05) == pytest.approx(0.01)


@pytest.mark.parametrize("pairs, expected, why", [
    ({("maxpool", "abmil"): "supported", ("maxpool", "dsmil"): "supported", ("focusmil", "abmil"): "supported",
      ("focusmil", "dsmil"): "supported"}, "supported", "with any one method left out"),
    ({("maxpool", "abmil"): "supported", ("maxpool", "dsmil"): "supported"}, "supported",
     "(maxpool alone on its side"),
    ({("maxpool", "abmil"): "inconclusive", ("maxpool", "dsmil"): "supported"}, "inconclusive", "only with dsmil"),
    ({("maxpool", "abmil"): "supported", ("maxpool", "dsmil"): "contradicted"}, "inconclusive", "pairs disagree"),
    ({("maxpool", "abmil"): "contradicted", ("focusmil", "abmil"): "contradicted"}, "contradicted",
     "(abmil alone on its side: the claim is about it)"),
    ({("maxpool", "abmil"): "contradicted", ("focusmil", "dsmil"): "contradicted"}, "contradicted", "left out"),
    ({("maxpool", "abmil"): "contradicted", ("focusmil", "dsmil"): "inconclusive"}, "inconclusive",
     "only with abmil"),
    ({("maxpool", "abmil"): "contradicted", ("maxpool", "dsmil"): "contradicted"}, "contradicted", "left out"),
    ({("maxpool", "abmil"): "inconclusive"}, "inconclusive", "no pair decided"),
    ({}, "inconclusive", "no pair"),
])
def test_the_family_verdict_for_each_outcome(pairs, expected, why):
    verdict, reason = family_verdict(pairs)
    assert verdict == expected and why in reason, (verdict, reason)
