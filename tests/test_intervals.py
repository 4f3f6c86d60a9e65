"""Bootstrap intervals of slide AUCs and paired contrasts (wsimil.evaluation.intervals)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from wsimil.evaluation.intervals import (
    Interval,
    auc_interval,
    bootstrap_aucs,
    contrast_interval,
    paired_difference,
    seed_averaged,
    stratified_counts,
    verdict,
)


def _data(n_pos=30, n_neg=40, k=3, seed=1, ties=True):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    rng.shuffle(labels)
    scores = rng.normal(size=(len(labels), k)) + 0.8 * labels[:, None]
    if ties:
        scores = np.round(scores, 1)  # many ties, within and across classes
    return labels, scores


def _delong_se(labels, score):
    pos, neg = score[labels == 1], score[labels == 0]
    c = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = c.mean(axis=1), c.mean(axis=0)
    return math.sqrt(v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg))


# ------------------------------------------------------------------ AUCs and resamples


def test_point_aucs_equal_sklearn_with_ties():
    labels, scores = _data(k=4)
    assert len(np.unique(scores[:, 0])) < len(scores)  # there are ties
    point, boot = bootstrap_aucs(labels, scores, n_boot=50, seed=0)
    assert point.shape == (4,) and boot.shape == (50, 4)
    for c in range(4):
        assert point[c] == pytest.approx(roc_auc_score(labels, scores[:, c]), abs=1e-12)


def test_vectorised_resample_auc_equals_sklearn_on_expanded_resample():
    labels, scores = _data(n_pos=12, n_neg=17, k=2, seed=3)
    n_boot, seed = 6, 11
    _, boot = bootstrap_aucs(labels, scores, n_boot=n_boot, seed=seed)
    # bootstrap_aucs draws its counts from default_rng(seed) with stratified_counts
    counts = stratified_counts(labels, n_boot, np.random.default_rng(seed))
    for b in range(n_boot):
        lab_b = np.repeat(labels, counts[b])
        for c in range(2):
            sc_b = np.repeat(scores[:, c], counts[b])
            assert boot[b, c] == pytest.approx(roc_auc_score(lab_b, sc_b), abs=1e-12)


def test_stratified_counts_keep_class_counts():
    labels, _ = _data(n_pos=7, n_neg=23)
    counts = stratified_counts(labels, 500, np.random.default_rng(0))
    assert counts.shape == (500, 30)
    assert (counts >= 0).all()
    np.testing.assert_array_equal(counts[:, labels == 1].sum(axis=1), 7)
    np.testing.assert_array_equal(counts[:, labels == 0].sum(axis=1), 23)
    # the draws do vary: not every resample is the original sample
    assert (counts != 1).any(axis=1).mean() > 0.99


def test_perfect_separation_gives_exactly_one():
    labels = np.r_[np.ones(10, int), np.zeros(15, int)]
    scores = np.r_[np.linspace(2, 3, 10), np.linspace(0, 1, 15)]
    iv = auc_interval(labels, scores, n_boot=300, seed=0)
    assert (iv.estimate, iv.low, iv.high) == (1.0, 1.0, 1.0)
    assert iv.n_boot == 300 and iv.level == 0.95


def test_paired_difference_of_identical_scores_is_exactly_zero():
    labels, scores = _data(k=1)
    iv = paired_difference(labels, scores[:, 0], scores[:, 0].copy(), n_boot=300, seed=0)
    assert (iv.estimate, iv.low, iv.high, iv.width) == (0.0, 0.0, 0.0, 0.0)


def test_one_positive_bootstrap_is_binomial():
    # one positive, n negatives: a resample always holds the positive once, so its AUC is the
    # fraction of the n drawn negatives below the positive: Binomial(n, p) / n
    n, n_below = 20, 14
    p = n_below / n
    labels = np.r_[1, np.zeros(n, int)]
    scores = np.r_[0.5, np.r_[np.linspace(0, 0.4, n_below), np.linspace(0.6, 1, n - n_below)]]
    point, boot = bootstrap_aucs(labels, scores, n_boot=20000, seed=0)
    assert point[0] == pytest.approx(p)
    assert boot.mean() == pytest.approx(p, abs=0.003)
    assert boot.var() == pytest.approx(p * (1 - p) / n, rel=0.05)
    # and its values are on the grid k / n
    np.testing.assert_allclose(boot * n, np.round(boot * n), atol=1e-9)


def test_bootstrap_se_close_to_delong():
    labels, scores = _data(n_pos=120, n_neg=150, k=1, seed=5, ties=False)
    _, boot = bootstrap_aucs(labels, scores, n_boot=3000, seed=0)
    se_boot = boot[:, 0].std(ddof=1)
    se_delong = _delong_se(labels, scores[:, 0])
    assert se_boot == pytest.approx(se_delong, rel=0.15)


# ------------------------------------------------------------------ contrasts


def test_shared_pair_key_narrower_than_independent():
    rng = np.random.default_rng(2)
    labels = np.r_[np.ones(40, int), np.zeros(50, int)]
    base = rng.normal(size=90) + 1.0 * labels
    a = base + 0.1 * rng.normal(size=90)
    b = base + 0.1 * rng.normal(size=90) + 0.2 * labels
    groups = [(labels, a[:, None]), (labels, b[:, None])]
    weights = [np.array([-1.0]), np.array([1.0])]
    paired = contrast_interval(groups, weights, n_boot=1000, seed=0, pair_keys=["test", "test"])
    unpaired = contrast_interval(groups, weights, n_boot=1000, seed=0, pair_keys=["x", "y"])
    default = contrast_interval(groups, weights, n_boot=1000, seed=0)  # default: independent
    assert paired.estimate == pytest.approx(roc_auc_score(labels, b) - roc_auc_score(labels, a))
    assert paired.estimate == unpaired.estimate
    assert paired.width < 0.5 * unpaired.width
    assert default == unpaired
    # a shared key on one group with two columns is the same as paired_difference
    pd_iv = paired_difference(labels, a, b, n_boot=1000, seed=0)
    assert pd_iv.low == pytest.approx(paired.low) and pd_iv.high == pytest.approx(paired.high)


def test_contrast_single_group_equals_auc_interval_and_family_weights():
    labels, scores = _data(k=4)
    iv = auc_interval(labels, scores[:, 2], n_boot=400, seed=7)
    one = contrast_interval([(labels, scores[:, [2]])], [np.array([1.0])], n_boot=400, seed=7)
    assert iv == one
    # family difference: mean of columns 0, 1 minus mean of columns 2, 3
    w = np.array([0.5, 0.5, -0.5, -0.5])
    fam = contrast_interval([(labels, scores)], [w], n_boot=400, seed=7)
    point, boot = bootstrap_aucs(labels, scores, n_boot=400, seed=7)
    assert fam.estimate == pytest.approx(point @ w)
    lo, hi = np.quantile(boot @ w, [0.025, 0.975])
    assert (fam.low, fam.high) == (pytest.approx(lo), pytest.approx(hi))


def test_shared_key_requires_same_labels():
    labels, scores = _data(k=1)
    other = np.roll(labels, 1)
    assert not np.array_equal(other, labels)
    with pytest.raises(ValueError, match="share pair key 'k' but their labels differ"):
        contrast_interval(
            [(labels, scores), (other, scores)], [np.ones(1), -np.ones(1)], pair_keys=["k", "k"]
        )


def test_seed_determinism():
    labels, scores = _data(k=2)
    a = paired_difference(labels, scores[:, 0], scores[:, 1], n_boot=500, seed=3)
    b = paired_difference(labels, scores[:, 0], scores[:, 1], n_boot=500, seed=3)
    c = paired_difference(labels, scores[:, 0], scores[:, 1], n_boot=500, seed=4)
    assert a == b
    assert c.estimate == a.estimate
    assert (c.low, c.high) != (a.low, a.high)
    p1, b1 = bootstrap_aucs(labels, scores, n_boot=100, seed=9)
    p2, b2 = bootstrap_aucs(labels, scores, n_boot=100, seed=9)
    np.testing.assert_array_equal(b1, b2)


# ------------------------------------------------------------------ Interval and verdict


def test_interval_str_width_and_nan():
    iv = Interval(0.8123, 0.7306, 0.88)
    assert str(iv) == "0.812 [0.731, 0.880]"
    assert iv.width == pytest.approx(0.1494)
    nan = Interval(math.nan, math.nan, math.nan)
    assert str(nan) == "n/a"
    assert math.isnan(nan.width)
    assert str(Interval(0.5, math.nan, math.nan)) == "0.500 [n/a, n/a]"


@pytest.mark.parametrize(
    ("low", "high", "margin", "direction", "expected"),
    [
        (0.08, 0.20, 0.05, +1, "supported"),
        (-0.20, -0.08, 0.05, +1, "contradicted"),
        (-0.02, 0.20, 0.05, +1, "inconclusive"),
        (0.03, 0.20, 0.05, +1, "inconclusive"),  # above 0 but not beyond the margin
        (-0.20, -0.08, 0.05, -1, "supported"),  # the claim is a decrease
        (0.08, 0.20, 0.05, -1, "contradicted"),
        (-0.20, 0.01, 0.05, -1, "inconclusive"),
        (0.05, 0.20, 0.05, +1, "inconclusive"),  # low exactly == margin
        (-0.20, -0.05, 0.05, +1, "inconclusive"),  # high exactly == -margin
        (-0.20, -0.05, 0.05, -1, "inconclusive"),  # flipped: low of d exactly == margin
        (0.001, 0.02, 0.0, +1, "supported"),
        (0.0, 0.02, 0.0, +1, "inconclusive"),
    ],
)
def test_verdict(low, high, margin, direction, expected):
    iv = Interval((low + high) / 2, low, high)
    assert verdict(iv, margin, direction) == expected


def test_verdict_nan_and_bad_arguments():
    assert verdict(Interval(math.nan, math.nan, math.nan), 0.05) == "inconclusive"
    assert verdict(Interval(0.1, 0.08, math.nan), 0.05) == "inconclusive"
    with pytest.raises(ValueError, match="direction"):
        verdict(Interval(0.1, 0.08, 0.12), 0.05, direction=2)
    with pytest.raises(ValueError, match="margin must be >= 0"):
        verdict(Interval(0.1, 0.08, 0.12), -0.05)


# ------------------------------------------------------------------ input validation


def test_bad_inputs_say_what_is_wrong():
    labels, scores = _data(k=1)
    with pytest.raises(ValueError, match="both classes.*all 5 slides are tumour"):
        auc_interval(np.ones(5, int), np.arange(5.0))
    with pytest.raises(ValueError, match="both classes.*normal"):
        bootstrap_aucs(np.zeros(5, int), np.arange(5.0))
    bad = scores[:, 0].copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="finite.*row 3"):
        auc_interval(labels, bad)
    with pytest.raises(ValueError, match=f"{len(labels)} labels but {len(labels) - 1} score rows"):
        bootstrap_aucs(labels, scores[:-1])
    with pytest.raises(ValueError, match="0 \\(normal\\) or 1 \\(tumour\\).*2"):
        auc_interval(np.r_[labels[:-1], 2], scores[:, 0])
    with pytest.raises(ValueError, match="scores_a has"):
        paired_difference(labels, scores[:, 0], scores[:-1, 0])
    with pytest.raises(ValueError, match="group 0: 1 score columns but 2 weights"):
        contrast_interval([(labels, scores)], [np.ones(2)])


# ------------------------------------------------------------------ seed_averaged


def _long(rows):
    return pd.DataFrame(rows, columns=["slide_id", "label", "method", "seed", "score"])


def test_seed_averaged_values():
    rows = [
        ("s1", 1, "maxpool", 0, 0.9),
        ("s1", 1, "maxpool", 1, 0.7),
        ("s2", 0, "maxpool", 0, 0.2),
        ("s2", 0, "maxpool", 1, 0.4),
        ("s1", 1, "abmil", 0, 0.6),
        ("s1", 1, "abmil", 1, 0.5),
        ("s1", 1, "abmil", 2, 0.1),
        ("s2", 0, "abmil", 0, 0.3),
        ("s2", 0, "abmil", 1, 0.3),
        ("s2", 0, "abmil", 2, 0.6),
    ]
    df = _long(rows)
    df["split"] = "test"  # extra columns are ignored
    wide = seed_averaged(df.iloc[::-1])
    assert list(wide.columns) == ["label", "abmil", "maxpool"]  # order of appearance (reversed)
    assert list(wide.index) == ["s1", "s2"] and wide.index.name == "slide_id"
    assert wide["label"].tolist() == [1, 0]
    np.testing.assert_allclose(wide["maxpool"], [0.8, 0.3])
    np.testing.assert_allclose(wide["abmil"], [0.4, 0.4])


def test_seed_averaged_errors():
    base = [
        ("s1", 1, "maxpool", 0, 0.9),
        ("s2", 0, "maxpool", 0, 0.2),
        ("s1", 1, "abmil", 0, 0.6),
        ("s2", 0, "abmil", 0, 0.3),
    ]
    label_clash = _long(base + [("s2", 1, "abmil", 1, 0.5), ("s1", 1, "abmil", 1, 0.5)])
    with pytest.raises(ValueError, match="method 'abmil'.*seeds disagree.*slide 's2'"):
        seed_averaged(label_clash)
    missing = _long(base + [("s3", 0, "maxpool", 0, 0.1)])
    with pytest.raises(ValueError, match="method 'abmil' lacks slide 's3'"):
        seed_averaged(missing)


def test_cluster_aucs_equal_sklearn_on_the_replicated_rows():
    from sklearn.metrics import roc_auc_score

    from wsimil.evaluation.intervals import cluster_auc_matrix, cluster_aucs

    rng = np.random.default_rng(7)
    k = 6
    cluster = rng.integers(0, k, 200)
    labels = (rng.random(200) < 0.3).astype(int)
    scores = np.round(labels + rng.normal(0, 1, 200), 1)  # rounding makes ties
    mat = cluster_auc_matrix(labels, cluster, scores, k)
    assert cluster_aucs(*mat, np.ones(k))[0] == pytest.approx(roc_auc_score(labels, scores))
    counts = np.array([[2, 0, 1, 3, 0, 0], [0, 0, 0, 0, 0, 6]])
    got = cluster_aucs(*mat, counts)
    idx = np.concatenate([np.flatnonzero(cluster == c) for c in range(k) for _ in range(counts[0, c])])
    assert got[0] == pytest.approx(roc_auc_score(labels[idx], scores[idx]))
    only = labels[cluster == 5]
    assert (np.isnan(got[1]) if only.all() or not only.any()
            else got[1] == pytest.approx(roc_auc_score(only, scores[cluster == 5])))
    with pytest.raises(ValueError, match="cluster indices"):
        cluster_auc_matrix(labels, cluster + 1, scores, k)
    with pytest.raises(ValueError, match="finite"):
        cluster_auc_matrix(labels, cluster, np.where(labels, np.nan, 0.0), k)
