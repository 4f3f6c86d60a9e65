"""The workflow end to end through Snakemake on configs/ci.yaml (every stage, a tiny dataset).

One module-scoped run (about a minute on 2 cores) serves every assertion below.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from wsimil.datasets.sheet import read_sheet
from wsimil.features.store import feature_path
from wsimil.poison import select_poisoned_slides

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.workflow


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(ROOT / "configs" / "ci.yaml"), *args]
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(workdir)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1500)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("workflow")
    shutil.copy(ROOT / "config.yaml", work / "config.yaml")  # the Snakefile's `configfile:` (overridden by ci.yaml)
    proc = snakemake(work, "--cores", "2", "--logger", "wsimil")  # the console `make reproduce` shows
    (work / "console.txt").write_text(proc.stdout + proc.stderr)
    return work, work / "results" / "ci"


def test_the_console_shows_one_short_line_per_job(ci_run):
    """`--logger wsimil` (src/snakemake_logger_plugin_wsimil): the planned jobs, one line per finished job saying
    what it was with the time left from stage times, a closing line and the claims' verdicts; no line over 500
    characters, no input/output lists."""
    import re

    work, _ = ci_run
    lines = (work / "console.txt").read_text().splitlines()
    planned = next(int(m.group(1)) for ln in lines if (m := re.match(r"wsimil: (\d+) jobs to run \(", ln)))
    progress = [ln for ln in lines if re.match(r"\[ *\d+/\d+ +\d+%\] ", ln)]
    assert len(progress) == planned and progress[-1].startswith(f"[{planned}/{planned} 100%]")
    assert any("left |" in ln for ln in progress[:-1]) and f"wsimil: all {planned} jobs done in" in "\n".join(lines)
    assert len(lines) <= planned + 25, "\n".join(lines[:60])
    assert max(map(len, lines)) <= 500 and not any(ln.lstrip().startswith(("input:", "output:")) for ln in lines)
    # a job line says what ran (stage, experiment, method, seeds), and the run ends on the claims' verdicts
    assert any(re.search(r"\| train +standard · maxpool · seeds 0, 1 \(", ln) for ln in progress), "\n".join(progress[:40])
    assert any(re.match(r"wsimil: \d+ claims, each with its verdict", ln) for ln in lines), "\n".join(lines[-20:])


def test_tables_figures_and_run_directories_exist(ci_run):
    work, out = ci_run
    for exp in ("standard", "poison"):
        table = pd.read_csv(out / "tables" / f"{exp}.csv")
        assert list(table["method"]) == ["maxpool", "abmil", "focusmil"]
        assert table["n_seeds"].eq(2).all()
        assert table["slide_auc_mean"].between(0, 1).all()
        assert "±" in (out / "tables" / f"{exp}.md").read_text()
        for method in ("maxpool", "abmil", "focusmil"):
            for seed in (0, 1):
                run = out / "runs" / exp / method / f"seed{seed}"
                for name in ("predictions.csv", "instance_scores.h5", "score_maps.h5", "history.csv", "model.pt", "run.json",
                             "metrics.json"):
                    assert (run / name).is_file(), run / name
                meta = json.loads((run / "run.json").read_text())
                assert meta["method"] == method and meta["seed"] == seed and meta["experiment"] == exp
    unit = pd.read_csv(out / "tables" / "milunit.csv")
    assert list(unit["method"]) == ["maxpool", "abmil", "focusmil"]
    assert unit["val_auc_mean"].between(0, 1).all() and unit["test_auc_mean"].between(0, 1).all()
    comp = pd.read_csv(out / "tables" / "poison_comparison.csv")
    assert set(comp.columns) >= {"method", "clean_slide_auc_seedavg", "poisoned_slide_auc_seedavg", "change_poison_seedavg",
                                 "change_poison_ci_low", "change_poison_ci_high", "clean_slide_auc_mean", "poisoned_slide_auc_mean"}
    np.testing.assert_allclose(comp["change_poison_seedavg"],
                               comp["poisoned_slide_auc_seedavg"] - comp["clean_slide_auc_seedavg"], atol=1e-12)
    assert (comp["change_poison_ci_low"] <= comp["change_poison_seedavg"]).all()
    assert (comp["change_poison_seedavg"] <= comp["change_poison_ci_high"]).all()
    for fig in ("poison_comparison.png", "slide_auc.png"):
        assert (out / "figures" / fig).stat().st_size > 10_000
    assert any((out / "logs" / "train" / "standard").glob("*.log"))
    assert any((out / "benchmarks" / "extract").glob("*.tsv"))


def test_every_experiment_writes_its_tables_figures_and_the_summary(ci_run):
    from wsimil.config import load_config
    from wsimil.reporting.experiments import all_outputs

    _, out = ci_run
    config = load_config(out / "config.yaml")  # the run's merged config, as the workflow wrote it
    assert config["dataset"]["name"] == "ci" and config["training"]["max_epochs"] == 5
    for rel in all_outputs(config):
        assert (out / rel).is_file() and (out / rel).stat().st_size > 0, rel
    ablation = pd.read_csv(out / "tables" / "dtfd_ablation.csv")
    assert set(ablation["n_pseudo_bags"]) == {1, 4} and set(ablation["tier"]) == {"Tier 1", "Tier 2"}
    assert ablation["auc_mean"].between(0, 1).all()
    pseudo = pd.read_csv(out / "runs" / "dtfd_ablation_m4" / "dtfd_afs" / "seed0" / "pseudo_bags.csv")
    assert pseudo.groupby("slide_id").size().max() == 4
    run = json.loads((out / "runs" / "dtfd_ablation_m4" / "dtfd_afs" / "seed0" / "run.json").read_text())
    assert run["hparams"]["model"]["n_pseudo_bags"] == 4 and run["hparams"]["epochs"] == 5
    beta = json.loads((out / "runs" / "minet_curves_beta0.1" / "focusmil" / "seed1" / "run.json").read_text())
    assert beta["hparams"]["model"]["beta"] == 0.1
    dose = pd.read_csv(out / "tables" / "dose_response.csv")
    assert set(dose["axis"]) == {"strength", "fraction"} and 0 in set(dose["value"]) and 0.5 in set(dose["value"])
    ood = read_sheet(out / "data" / "slides_ood.csv")
    centers = ood["center"].astype(str)  # ci.yaml: ood.train_centers [0]; the synthetic data has three hospitals
    assert set(centers[ood["split"] != "test"]) == {"0"} and set(centers[ood["split"] == "test"]) == {"1", "2"}
    ood_pred = pd.read_csv(out / "runs" / "ood" / "abmil" / "seed0" / "predictions.csv")
    assert list(ood_pred["slide_id"]) == list(ood["slide_id"])
    metrics = json.loads((out / "runs" / "standard" / "abmil" / "seed0" / "metrics.json").read_text())
    for key in ("slide_threshold_val", "slide_accuracy_youden_test", "froc", "patch_auc_tumour_slides"):
        assert key in metrics, key
    assert metrics["froc"] is not None and 0 <= metrics["froc"] <= 1
    summary = (out / "SUMMARY.md").read_text()
    assert summary.count("Verdict:") >= 4 and "MIL unit test" in summary
    claims = pd.read_csv(out / "tables" / "claims.csv")
    top = claims[claims["level"] == "claim"]
    assert sorted(top["claim"]) == sorted(["patch", "poison", "ood", "dtfd_tier1", "dtfd_tier2", "minet_gap"])
    assert set(claims["verdict"]) <= {"supported", "contradicted", "inconclusive"}
    for c in top.itertuples():
        assert c.ci_low <= c.ci_high and f"Verdict: **{c.verdict}**" in summary
    # the family claims are read pair by pair: ci.yaml's maxpool and focusmil against abmil
    pairs = claims[claims["level"] == "pair"]
    assert set(pairs["claim"]) == {"patch", "poison", "ood"}
    assert set(pairs["pair"]) == {"maxpool vs abmil", "focusmil vs abmil"}
    # two seeds: below the minimum, nothing is decided and nothing enters the Holm family
    assert (pairs["seeds"] == 2).all() and (claims["verdict"] == "inconclusive").all() and claims["p_holm"].isna().all()
    conv = pd.read_csv(out / "tables" / "convergence.csv")
    assert set(conv["cell"]) == set(pd.read_csv(out / "tables" / "runs.csv")["cell"])
    assert (run["optimizer_steps"] == 5 * 6) and run["epochs_run"] == 5  # ci: 6 training slides, max_epochs 5
    standard = pd.read_csv(out / "tables" / "standard.csv")
    assert (standard["slide_auc_ci_low"] <= standard["slide_auc_seedavg"]).all()
    assert (standard["slide_auc_seedavg"] <= standard["slide_auc_ci_high"]).all()
    assert "patch_auc_tumour_slides_any_mean" in standard.columns
    paper = pd.read_csv(out / "tables" / "paper_vs_reproduced.csv")
    assert "0.946" in paper["published"].astype(str).tolist()


def test_a_named_target_rebuilds_its_figure_from_finished_runs(ci_run):
    work, out = ci_run
    victim = out / "figures" / "dtfd_ablation.png"
    victim.unlink()
    dry = snakemake(work, "-n", "--cores", "2", "figures").stdout
    assert "report_dtfd_ablation" in dry and "rule train:" not in dry and "rule evaluate:" not in dry
    snakemake(work, "--cores", "2", "dtfd_ablation")
    assert victim.is_file()




def test_predictions_cover_every_slide_of_the_sheet(ci_run):
    _, out = ci_run
    sheet = read_sheet(out / "data" / "slides.csv")
    pred = pd.read_csv(out / "runs" / "standard" / "abmil" / "seed0" / "predictions.csv")
    assert list(pred["slide_id"]) == list(sheet["slide_id"])
    with h5py.File(out / "runs" / "standard" / "abmil" / "seed0" / "instance_scores.h5") as f:
        for sid in sheet["slide_id"]:
            feats = next((out / "features").rglob(f"clean/{sid}.h5"))
            with h5py.File(feats) as g:
                assert f[sid].shape == (g["features"].shape[0],)


def test_poison_reaches_exactly_the_target_slides(ci_run):
    _, out = ci_run
    sheet = read_sheet(out / "data" / "slides.csv")
    targets = set(select_poisoned_slides(sheet, None))
    expected = set(sheet.query("(label == 0 and split in ['train', 'val']) or (label == 1 and split == 'test')")["slide_id"])
    assert targets == expected and targets
    clean_dir = next((out / "features").rglob("clean"))
    poison_dir = next(p for p in clean_dir.parent.iterdir() if p.name.startswith("poison"))
    # the poison cell reads its features through its manifest: the poisoned file of a target, the clean file of
    # every other slide (no copy is made)
    assert {p.stem for p in poison_dir.glob("*.h5")} == targets & set(sheet["slide_id"])
    manifest = out / "manifests" / f"{poison_dir.name}.tsv"
    for sid in sheet["slide_id"]:
        with h5py.File(clean_dir / f"{sid}.h5") as c, h5py.File(feature_path(manifest, sid)) as p:
            clean, poisoned = c["features"][:], p["features"][:]
            if sid in targets:
                assert feature_path(manifest, sid).resolve() == (poison_dir / f"{sid}.h5").resolve()
                mask = p["poisoned"][:]
                assert 0 < mask.sum() < len(mask)
                assert not np.array_equal(clean[mask], poisoned[mask]), sid
                np.testing.assert_array_equal(clean[~mask], poisoned[~mask])
            else:
                assert feature_path(manifest, sid).resolve() == (clean_dir / f"{sid}.h5").resolve()
                np.testing.assert_array_equal(clean, poisoned)


def test_rerun_has_nothing_to_do_and_resumes_a_deleted_run(ci_run):
    work, out = ci_run
    assert "Nothing to be done" in snakemake(work, "-n", "--cores", "2").stdout
    victim = out / "runs" / "poison" / "focusmil" / "seed1" / "model.pt"
    victim.unlink()
    dry = snakemake(work, "-n", "--cores", "2").stdout
    assert "train" in dry and "extract" not in dry and "synth_" not in dry
    snakemake(work, "--cores", "2")
    assert victim.is_file()


def _report_var(html: str, name: str):
    import re

    m = re.search(rf'<script id="{name}">\s*var {name} = (.*?);\s*</script>', html, flags=re.S)
    assert m, f"no `var {name}` in the report"
    return json.loads(m.group(1))


def _decoded(entry) -> str:
    import base64

    return base64.b64decode(entry["data_uri"].split("base64,", 1)[1]).decode()


def test_html_report(ci_run, tmp_path):
    """The report is a document: it opens on the verdicts (metadata), SUMMARY comes first and rendered, every
    experiment has its category with a page, and tables are HTML tables, not markdown downloads."""
    from html.parser import HTMLParser

    work, out = ci_run
    snakemake(work, "--report", str(work / "report.html"), "--report-metadata", str(out / "report_metadata.yaml"))
    assert (out / "report_landing.rst").is_file()
    html = (work / "report.html").read_text(errors="ignore")
    results = _report_var(html, "results")
    categories = list(_report_var(html, "categories"))
    metadata = _report_var(html, "metadata")
    assert sorted(categories)[0] == "01 SUMMARY" and sorted(categories)[-1].endswith("run records")
    for exp in ("standard", "poison", "ood", "dtfd_ablation", "minet_curves", "dose_response", "milunit",
                "focusmil_sensitivity"):
        assert any(c.endswith(f" {exp}") for c in categories), exp
    import re

    claims = pd.read_csv(out / "tables" / "claims.csv")
    claims = claims[claims["level"] == "claim"]  # the claims, not their pairs
    # numbers only: Snakemake 9 would show a string value as the dict of its docutils parts
    assert metadata == {f"claims {v}": int((claims["verdict"] == v).sum())
                        for v in ("supported", "contradicted", "inconclusive")}, metadata
    assert not [k for k, v in results.items() if k.endswith(".md")], "markdown items are download-only"

    class Cells(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags = []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)

    def tags_of(key_end):
        key = next(k for k in results if k.endswith(key_end))
        assert results[key]["mime_type"] == "text/html", key
        text = _decoded(results[key])
        parser = Cells()
        parser.feed(text)
        return text, parser.tags

    summary, tags = tags_of("pages/SUMMARY.html")
    assert "h1" in tags and "table" in tags and "td" in tags and "Verdict" in summary and "# " not in summary
    table, tags = tags_of("tables/standard.html")
    assert tags.count("td") >= 3 and "|---" not in table
    page, tags = tags_of("pages/poison.html")
    assert "img" in tags and "table" in tags and "figcaption" in tags

    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium): the browser check did not run")
    (tmp_path / "summary.html").write_text(summary)
    shot = tmp_path / "summary.png"
    proc = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                           "--window-size=1200,1600", f"file://{tmp_path / 'summary.html'}"],
                          capture_output=True, text=True, timeout=120)
    assert shot.is_file(), proc.stderr[-2000:]
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10 and (pixels < 100).mean() > 0.005, "the rendered SUMMARY page is blank"
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          f"file://{tmp_path / 'summary.html'}"], capture_output=True, text=True, timeout=120).stdout
    assert "<td>" in dom and "<table" in dom
    # the landing page as a reader sees it: the report rendered by its own scripts, read from the DOM
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,900",
                          "--virtual-time-budget=5000", "--dump-dom", f"file://{work / 'report.html'}"],
                         capture_output=True, text=True, timeout=180).stdout
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
    import html as html_mod

    text = " ".join(html_mod.unescape(re.sub(r"<[^>]+>", " ", body)).split())
    assert f"wsimil: {out.name}" in text, text[:2000]
    for r in claims.itertuples():
        shown = (f"{r.verdict} : {r.statement}. Difference {r.estimate:+.3f}, 95% CI [{r.ci_low:+.3f}, "
                 f"{r.ci_high:+.3f}], margin {r.margin:g}.")
        assert shown in text, (shown, text[:3000])
    for dump in ("utf-8", "strict", "0.22", "whole", "encoding"):  # docutils' settings in place of a value
        assert dump not in text.lower(), (dump, text[:3000])
    assert "align-items:safe center" in dom  # the page's top stays in view when it is taller than the window
    for page in sorted((out / "pages").glob("*.html")):  # no caption shows a raw template
        text = page.read_text()
        assert "{{" not in text and "{%" not in text, page.name


def test_bad_config_stops_before_any_job(tmp_path):
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  methods: [maxpool, transmil9000]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(bad), "-n"], capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "training.methods.1" in proc.stderr + proc.stdout and "allowed values" in proc.stderr + proc.stdout
    assert not (tmp_path / "results").exists()


def test_snakemake_lint_is_clean(tmp_path):
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path),
         "--configfile", str(ROOT / "configs" / "ci.yaml"), "--lint"], capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0 and "Congratulations" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_an_overlay_never_replaces_another_configurations_results(ci_run):
    """The README's one-method overlay in the folder of a finished run is refused before any job, and every
    file of that run keeps its checksum; with its own results_dir it plans its jobs there only."""
    import hashlib

    work, out = ci_run

    def sums():
        return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()}

    before = sums()
    one = work / "one.yaml"
    one.write_text("training:\n  methods: [focusmil]\n  seeds: [0]\n")
    proc = snakemake(work, "--configfile", str(ROOT / "configs" / "ci.yaml"), str(one), "--cores", "2", check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "holds the results of another configuration" in text, text[-2000:]
    assert "training.methods" in text and "results_dir" in text
    assert sums() == before
    one.write_text("results_dir: results/one\ntraining:\n  methods: [focusmil]\n  seeds: [0]\n")
    dry = snakemake(work, "--configfile", str(ROOT / "configs" / "ci.yaml"), str(one), "-n", "--cores", "2").stdout
    assert "results/one/" in dry and "results/ci/" not in dry
    assert sums() == before


def v_patch(card: pd.DataFrame) -> float:
    return float(card.loc["patch AUC (any tumour), mean of seeds", "value"])


def test_robustness_cards_carry_the_tables_numbers(ci_run):
    """cards/<method>: the clean and poisoned slide AUCs and their intervals are the tables' (the same
    seed-averaged scores and bootstrap), the change is their paired difference, the patch AUC and FROC are the
    table's seed means with a bootstrap interval and a paired difference to maxpool, every method has a card."""
    _, out = ci_run
    std = pd.read_csv(out / "tables" / "standard.csv").set_index("method")
    pois = pd.read_csv(out / "tables" / "poison.csv").set_index("method")
    for m in std.index:
        card = pd.read_csv(out / "cards" / f"{m}.csv").set_index("quantity")
        for q, table in (("clean slide AUC of seed-averaged scores", std), ("poisoned slide AUC of seed-averaged scores", pois)):
            got = card.loc[q, ["value", "ci_low", "ci_high"]].astype(float).to_numpy()
            want = table.loc[m, ["slide_auc_seedavg", "slide_auc_ci_low", "slide_auc_ci_high"]].astype(float).to_numpy()
            np.testing.assert_allclose(got, want, atol=1e-12, err_msg=f"{m}: {q}")
        # patch AUC and FROC: the seeds' mean as in the table, with a bootstrap interval
        for q, col in (("patch AUC (any tumour), mean of seeds", "patch_auc_tumour_slides_any_mean"),
                       ("FROC, mean of seeds", "froc_mean")):
            v, lo, hi = card.loc[q, ["value", "ci_low", "ci_high"]].astype(float)
            assert v == pytest.approx(std.loc[m, col], abs=1e-9), (m, q, v)
            # ci.yaml's two test tumour slides: a resample may hold no lesion, and then no interval is given
            assert (0 <= lo <= hi <= 1) or card.loc[q, "reading"].startswith("no interval: "), (m, q, v, lo, hi)
        diff = card.loc["patch AUC − maxpool's"]
        if m == "maxpool":
            assert diff["reading"] == "the reference"
        else:
            assert diff["value"] == pytest.approx(v_patch(card) - v_patch(pd.read_csv(out / "cards" / "maxpool.csv").set_index("quantity")))
            assert diff["reading"] in ("better", "worse", "inconclusive")
        change = card.loc["change under the poison (poisoned − clean)"]
        assert change["value"] == pytest.approx(card.loc["poisoned slide AUC of seed-averaged scores", "value"]
                                                - card.loc["clean slide AUC of seed-averaged scores", "value"])
        assert change["reading"] in ("unaffected", "affected", "inconclusive")
        assert "Beside the other methods" in (out / "cards" / f"{m}.md").read_text()
        assert (out / "cards" / f"{m}.png").stat().st_size > 5000


# ---------------------------------------------------------------------------------------- one number, one name


def _md_table(path: Path, which: int = 0) -> pd.DataFrame:
    """The ``which``-th pipe table of a markdown file as the reader sees it (strings, first column the index)."""
    tables, rows = [], []
    for line in path.read_text().splitlines() + [""]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            tables.append(pd.DataFrame(rows[2:], columns=rows[0]).set_index(rows[0][0]))
            rows = []
    return tables[which]


def _summary_paragraph(out: Path, start: str) -> str:
    text = (out / "SUMMARY.md").read_text()
    return next(p for p in text.split("\n- ") if p.startswith(start))


def _listed(paragraph: str, before: str) -> dict[str, str]:
    """``method value [lo, hi]`` pairs of a SUMMARY paragraph, up to ``before``."""
    import re

    head = paragraph.split(before)[0]
    return {m: v for m, v in re.findall(r"([a-z_0-9]+) ([−-]?\d\.\d{3} \[[−-]?\d\.\d{3}, [−-]?\d\.\d{3}\])", head)}


def test_a_number_shown_in_two_places_is_the_same_number(ci_run):
    """What a reader compares across SUMMARY.md, the tables, the cards and paper_vs_reproduced (as rendered, not
    the CSVs): the AUC of the seed-averaged scores and its interval, the paired changes, the MIL unit test's
    validation and test AUC, the DTFD and mi-Net values whose differences the claims are about, and every claim's
    interval. A quantity has one name; under that name it is one number everywhere."""
    import re

    _, out = ci_run
    t = out / "tables"
    seedavg = "slide AUC of seed-averaged scores [95% CI]"
    std, ood, pois = (_md_table(t / f"{e}.md") for e in ("standard", "ood", "poison"))
    pcomp, ocomp = _md_table(t / "poison_comparison.md"), _md_table(t / "ood_comparison.md")
    unit = _md_table(t / "milunit.md")
    clean_txt = _listed(_summary_paragraph(out, "**Clean data"), "Max-pooling mean")
    pois_txt = _listed(_summary_paragraph(out, "**FocusMIL: max-pooling resists"), "attention's loss")
    ood_txt = _listed(_summary_paragraph(out, "**Out of distribution"), "max-pooling's change")
    paper = _md_table(t / "paper_vs_reproduced.md").reset_index()
    methods = list(std.index)
    assert methods and set(clean_txt) == set(methods) == set(pois_txt) == set(ood_txt), (methods, clean_txt)
    for m in methods:
        card = _md_table(out / "cards" / f"{m}.md")["value [95% CI]"]
        clean = {std.loc[m, seedavg], pcomp.loc[m, "clean " + seedavg], ocomp.loc[m, "standard " + seedavg],
                 card["clean slide AUC of seed-averaged scores"], clean_txt[m].replace("-", "−")}
        assert len(clean) == 1, (m, clean)
        poisoned = {pois.loc[m, seedavg], pcomp.loc[m, "poisoned " + seedavg], card["poisoned slide AUC of seed-averaged scores"],
                    pois_txt[m].replace("-", "−")}
        row = paper[paper["method"].str.startswith(f"{m} (")]
        poisoned |= set(row["reproduced [95% CI]"])
        assert len(poisoned) == 1 and len(row) == 1, (m, poisoned)
        assert len({ood.loc[m, seedavg], ocomp.loc[m, "ood " + seedavg], ood_txt[m].replace("-", "−")}) == 1, m
        assert card["change under the poison (poisoned − clean)"] == \
            pcomp.loc[m, "change of the seed-averaged AUC (poisoned − clean) [95% CI]"], m
        assert card["change at the unseen hospital (ood − standard)"] == \
            ocomp.loc[m, "change of the seed-averaged AUC (ood − standard) [95% CI]"], m
        assert card["MIL unit test: validation AUC of seed-averaged scores"] == unit.loc[m, "val AUC of seed-averaged scores [95% CI]"]
        assert card["MIL unit test: test AUC of seed-averaged scores"] == unit.loc[m, "test AUC of seed-averaged scores [95% CI]"]
    milunit_txt = _summary_paragraph(out, "**MIL unit test")
    for m, val, test in re.findall(r"([a-z_0-9]+) (\d\.\d{3}) → (\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\])", milunit_txt):
        assert unit.loc[m, "val AUC of seed-averaged scores [95% CI]"].startswith(val + " ")
        assert unit.loc[m, "test AUC of seed-averaged scores [95% CI]"] == test
    # every claim's interval is the one SUMMARY prints, and the DTFD / mi-Net values it lists are the tables'
    claims = pd.read_csv(t / "claims.csv")
    summary = (out / "SUMMARY.md").read_text()
    for c in claims.itertuples():
        if np.isfinite(c.estimate):
            assert f"**{c.estimate:.3f} [{c.ci_low:.3f}, {c.ci_high:.3f}]**" in summary, c
    dtfd = _md_table(t / "dtfd_ablation.md").reset_index()
    dtfd_txt = _summary_paragraph(out, "**DTFD-MIL")
    for r in dtfd.itertuples():
        assert f"M={r[1]} {r[4]}" in dtfd_txt.split(r.tier + ":")[1].split(";")[0], (r, dtfd_txt)
    # Tier 1 beside its oracle ceiling on the same pseudo-bags, which falls as M grows (Tier 2 has none)
    table = pd.read_csv(t / "dtfd_ablation.csv")
    ceiling = table[table["tier"] == "Tier 1"].set_index("n_pseudo_bags")["oracle_ceiling_mean"]
    assert ceiling.between(0.5, 1.0).all() and ceiling.is_monotonic_decreasing, ceiling
    assert table.loc[table["tier"] == "Tier 2", "oracle_ceiling_mean"].isna().all()
    assert "of that ceiling" in dtfd_txt
    # the claim is on the single models: the mean over the seeds of their Tier-1 AUCs' change
    tier = table.set_index(["tier", "n_pseudo_bags"])["auc_mean"]
    ms = sorted({int(x) for x in dtfd[dtfd.columns[0]]})
    c1 = claims.set_index("claim").loc["dtfd_tier1", "estimate"]
    assert c1 == pytest.approx(tier[("Tier 1", ms[-1])] - tier[("Tier 1", ms[0])], abs=1e-4)
    minet = _md_table(t / "minet_curves.md", 0).set_index("method")
    gap_txt = _summary_paragraph(out, "**Why mi-Net overfits")
    for m, v in minet["train − val AUC of seed-averaged scores"].items():
        assert f"{m} {v}" in gap_txt, (m, v, gap_txt)


def _planned_job(work: Path, rule: str, target: str) -> dict[str, list[str] | str]:
    """The declared input, output and log files and the shell command of ``rule``'s job, from a dry run that forces
    it (``target``: a file or rule it makes)."""
    out = snakemake(work, "-n", "-p", "--cores", "2", "--forcerun", rule, "--", target).stdout
    block = out[out.index(f"rule {rule}:\n"):]
    block = block[: block.index("Shell command:") + 2000]
    fields = {}
    for key in ("input", "output", "log"):
        line = next((ln for ln in block.splitlines() if ln.strip().startswith(f"{key}: ")), "")
        fields[key] = [p.strip() for p in line.split(":", 1)[1].split(", ")] if line else []
    fields["shell"] = block[block.index("Shell command:") + len("Shell command:"):].splitlines()[0].strip()
    return fields


@pytest.mark.parametrize("rule, target", [("report_standard", "standard"), ("report_poison", "poison"),
                                          ("report_dtfd_ablation", "dtfd_ablation"), ("report_summary", "summary"),
                                          ("report_cards", "cards")])
def test_a_report_job_reads_only_what_its_rule_declares(ci_run, tmp_path, rule, target):
    """Run a report job in a folder that holds only its declared inputs (a feature manifest with the files it lists,
    which it stands for) and the repository's captions: it succeeds and writes the same tables, so Snakemake knows
    every file a table or figure depends on and reruns it when one changes."""
    from wsimil.features.store import read_manifest

    work, out = ci_run
    job = _planned_job(work, rule, target)
    box = tmp_path / "box"
    needed = set(job["input"])
    for f in job["input"]:
        if f.endswith(".tsv") and "/manifests/" in f:
            for _, rel, _, _ in read_manifest(work / f).values():
                needed.add(str(Path(f).parent / rel))
    for f in sorted(needed):
        src, dst = work / f, box / f
        assert src.is_file(), f
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    for f in job["output"] + job["log"]:
        (box / f).parent.mkdir(parents=True, exist_ok=True)
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(box)}
    proc = subprocess.run(["bash", "-c", job["shell"]], cwd=box, capture_output=True, text=True, env=env, timeout=600)
    log = "".join((box / f).read_text() for f in job["log"] if (box / f).is_file())
    assert proc.returncode == 0, f"{job['shell']}\n{proc.stderr[-3000:]}\n{log[-3000:]}"
    tables = [f for f in job["output"] if f.endswith(".csv")]
    assert tables, job["output"]
    for f in tables:
        assert (box / f).read_bytes() == (work / f).read_bytes(), f
