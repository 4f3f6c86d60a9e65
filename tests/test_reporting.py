"""Results tables (collect, summarise, write) and figures, on fake metrics.json files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wsimil.io import WsimilError
from wsimil.reporting.figures import plot_metric_by_method, plot_poison_comparison
from wsimil.reporting.tables import (
    collect_metrics,
    format_table,
    poison_comparison_table,
    summary_table,
    write_table,
)

# experiment -> method -> per-seed slide AUC
_AUC = {
    "standard": {"maxpool": [0.90, 0.94, 0.92], "abmil": [0.88, 0.86, 0.90]},
    "poison": {"maxpool": [0.85, 0.89, 0.87], "abmil": [0.30, 0.40, 0.35]},
}


def _write_runs(root: Path) -> None:
    for exp, methods in _AUC.items():
        for method, aucs in methods.items():
            for seed, auc in enumerate(aucs):
                d = root / exp / method / f"seed{seed}"
                d.mkdir(parents=True)
                metrics = {
                    "experiment": exp, "method": method, "seed": seed,
                    "slide_auc": auc, "slide_accuracy": auc - 0.1, "slide_f1": auc - 0.2,
                    "patch_auc_tumour_slides": None,  # skipped: null in JSON
                    "patch_metrics_skipped_reason": "no tumor_fraction",
                }
                (d / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def results(tmp_path) -> pd.DataFrame:
    _write_runs(tmp_path / "runs")
    return collect_metrics(tmp_path / "runs", ["standard", "poison"])


def test_collect_metrics_rows_and_order(results):
    assert len(results) == 12
    assert list(results.columns[:3]) == ["experiment", "method", "seed"]
    assert list(dict.fromkeys(results["experiment"])) == ["standard", "poison"]
    assert results["patch_auc_tumour_slides"].isna().all()
    assert results["patch_metrics_skipped_reason"].eq("no tumor_fraction").all()


def test_collect_metrics_missing_file_is_named(tmp_path):
    _write_runs(tmp_path / "runs")
    (tmp_path / "runs" / "poison" / "abmil" / "seed1" / "metrics.json").unlink()
    with pytest.raises(WsimilError, match=r"poison/abmil/seed1/metrics\.json"):
        collect_metrics(tmp_path / "runs", ["standard", "poison"])
    with pytest.raises(WsimilError, match="ood"):
        collect_metrics(tmp_path / "runs", ["ood"])


def test_summary_table_mean_std(results):
    s = summary_table(results)
    row = s[(s["experiment"] == "standard") & (s["method"] == "maxpool")].iloc[0]
    assert row["slide_auc_mean"] == pytest.approx(0.92)
    assert row["slide_auc_std"] == pytest.approx(np.std([0.90, 0.94, 0.92], ddof=1))  # 0.02
    assert row["slide_f1_mean"] == pytest.approx(0.72)
    assert row["n_seeds"] == 3
    assert math.isnan(row["patch_auc_tumour_slides_mean"])
    assert list(s["method"]) == ["abmil", "maxpool"] * 2  # order of appearance (collect sorts by name)
    assert list(s["experiment"]) == ["standard"] * 2 + ["poison"] * 2
    ordered = summary_table(results, methods=["maxpool"])
    assert list(ordered["method"]) == ["maxpool", "abmil"] * 2  # unlisted methods follow, none dropped


def test_summary_nan_seed_is_not_averaged_away(results):
    results.loc[(results["method"] == "abmil") & (results["seed"] == 0), "slide_auc"] = float("nan")
    s = summary_table(results)
    nan_rows = s[s["slide_auc_mean"].isna()]
    assert set(nan_rows["method"]) == {"abmil"} and len(nan_rows) == 2  # abmil seed0 in both experiments


def test_poison_comparison_table_values(results):
    t = poison_comparison_table(results, methods=["maxpool", "abmil"])
    assert list(t["method"]) == ["maxpool", "abmil"]
    mp = t.set_index("method").loc["maxpool"]
    ab = t.set_index("method").loc["abmil"]
    assert mp["clean_slide_auc_mean"] == pytest.approx(0.92)
    assert mp["poisoned_slide_auc_mean"] == pytest.approx(0.87)
    assert mp["difference"] == pytest.approx(-0.05)
    assert ab["difference"] == pytest.approx(0.35 - 0.88)
    assert ab["poisoned_slide_auc_std"] == pytest.approx(0.05)
    assert mp["clean_n_seeds"] == 3 and mp["poisoned_n_seeds"] == 3
    with pytest.raises(WsimilError, match="'dose'"):
        poison_comparison_table(results, poisoned="dose")


def test_poison_comparison_keeps_method_run_only_once(results):
    extra = pd.DataFrame([{"experiment": "standard", "method": "dsmil", "seed": 0, "slide_auc": 0.8}])
    t = poison_comparison_table(pd.concat([results, extra], ignore_index=True)).set_index("method")
    assert t.loc["dsmil", "clean_slide_auc_mean"] == 0.8
    assert math.isnan(t.loc["dsmil", "poisoned_slide_auc_mean"]) and math.isnan(t.loc["dsmil", "difference"])
    assert t.loc["dsmil", "poisoned_n_seeds"] == 0


def test_format_table():
    df = pd.DataFrame({"method": ["a", "b"], "slide_auc_mean": [0.9123, 0.5], "slide_auc_std": [0.0209, float("nan")],
                       "difference": [-0.05, 0.1], "n_seeds": [3, 1]})
    f = format_table(df)
    diff = "difference of the seeds' means (poisoned − clean)"
    assert list(f.columns) == ["method", "slide AUC, mean ± sd of seeds", diff, "n seeds"]
    assert list(f["slide AUC, mean ± sd of seeds"]) == ["0.912 ± 0.021", "0.500"]
    assert list(f[diff]) == ["−0.050", "+0.100"]
    assert list(f["n seeds"]) == ["3", "1"]


def test_the_two_slide_aucs_never_share_a_name():
    """The AUC of the seed-averaged scores and the mean of the seeds' AUCs are different numbers: their
    formatted columns say which they are, a change is signed, and a value without interval stays bare."""
    df = pd.DataFrame({"method": ["a"], "slide_auc_seedavg": [0.9], "slide_auc_ci_low": [0.8], "slide_auc_ci_high": [0.95],
                       "slide_auc_mean": [0.85], "slide_auc_std": [0.02], "change_poison_seedavg": [-0.5],
                       "change_poison_ci_low": [-0.6], "change_poison_ci_high": [-0.4], "auc_seedavg": [0.7]})
    f = format_table(df).iloc[0]
    assert f["slide AUC of seed-averaged scores [95% CI]"] == "0.900 [0.800, 0.950]"
    assert f["slide AUC, mean ± sd of seeds"] == "0.850 ± 0.020"
    assert f["change of the seed-averaged AUC (poisoned − clean) [95% CI]"] == "−0.500 [−0.600, −0.400]"
    assert f["test AUC of seed-averaged scores"] == "0.700"


def test_write_table(results, tmp_path):
    stem = tmp_path / "tables" / "standard_summary"
    paths = write_table(summary_table(results, methods=["maxpool", "abmil"]), stem, caption="Standard experiment: mean ± std over 3 seeds.")
    assert [p.name for p in paths] == ["standard_summary.csv", "standard_summary.md", "standard_summary.tex",
                                       "standard_summary.html"]
    page = (tmp_path / "tables" / "standard_summary.html").read_text()  # a rendered table, not markdown text
    from html.parser import HTMLParser

    cells: list[str] = []

    class Cells(HTMLParser):
        def handle_data(self, data):
            if self.lasttag in ("td", "th", "caption") and data.strip():
                cells.append(data.strip())

    Cells().feed(page)
    assert "<table" in page and "|" not in page.split("<table", 1)[1]
    assert "0.920 ± 0.020" in cells and cells[0].startswith("Standard experiment")
    md = (tmp_path / "tables" / "standard_summary.md").read_text()
    assert md.startswith("Table: Standard experiment")
    assert "0.920 ± 0.020" in md and "patch AUC (test tumour slides)" in md and "–" in md
    csv = pd.read_csv(tmp_path / "tables" / "standard_summary.csv")
    assert csv.loc[0, "slide_auc_mean"] == pytest.approx(0.92)  # numeric, full precision
    assert "±" not in (tmp_path / "tables" / "standard_summary.csv").read_text()
    tex = (tmp_path / "tables" / "standard_summary.tex").read_text()
    assert r"0.920 $\pm$ 0.020" in tex and r"\caption{Standard experiment: mean $\pm$ std" in tex
    assert r"\toprule" in tex and r"\label{tab:standard_summary}" in tex
    write_table(pd.DataFrame({"method": ["clam_sb"], "x": [1.0]}), tmp_path / "t2", caption="50% & more")
    tex2 = (tmp_path / "t2.tex").read_text()
    assert r"clam\_sb" in tex2 and r"50\% \& more" in tex2
    assert not list((tmp_path / "tables").glob(".*"))  # no temporary files left


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_plot_poison_comparison(results, tmp_path):
    out = tmp_path / "fig" / "poison.png"
    paths = plot_poison_comparison(results, out, methods=["abmil", "maxpool"])
    assert paths == [out, out.with_suffix(".pdf")]
    w, h = _png_size(out)
    assert 900 < w < 1400 and 500 < h < 900  # ~6 x 3.5 in at 200 dpi, tight bbox
    assert out.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
    with pytest.raises(WsimilError, match="dose"):
        plot_poison_comparison(results, tmp_path / "x.png", poisoned="dose")


def test_plot_metric_by_method(results, tmp_path):
    out = tmp_path / "f1.png"
    plot_metric_by_method(results, "slide_f1", out)
    assert out.stat().st_size > 5000 and out.with_suffix(".pdf").stat().st_size > 1000
    with pytest.raises(WsimilError, match="no_such_metric"):
        plot_metric_by_method(results, "no_such_metric", out)


def test_page_captions_have_their_placeholders_filled(tmp_path):
    """The report's rst captions hold {{ snakemake.config[...] }} (Snakemake's report fills them); the pages
    wsimil writes fill them from the run's config too, and an unknown key fails instead of showing braces."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from wsimil.reporting.html import caption_text, experiment_page

    root = Path(__file__).resolve().parents[1]
    config = {"dtfd_ablation": {"method": "dtfd_afs", "pseudo_bags": [1, 4, 16]}}
    text = caption_text((root / "report" / "captions" / "dtfd_ablation.rst").read_text(), config)
    assert "{{" not in text and "``dtfd_afs``" in text and "[1, 4, 16]" in text
    with pytest.raises(Exception, match="has no attribute 'nope'"):
        caption_text("{{ snakemake.config['dtfd_ablation']['nope'] }}", config)
    fig = tmp_path / "figures" / "dtfd_ablation.png"
    fig.parent.mkdir()
    plt.figure(figsize=(1, 1)).savefig(fig)
    page = experiment_page(tmp_path, "dtfd_ablation", "t", ["figures/dtfd_ablation.png"], root / "report" / "captions",
                           config=config)
    html = page.read_text()
    assert "{{" not in html and "{%" not in html and "dtfd_afs" in html
    for caption in sorted((root / "report" / "captions").glob("*.rst")):  # every caption's keys exist
        from wsimil.config import load_config

        assert "{{" not in caption_text(caption.read_text(), load_config(root / "config.yaml")), caption.name
