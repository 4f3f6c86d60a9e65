"""The figure captions of report/captions render from a config without a raw template left, and say what the
figures draw: the line styles read back from the Axes, the legend's names, the levels a curve joins."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wsimil.config import default_config, load_config
from wsimil.experiments import dose_levels
from wsimil.reporting import figures as F
from wsimil.reporting.html import caption_text, rst_html

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = ROOT / "report" / "captions"
STYLE_WORD = {"-": "solid", "--": "dashed", ":": "dotted", "-.": "dash-dotted"}


@pytest.fixture(scope="module")
def config() -> dict:
    return load_config(ROOT / "config.yaml")


def caption(name: str, config: dict) -> str:
    """The caption as a page shows it: placeholders filled, line breaks joined."""
    return " ".join(caption_text((CAPTIONS / f"{name}.rst").read_text(), config).split())


def _line(ax, gid: str):
    (line,) = [ln for ln in ax.get_lines() if ln.get_gid() == gid]
    return line


def _word_before(text: str, what: str) -> str:
    """The style word a caption puts before ``what`` ("Dotted grey line: chance" -> "dotted")."""
    found = re.search(rf"(\w+) {what}", text, flags=re.IGNORECASE)
    assert found, f"the caption does not say '<style> {what}': {text}"
    return found.group(1).lower()


@pytest.mark.parametrize("which", ["repository config.yaml", "defaults"])
@pytest.mark.parametrize("path", sorted(CAPTIONS.glob("*.rst")), ids=lambda p: p.stem)
def test_every_caption_renders_without_a_template_left(path, which, config):
    cfg = config if which == "repository config.yaml" else default_config()
    text = caption_text(path.read_text(), cfg)
    for mark in ("{{", "}}", "{%", "%}", "snakemake.config"):
        assert mark not in text, (path.name, mark)
    html = rst_html(text)
    assert "system-message" not in html and "problematic" not in html, path.name


# -- dose-response --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dose() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    rows = []
    for m in ("maxpool", "abmil"):
        for s in (0, 1, 2):
            for axis, values in (("strength", (0.0, 0.1, 0.25, 0.5)), ("fraction", (0.0, 0.5))):
                rows += [{"method": m, "seed": s, "axis": axis, "value": v, "auc": 0.9 - 0.5 * v + 0.02 * rng.normal()}
                         for v in values]
    return pd.DataFrame(rows)


def test_dose_response_caption_names_the_line_styles_drawn(dose, config, tmp_path, drawn):
    """The chance line's style, and each family's, is the word the caption uses for it."""
    F.plot_dose_response(dose, tmp_path / "dose.png")
    text = caption("dose_response", config)
    for ax in drawn[0].axes:
        assert _word_before(text, "grey line: chance") == STYLE_WORD[_line(ax, "chance").get_linestyle()]
        for method, family in (("maxpool", "max-pooling"), ("abmil", "attention")):
            said = re.search(rf"{family} family: (\w+) lines", text, flags=re.IGNORECASE)
            assert said and said.group(1) == STYLE_WORD[_line(ax, f"method:{method}").get_linestyle()], family


@pytest.mark.parametrize("fractions", [[], [0.1, 0.25]])
def test_dose_response_caption_lists_the_configured_levels(config, fractions):
    """The caption's levels are those the workflow runs (dose_levels) plus 0, the clean runs, whatever the
    config holds; and it says a line joins only them."""
    cfg = copy.deepcopy(config)
    cfg["dose_response"]["fractions"] = fractions
    text = caption("dose_response", cfg)
    levels = dose_levels(cfg)
    s0, f0 = float(cfg["poison"]["strength"]), float(cfg["poison"]["fraction"])
    wants = {"strengths": {s for s, f in levels if f == f0}, "fractions": {f for s, f in levels if s == s0}}
    for axis, want in wants.items():
        listed = re.search(rf"{axis} ([\d., ]+?)(?:,? and|,? where)", text)
        assert listed, text
        assert [float(v) for v in listed.group(1).split(",")] == sorted({0.0} | want), axis
    assert "joins only the configured levels" in text


# -- the other figures' captions against their Axes -----------------------------------------------------------
def test_metric_figure_captions_match_the_key(config, tmp_path, drawn):
    """slide_auc, poison_comparison and milunit: the caption names the dots and the marker as the key under the
    plot does, and the chance line's style."""
    df = pd.DataFrame({"experiment": "standard", "method": "maxpool", "seed": [0, 1, 2], "slide_auc": [0.8, 0.9, 0.85]})
    iv = pd.DataFrame({"experiment": ["standard"], "method": ["maxpool"], "value": [0.86], "low": [0.7],
                       "high": [0.95]})
    F.plot_metric_by_method(df, "slide_auc", tmp_path / "m.png", intervals=iv)
    fig = drawn[0]
    key = [t.get_text() for t in fig.legends[0].get_texts()]
    assert key == ["dots: each seed's AUC", F.INTERVAL_KEY]
    style = STYLE_WORD[_line(fig.axes[0], "chance").get_linestyle()]
    for name in ("slide_auc", "poison_comparison", "milunit"):
        text = caption(name, config)
        assert "each seed's own" in text and "AUC of the seed-averaged scores" in text and "95%" in text, name
        assert _word_before(text, "grey line: chance") == style, name
        assert "mean ± std" not in text and "mean ± sd over" not in text, name  # the marker is not a mean


def test_table_sentences_of_the_comparison_captions(config):
    assert ("Table: per method, the test slide AUC of the seed-averaged scores on clean and on poisoned data with "
            "95% intervals, and their paired change (poisoned − clean, the same test slides resampled together) "
            "with its 95% interval — the numbers of SUMMARY.md and the cards — beside the mean ± sd of the "
            "per-seed AUCs.") in caption("poison_comparison", config)
    assert ("Table: validation and test AUC of the seed-averaged scores with 95% intervals (SUMMARY.md's "
            "reading), beside the mean ± sd of the per-seed AUCs.") in caption("milunit", config)


@pytest.mark.parametrize("name", ["roc_standard", "roc_poison", "roc_ood"])
def test_roc_captions_match_the_panels(name, config, tmp_path, drawn):
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 10)
    preds = pd.DataFrame([{"method": m, "seed": s, "label": a, "score": b}
                          for m in ("maxpool", "abmil") for s in (0, 1)
                          for a, b in zip(y, rng.normal(size=20) + y)])
    F.plot_roc_curves(preds, tmp_path / "roc.png")
    fig = drawn[0]
    text = caption(name, config)
    chance = [ln for ln in fig.axes[0].get_lines() if list(ln.get_xdata()) == [0, 1] and list(ln.get_ydata()) == [0, 1]]
    assert _word_before(text, "grey diagonal: chance") == STYLE_WORD[chance[0].get_linestyle()]
    assert "each seed's ROC" in text and "vertical mean" in text
    assert "mean ± sample sd over the seeds of each seed's own test AUC" in text
    assert "mean ± sd of the seeds' test AUCs" in fig.legends[0].get_title().get_text()
    bold = {ax.get_title().split("\n")[0]: max(ax.get_lines(), key=lambda ln: ln.get_linewidth()) for ax in fig.axes}
    styles = [STYLE_WORD[bold[m].get_linestyle()] for m in ("maxpool", "abmil")]
    assert styles == ["solid", "dashed"]
    assert "solid for the max-pooling family and dashed for the attention family" in text


def test_dtfd_caption_uses_the_legend_names(config, tmp_path, drawn):
    df = pd.DataFrame([{"n_pseudo_bags": k, "seed": s, "tier": t, "auc": 0.8} for k in (1, 4) for s in (0, 1)
                       for t in ("Tier 1", "Tier 2")])
    F.plot_dtfd_ablation(df, tmp_path / "d.png")
    text = caption("dtfd_ablation", config)
    for label in (t.get_text() for t in drawn[0].legends[0].get_texts()):
        assert f'"{label}"' in text
    assert _word_before(text, "grey line: chance") == STYLE_WORD[_line(drawn[0].axes[0], "chance").get_linestyle()]


def test_training_curve_caption_names_the_styles(config, tmp_path, drawn):
    h = pd.DataFrame([{"method": "minet", "seed": 0, "epoch": e, "train_auc": 0.9, "val_auc": 0.8,
                       "selected_epoch": 1} for e in range(3)])
    F.plot_training_curves(h, tmp_path / "t.png")
    ax = drawn[0].axes[0]
    text = caption("minet_curves", config)
    bold = [ln for ln in ax.get_lines() if ln.get_linewidth() > 1 and ln.get_gid() is None]
    assert [STYLE_WORD[ln.get_linestyle()] for ln in bold] == ["solid", "dashed"]
    assert "training AUC (solid" in text and "validation AUC (dashed)" in text
    mark = _line(ax, "selected_epoch")
    assert mark.get_markerfacecolor() == "white" and mark.get_marker() == "o" and "Open circles" in text
