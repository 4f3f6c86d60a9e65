"""The workflow on real-data sources, through Snakemake: CAMELYON16 downloaded from a miniature mirror on
127.0.0.1 (dataset.source camelyon16), and bad input in a user's sample sheet (an unreadable slide, an
annotation that does not parse, a file that is not there) failing only its own jobs."""

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mirror import MirrorServer, build_camelyon16_mirror

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.workflow

SMALL = {  # the smallest run that still goes through every stage of the standard experiment
    "patching": {"target_mpp": 1.0, "patch_size": 128, "seg_downsample": 16},
    "features": {"extractor": "efficientnet_lite0", "batch_size": 32, "num_workers": 0, "device": "cpu",
                 "slides_per_job": 20},
    "training": {"methods": ["maxpool", "abmil"], "seeds": [0], "max_epochs": 3, "device": "cpu", "threads": 1},
    "experiments": ["standard"],
}


def snakemake(work: Path, config: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    (work / "run.yaml").write_text(yaml.safe_dump(config))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(work),
           "--configfile", str(work / "run.yaml"), "--cores", "2", *args]
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(work)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1500)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def test_camelyon16_from_a_mirror_download_to_tables(tmp_path):
    bucket = tmp_path / "bucket"
    root = build_camelyon16_mirror(bucket / "CAMELYON16")
    server = MirrorServer(bucket)
    server.faults = {"/CAMELYON16/images/tumor_002.tif": ["cut"], "/CAMELYON16/images/normal_001.tif": ["500"]}
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ROOT / "config.yaml", work / "config.yaml")
    config = {**SMALL, "dataset": {"name": "c16", "source": "camelyon16", "exclude": ["normal_002"]},
              "download": {"base_url": f"{server.url}/CAMELYON16", "retries": 3}}
    try:
        proc = snakemake(work, config)
    finally:
        server.close()
    out = work / "results" / "c16"
    # every slide and annotation came through the download rule, byte for byte, into the bucket's layout
    sheet = pd.read_csv(out / "data" / "slides.csv", keep_default_na=False)
    assert len(sheet) == 9 and "normal_002" not in set(sheet["slide_id"])
    for r in sheet.itertuples():
        assert (out / "data" / r.path).resolve() == (work / "data" / "c16" / "images" / f"{r.slide_id}.tif").resolve()
        assert (work / "data" / "c16" / "images" / f"{r.slide_id}.tif").read_bytes() == (root / "images" / f"{r.slide_id}.tif").read_bytes()
        if r.label == 1:
            assert (out / "data" / r.annotation).read_bytes() == (root / "annotations" / f"{r.slide_id}.xml").read_bytes()
    assert not list((work / "data" / "c16").rglob("*.part"))
    logs = {p.name: p.read_text() for p in (out / "logs" / "download" / "images").glob("*.log")}
    cut = logs["tumor_002.tif.log"]
    assert ("bytes received" in cut or "connection cut" in cut) and "retrying" in cut
    assert "HTTP 500" in logs["normal_001.tif.log"] and "complete" in logs["normal_001.tif.log"]
    size = (root / "images" / "tumor_002.tif").stat().st_size
    assert ("/CAMELYON16/images/tumor_002.tif", f"bytes={size // 2}-") in server.requests  # resumed
    # labels from reference.csv, the exclusion recorded and in the summary, the standard table written
    ref = pd.read_csv(root / "evaluation" / "reference.csv")
    labels = dict(zip(ref["image"].str.removesuffix(".tif"), (ref["type"] == "tumor").astype(int)))
    assert all(labels[r.slide_id] == r.label for r in sheet.itertuples())
    assert pd.read_csv(out / "data" / "excluded.csv").to_dict("records") == [{"slide_id": "normal_002", "reason": "dataset.exclude"}]
    summary = (out / "SUMMARY.md").read_text()
    assert "`normal_002`: dataset.exclude" in summary and "9 slides" in summary
    slides = pd.read_csv(out / "tables" / "slides.csv")  # what patching found, per slide
    assert list(slides["slide_id"]) == list(sheet["slide_id"])
    assert (slides["mpp_level0"] == 0.5).all() and (slides["read_level"] == 1).all() and (slides["n_patches"] > 0).all()
    table = pd.read_csv(out / "tables" / "standard.csv")
    assert list(table["method"]) == ["maxpool", "abmil"] and table["slide_auc_mean"].between(0, 1).all()
    runs = pd.read_csv(out / "tables" / "runs.csv")  # how every run was made, for the report
    assert list(runs["method"]) == ["maxpool", "abmil"] and (runs["device"] == "cpu").all()
    assert runs["device_name"].str.contains("threads").all() and (runs["precision"] == "fp32").all()
    # a second run finds everything done, and the downloads are protected from a forced rerun
    assert "Nothing to be done" in snakemake(work, config, "-n").stdout + snakemake(work, config, "-n").stderr
    assert not (work / "data" / "c16" / "images" / "test_001.tif").stat().st_mode & 0o222


def _sheet_dataset(tmp_path: Path) -> Path:
    """A user's sheet over synthetic slides, three of them broken in different ways."""
    from wsimil.slides.synthetic import generate_dataset

    from mirror import TINY

    data = generate_dataset(TINY, tmp_path / "mine").parent
    sheet = pd.read_csv(data / "slides.csv", keep_default_na=False, dtype=str)
    (data / "slides" / "normal_002.tif").write_bytes(b"this is not a TIFF file" * 100)  # unreadable
    bad_note = sheet.loc[sheet["slide_id"] == "tumor_002", "annotation"].item()
    (data / bad_note).write_text("<ASAP_Annotations><Annotations><Annotation")  # does not parse
    (data / "slides" / "test_001.tif").unlink()  # named in the sheet, not there
    return data / "slides.csv"


def test_bad_slides_fail_their_own_jobs_and_the_rest_goes_on(tmp_path):
    sheet = _sheet_dataset(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ROOT / "config.yaml", work / "config.yaml")
    config = {**SMALL, "dataset": {"name": "mine", "source": "sheet", "sheet": str(sheet)}}
    proc = snakemake(work, config, "--keep-going", check=False)
    assert proc.returncode != 0
    logs = work / "results" / "mine" / "logs" / "patch"
    assert "normal_002.tif" in (logs / "normal_002.log").read_text()
    assert "dataset.exclude" in (logs / "normal_002.log").read_text()  # the way out is in the message
    assert "tumor_002.xml" in (logs / "tumor_002.log").read_text()
    assert "test_001.tif" in (logs / "test_001.log").read_text() and "not found" in (logs / "test_001.log").read_text()
    patches = work / "results" / "mine" / "patches"
    done = {p.stem for p in patches.rglob("*.h5")}
    assert done == set(pd.read_csv(sheet)["slide_id"]) - {"normal_002", "tumor_002", "test_001"}
    # leaving them out finishes the run from what is done; the summary lists them
    config["dataset"]["exclude"] = ["normal_002", "tumor_002", "test_001"]
    proc = snakemake(work, config)
    assert "rule patch:" not in proc.stdout + proc.stderr.split("Job stats")[0]  # no patching redone
    summary = (work / "results" / "mine" / "SUMMARY.md").read_text()
    for sid in ("normal_002", "tumor_002", "test_001"):
        assert f"`{sid}`: dataset.exclude" in summary


def test_bring_your_own_features_trains_from_trident_h5(tmp_path):
    """dataset.source features: TRIDENT-style h5 files and a labels sheet, no slides, to tables and summary."""
    import h5py
    import numpy as np

    rng = np.random.default_rng(0)
    src = tmp_path / "byof" / "h5_files"
    src.mkdir(parents=True)
    rows = ["slide_id,label,split,center,path,annotation"]
    for split, n in (("train", 8), ("val", 4), ("test", 6)):
        for i in range(n):
            sid, label = f"{split}_{i:02d}", i % 2
            feats = rng.normal(size=(30, 16)).astype(np.float32)
            if label:
                feats[:3, 0] += 6.0  # a few tumour patches carry the signal
            with h5py.File(src / f"{sid}.h5", "w") as f:
                f.create_dataset("features", data=feats)
                c = f.create_dataset("coords", data=np.stack([np.arange(30) * 512, np.zeros(30)], 1).astype(np.int64))
                c.attrs["patch_size_level0"] = 512
            rows.append(f"{sid},{label},{split},{i % 2},,")
    (tmp_path / "byof" / "labels.csv").write_text("\n".join(rows) + "\n")
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ROOT / "config.yaml", work / "config.yaml")
    config = {"dataset": {"name": "byof", "source": "features", "sheet": str(tmp_path / "byof" / "labels.csv")},
              "imported_features": {"format": "h5", "dir": str(src)},
              "training": {"methods": ["maxpool", "abmil"], "seeds": [0], "max_epochs": 20, "device": "cpu"},
              "experiments": ["standard"]}
    snakemake(work, config)
    out = work / "results" / "byof"
    table = pd.read_csv(out / "tables" / "standard.csv")
    assert list(table["method"]) == ["maxpool", "abmil"]
    assert table.set_index("method").loc["maxpool", "slide_auc_mean"] >= 0.9  # a separable toy: learnt
    stored = h5py.File(out / "features" / "imported_h5" / "clean" / "train_01.h5", "r")
    assert stored.attrs["extractor"] == "imported:h5" and stored["features"].shape == (30, 16)
    assert not (out / "patches").exists() and not (out / "tables" / "slides.csv").exists()
    metrics = __import__("json").loads((out / "runs" / "standard" / "maxpool" / "seed0" / "metrics.json").read_text())
    assert metrics["patch_metrics_skipped_reason"]  # no annotations: skipped, with the reason
    # poison needs pixels: refused at the start with a message
    bad = {**config, "experiments": ["standard", "poison"]}
    proc = snakemake(work, bad, "-n", check=False)
    assert proc.returncode != 0 and "need slides" in proc.stdout + proc.stderr
