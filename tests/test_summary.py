"""SUMMARY.md's verdicts follow their stated rules on known metrics (no run needed)."""

import pandas as pd
import pytest

from wsimil.config import validate_config
from wsimil.reporting.summary import MARGIN, findings, paper_vs_reproduced


def _config():
    return validate_config({"training": {"methods": ["maxpool", "focusmil", "abmil", "dtfd_afs"], "seeds": [0, 1]},
                            "experiments": ["standard", "poison"]})


def _metrics(poisoned: dict[str, float], clean: float = 0.9) -> pd.DataFrame:
    rows = []
    for seed in (0, 1):
        for m in ("maxpool", "focusmil", "abmil", "dtfd_afs"):
            rows.append({"experiment": "standard", "method": m, "seed": seed, "slide_auc": clean,
                         "slide_accuracy_youden_test": 0.8})
            rows.append({"experiment": "poison", "method": m, "seed": seed, "slide_auc": poisoned[m]})
    return pd.DataFrame(rows)


@pytest.mark.parametrize(
    "poisoned, verdict",
    [
        ({"maxpool": 0.88, "focusmil": 0.9, "abmil": 0.1, "dtfd_afs": 0.05}, "**supported**"),
        ({"maxpool": 0.1, "focusmil": 0.2, "abmil": 0.9, "dtfd_afs": 0.85}, "**contradicted**"),
        ({"maxpool": 0.5, "focusmil": 0.5, "abmil": 0.5 - MARGIN / 4, "dtfd_afs": 0.5}, "**not supported**"),
    ],
)
def test_the_poison_verdict_follows_its_rule(tmp_path, poisoned, verdict):
    text = "\n".join(findings(_config(), _metrics(poisoned), tmp_path))
    poison = next(p for p in text.split("\n") if p.startswith("**FocusMIL"))
    assert f"Verdict: {verdict}" in poison
    assert "Clean data (standard)" in text


def test_paper_table_marks_other_data_and_fills_our_number():
    table = paper_vs_reproduced(_config(), _metrics({"maxpool": 0.9, "focusmil": 0.9, "abmil": 0.1, "dtfd_afs": 0.1}))
    c16 = table[(table["dataset"] == "CAMELYON16") & (table["metric"] == "slide AUC")].iloc[0]
    assert c16["published"] == 0.946 and c16["reproduced"] == pytest.approx(0.9) and c16["n_seeds"] == 2
    assert "different data" in c16["note"]
    same = paper_vs_reproduced({**_config(), "dataset": {"name": "camelyon16"}}, _metrics(dict.fromkeys(
        ["maxpool", "focusmil", "abmil", "dtfd_afs"], 0.5)))
    assert same.iloc[0]["note"] == "same dataset"
    attention = table[table["method"].str.startswith("attention family")].iloc[0]
    assert attention["published"] == "near 0" and attention["reproduced"] == pytest.approx(0.1)
