"""A priori power of the test split (wsimil.evaluation.power) and the default config's counts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from wsimil.evaluation.power import (
    auc_ci_width,
    difference_se,
    hanley_mcneil_se,
    main,
    min_detectable_difference,
    power_table,
    split_counts,
)

CONFIG = Path(__file__).parents[1] / "config.yaml"


def test_hanley_mcneil_hand_value():
    # A = 0.75: Q1 = 0.6, Q2 = 9/14; SE^2 = (0.1875 + 47*0.0375 + 59*(9/14 - 0.5625)) / 2880
    #         = 1249/537600, SE = 0.0482005
    assert hanley_mcneil_se(0.75, 48, 60) == pytest.approx(math.sqrt(1249 / 537600), rel=1e-12)
    assert hanley_mcneil_se(0.75, 48, 60) == pytest.approx(0.0482, abs=1e-4)


def test_hanley_mcneil_at_half_is_mann_whitney_null():
    # A = 0.5: Q1 = Q2 = 1/3, so SE^2 = (n_pos + n_neg + 1) / (12 n_pos n_neg)
    for n_pos, n_neg in [(48, 60), (12, 12), (5, 40)]:
        expected = math.sqrt((n_pos + n_neg + 1) / (12 * n_pos * n_neg))
        assert hanley_mcneil_se(0.5, n_pos, n_neg) == pytest.approx(expected, rel=1e-12)
    assert hanley_mcneil_se(1.0, 48, 60) == 0.0


def test_width_difference_and_detectable_difference():
    se = hanley_mcneil_se(0.7, 48, 60)
    assert auc_ci_width(0.7, 48, 60) == pytest.approx(2 * 1.959964 * se, rel=1e-6)
    assert difference_se(0.7, 48, 60, 0.5) == pytest.approx(se, rel=1e-12)  # sqrt(2 se^2 0.5)
    assert difference_se(0.7, 48, 60, 1.0) == 0.0
    sd = difference_se(0.7, 48, 60, 0.3)
    assert min_detectable_difference(0.7, 48, 60, 0.3, margin=0.05) == pytest.approx(
        0.05 + (1.959964 + 0.841621) * sd, rel=1e-6
    )
    with pytest.raises(ValueError, match="correlation"):
        difference_se(0.7, 48, 60, 1.5)


def test_power_table_shape():
    table = power_table(48, 60)
    assert list(table.columns) == [
        "auc", "correlation", "ci_width", "se_difference", "min_detectable_difference"
    ]
    assert len(table) == 12
    # more correlation, smaller detectable difference; higher AUC, narrower interval
    row = table.set_index(["auc", "correlation"])
    assert row.loc[(0.7, 0.7), "min_detectable_difference"] < row.loc[(0.7, 0.3), "min_detectable_difference"]
    assert row.loc[(0.9, 0.5), "ci_width"] < row.loc[(0.6, 0.5), "ci_width"]


def check_power(slides: dict) -> None:
    """The requirement on ``synthetic.slides``: enough test and validation slides."""
    n_pos, n_neg = split_counts(slides, "test")
    assert n_pos + n_neg >= 100, f"test split has {n_pos + n_neg} slides, needs >= 100"
    assert n_pos >= 40, f"test split has {n_pos} tumour slides, needs >= 40"
    v_pos, v_neg = split_counts(slides, "val")
    assert v_pos + v_neg >= 20, f"validation split has {v_pos + v_neg} slides, needs >= 20"
    assert v_pos > 0 and v_neg > 0, "validation split needs both classes"
    for auc in (0.6, 0.75):
        width = auc_ci_width(auc, n_pos, n_neg)
        assert width <= 0.25, f"95% CI width at AUC {auc} is {width:.3f} > 0.25"


def test_check_power_on_planned_counts_and_rejects_small():
    check_power({
        "train": {"normal": 36, "tumour": 24},
        "val": {"normal": 12, "tumour": 12},
        "test": {"normal": 60, "tumour": 48},
    })
    with pytest.raises(AssertionError, match="needs >= 100"):
        check_power({"val": {"normal": 12, "tumour": 12}, "test": {"normal": 20, "tumour": 20}})
    with pytest.raises(AssertionError, match="both classes"):
        check_power({"val": {"normal": 24, "tumour": 0}, "test": {"normal": 60, "tumour": 48}})


def test_default_config_has_power():
    cfg = yaml.safe_load(CONFIG.read_text())
    check_power(cfg["synthetic"]["slides"])


def test_main_prints_table(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"synthetic": {"slides": {
        "val": {"normal": 12, "tumour": 12}, "test": {"normal": 60, "tumour": 48},
    }}}))
    assert main(["--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "48 tumour + 60 normal = 108 slides" in out
    assert "auc |" in out and "| 0.600 |" in out and "min_detectable_difference" in out
    assert "145 possible AUC values" in out and "1/144" in out
