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
    text = "\n".join(findings(_config(), _metrics(poisoned)))
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


def test_mi_net_must_itself_overfit_for_the_claim_to_hold(tmp_path):
    cfg = validate_config({"training": {"methods": ["maxpool"], "seeds": [0]}, "experiments": ["minet_curves"],
                           "minet_curves": {"betas": []}})

    def df(minet, focus):  # (train, val) AUC
        return pd.DataFrame([
            {"experiment": "minet_curves", "method": "minet", "seed": 0, "train_auc": minet[0], "val_auc": minet[1]},
            {"experiment": "minet_curves", "method": "focusmil", "seed": 0, "train_auc": focus[0], "val_auc": focus[1]},
        ])

    def verdict(d):
        return next(p for p in findings(cfg, d) if "mi-Net" in p).split("Verdict: ")[1]

    assert verdict(df((1.0, 0.6), (0.9, 0.85))).startswith("**supported**")
    # gaps differ by more than the margin, but mi-Net's validation AUC is above its training AUC: no overfitting
    assert verdict(df((0.7, 0.76), (0.7, 0.81))).startswith("**not supported** (mi-Net's training AUC does not")
    assert verdict(df((0.8, 0.8), (1.0, 0.6))).startswith("**contradicted**")
