"""Public dataset sources: the CAMELYON16 download stage against a miniature mirror on 127.0.0.1, the sample
sheets built from each dataset's own label files, subsets, corrections and splits."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mirror import MirrorServer, build_camelyon16_mirror

from wsimil.config import validate_config
from wsimil.datasets.sheet import read_sheet
from wsimil.datasets.sources import SOURCES, assign_splits, plan_source, sheet_for
from wsimil.io import WsimilError

WSIMIL = [sys.executable, "-m", "wsimil"]


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    root = build_camelyon16_mirror(tmp_path_factory.mktemp("bucket") / "CAMELYON16")
    server = MirrorServer(root.parent)
    yield root, server
    server.close()


def _config(server, tmp_path, **download):
    return validate_config({"dataset": {"name": "c16", "source": "camelyon16"},
                            "download": {"base_url": f"{server.url}/CAMELYON16", "dir": str(tmp_path / "c16"),
                                         "retries": 2, **download}})


def _download(plan, rels, **kw):
    """The download rule's command for some files of a plan."""
    cmd = WSIMIL + ["download", "--retries", "3", "--url"] + [plan.files[r].url for r in rels]
    cmd += ["--out"] + [str(plan.local(r)) for r in rels] + ["--md5"] + [plan.files[r].md5 or "-" for r in rels]
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def test_camelyon16_sheet_from_reference_csv(mirror, tmp_path, capsys):
    root, server = mirror
    plan = plan_source(_config(server, tmp_path))
    ref = pd.read_csv(root / "evaluation" / "reference.csv")
    sheet = plan.sheet.set_index("slide_id")
    assert len(sheet) == len(ref) == 10
    for r in ref.itertuples():  # every label comes from reference.csv
        sid = r.image.removesuffix(".tif")
        assert sheet.loc[sid, "label"] == int(r.type == "tumor")
        assert sheet.loc[sid, "center"] == str(r.center)
        assert sheet.loc[sid, "split"] == ("test" if sid.startswith("test_") else sheet.loc[sid, "split"])
        assert (sheet.loc[sid, "annotation"] != "") == (r.type == "tumor")
    assert set(sheet.loc[[s for s in sheet.index if not s.startswith("test_")], "split"]) == {"train", "val"}
    # every slide file and annotation has the MD5 of checksums.md5 (prefix CAMELYON16/ stripped)
    assert plan.files["images/normal_001.tif"].md5 == hashlib.md5((root / "images/normal_001.tif").read_bytes()).hexdigest()
    assert plan.files["images/normal_001.tif"].url == f"{server.url}/CAMELYON16/images/normal_001.tif"
    assert all(f.md5 for f in plan.files.values())
    err = capsys.readouterr().err
    assert "normal_086 is tumor_111" in err  # the corrections are printed
    # the sheet a workflow writes validates, with paths relative to it
    out = tmp_path / "results" / "slides.csv"
    out.parent.mkdir()
    sheet_for(plan, out).to_csv(out, index=False)
    back = read_sheet(out)
    assert (out.parent / back.loc[0, "path"]).resolve() == (tmp_path / "c16" / plan.sheet.loc[0, "path"]).resolve()


def test_download_stage_against_the_mirror(mirror, tmp_path):
    """Complete download, resume after a cut half-way, a corrupted transfer fetched again, a 500 retried, a 404
    named: each through `wsimil download`, the command the download rule runs."""
    root, server = mirror
    plan = plan_source(_config(server, tmp_path))
    slide, note = "images/tumor_001.tif", "annotations/tumor_001.xml"
    url_path = f"/CAMELYON16/{slide}"
    server.faults = {url_path: ["cut", "corrupt", "500"]}
    server.requests.clear()
    res = _download(plan, [slide, note])
    assert res.returncode == 0, res.stderr
    assert plan.local(slide).read_bytes() == (root / slide).read_bytes()
    assert plan.local(note).read_bytes() == (root / note).read_bytes()
    assert not plan.local(slide).with_name("tumor_001.tif.part").exists()
    ranges = [r for p, r in server.requests if p == url_path]
    size = (root / slide).stat().st_size
    assert ranges[0] is None and ranges[1] == f"bytes={size // 2}-"  # resumed after the cut
    assert "MD5 mismatch" in res.stderr and "HTTP 500" in res.stderr and "retrying" in res.stderr
    # finished files are not fetched again
    server.requests.clear()
    assert _download(plan, [slide]).returncode == 0 and server.requests == []
    # a file missing at the source: its URL is named, the other file of the call still completes
    (root / "images" / "normal_002.tif").rename(root / "images" / "gone.tif")
    try:
        res = _download(plan, ["images/normal_002.tif", "images/normal_001.tif"])
    finally:
        (root / "images" / "gone.tif").rename(root / "images" / "normal_002.tif")
    assert res.returncode == 2
    assert "normal_002.tif: HTTP 404" in res.stderr and "1 of 2 file(s) failed" in res.stderr
    assert plan.local("images/normal_001.tif").is_file() and not plan.local("images/normal_002.tif").exists()


def test_camelyon16_corrections_and_subsets(tmp_path):
    root = tmp_path / "c16"
    (root / "evaluation").mkdir(parents=True)
    ids = ([f"normal_{i:03d}" for i in (1, 2, 3, 86)] + [f"tumor_{i:03d}" for i in (1, 2, 3)]
           + [f"test_{i:03d}" for i in (48, 49, 114, 115)])
    rows = ["image,type,class,center"] + [
        f"{s}.tif,{'normal' if s.startswith('normal') or s in ('test_048',) else 'tumor'},x,{i % 2}"
        for i, s in enumerate(ids)]
    (root / "evaluation" / "reference.csv").write_text("\n".join(rows) + "\n")
    (root / "checksums.md5").write_text("")

    def plan(exclude=(), **dl):
        cfg = validate_config({"dataset": {"source": "camelyon16", "exclude": list(exclude)},
                               "download": {"dir": str(root), **dl}})
        return plan_source(cfg)

    p = plan()
    s = p.sheet.set_index("slide_id")
    assert "test_049" not in s.index and "test_049" in p.left_out  # duplicate: always out
    assert "test_114" in s.index and s.loc["test_114", "label"] == 1  # kept by default
    assert s.loc["normal_086", "label"] == 1  # an old release without tumor_111: relabelled
    assert "test_114" not in plan(camelyon16_test_114="exclude").sheet["slide_id"].tolist()
    sub = plan(first_n_per_class=1).sheet
    assert sorted(sub["slide_id"]) == ["normal_001", "normal_086", "test_048", "test_114"]  # normal_086 is a tumour
    assert plan(slides=["tumor_002", "test_115"]).sheet["slide_id"].tolist() == ["test_115", "tumor_002"]
    p = plan(exclude=["tumor_003"])
    assert "tumor_003" not in p.sheet["slide_id"].tolist() and p.left_out["tumor_003"] == "dataset.exclude"
    with pytest.raises(WsimilError, match=r"download.slides.*test_049"):
        plan(slides=["test_049"])


def test_metadata_missing_at_the_source_names_file_and_fix(mirror, tmp_path):
    _, server = mirror
    cfg = validate_config({"dataset": {"source": "camelyon16"},
                           "download": {"base_url": f"{server.url}/nothing", "dir": str(tmp_path / "x"), "retries": 0}})
    with pytest.raises(WsimilError, match=r"evaluation/reference.csv.*HTTP 404.*download.base_url"):
        plan_source(cfg)


def test_camelyon17_sheet_from_stage_labels(tmp_path):
    root = tmp_path / "c17"
    root.mkdir()
    lines = ["patient,stage"]
    for p in range(0, 200, 7):
        lines.append(f"patient_{p:03d}.zip,pN1" if p < 100 else f"patient_{p:03d}.zip,")
        for n in range(5):
            stage = ["negative", "itc", "micro", "macro", "negative"][(p + n) % 5] if p < 100 else ""
            lines.append(f"patient_{p:03d}_node_{n}.tif,{stage}")
    (root / "stage_labels.csv").write_text("\n".join(lines) + "\n")
    (root / "checksums.md5").write_text(f"{'0' * 32}  CAMELYON17/annotations/patient_007_node_2.xml\n")
    cfg = validate_config({"dataset": {"source": "camelyon17"}, "download": {"dir": str(root)}})
    plan = plan_source(cfg)
    s = plan.sheet.set_index("slide_id")
    assert len(s) == 15 * 5  # patients 0..98 step 7; the unlabelled test patients are left out
    assert s.loc["patient_007_node_3", "label"] == 0 and s.loc["patient_007_node_4", "source_class"] == "itc"
    assert s.loc["patient_007_node_4", "label"] == 1  # itc counts as a metastasis
    assert s.loc["patient_021_node_0", "center"] == "1" and s.loc["patient_098_node_0", "center"] == "4"
    assert s.loc["patient_007_node_2", "annotation"] == "annotations/patient_007_node_2.xml"
    assert s.loc["patient_007_node_3", "annotation"] == ""
    # no official labelled test set here: a patient-level draw; a patient never spans two splits
    assert s.groupby("patient")["split"].nunique().max() == 1
    assert set(s["split"]) == {"train", "val", "test"}
    assert any("have no stage" in n for n in plan.notes)


def _gdc_manifest(path, barcodes):
    rows = ["id\tfilename\tmd5\tsize\tstate"]
    for i, b in enumerate(barcodes):
        rows.append(f"{i:08x}-0000-4000-8000-{i:012x}\t{b}.svs\t{'a' * 32}\t{1000 + i}\treleased")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_tcga_sheet_from_gdc_manifests(tmp_path):
    luad = _gdc_manifest(tmp_path / "luad.txt", [f"TCGA-05-{i:04d}-01Z-00-DX1.ABC" for i in range(10)]
                         + ["TCGA-05-0000-01Z-00-DX2.ABD"])  # a second slide of patient TCGA-05-0000
    lusc = _gdc_manifest(tmp_path / "lusc.txt", [f"TCGA-18-{i:04d}-01Z-00-DX1.DEF" for i in range(10)])
    cfg = validate_config({"dataset": {"source": "tcga-nsclc"},
                           "download": {"dir": str(tmp_path / "tcga"), "tcga_manifests": {"LUAD": str(luad), "LUSC": str(lusc)}}})
    plan = plan_source(cfg)
    s = plan.sheet.set_index("slide_id")
    assert len(s) == 21 and s.loc["TCGA-18-0003-01Z-00-DX1.DEF", "label"] == 1 and s.loc["TCGA-05-0003-01Z-00-DX1.ABC", "label"] == 0
    assert s.loc["TCGA-05-0000-01Z-00-DX2.ABD", "split"] == s.loc["TCGA-05-0000-01Z-00-DX1.ABC", "split"]
    assert s.loc["TCGA-18-0001-01Z-00-DX1.DEF", "center"] == "18"
    f = plan.files["slides/TCGA-18-0001-01Z-00-DX1.DEF.svs"]
    assert f.url == "https://api.gdc.cancer.gov/data/00000001-0000-4000-8000-000000000001" and f.size == 1001
    assert set(s["split"]) == {"train", "val", "test"}
    # the same slide in both manifests, and a file that is not a manifest, are named
    _gdc_manifest(lusc, ["TCGA-05-0001-01Z-00-DX1.ABC"])
    with pytest.raises(WsimilError, match="TCGA-05-0001-01Z-00-DX1.ABC is in two manifests"):
        plan_source(cfg)
    lusc.write_text("a,b\n1,2\n")
    with pytest.raises(WsimilError, match=r"lusc.txt: not a GDC manifest"):
        plan_source(cfg)


def test_splits_are_seeded_stratified_and_by_patient():
    cat = pd.DataFrame({"slide_id": [f"s{i}" for i in range(40)], "label": [i % 2 for i in range(40)],
                        "source_split": ["train"] * 40, "patient": [f"p{i // 2}" for i in range(40)]})
    dl = {"split_seed": 0, "val_fraction": 0.1, "test_fraction": 0.3}
    a, b = assign_splits(cat, dl), assign_splits(cat, dl)
    assert (a == b).all()
    assert not (a == assign_splits(cat, {**dl, "split_seed": 1})).all()
    assert cat.assign(split=a).groupby("patient")["split"].nunique().max() == 1
    counts = a.value_counts()
    assert counts["test"] == 12 and counts["val"] == 2  # 6 of 20 patients, then 1 of the 14 left


def test_sources_registry_matches_the_schema():
    from wsimil.config import load_schema

    enum = load_schema()["properties"]["dataset"]["properties"]["source"]["enum"]
    assert set(SOURCES) == set(enum) - {"synthetic", "sheet", "features"}


def test_sheet_rows_are_validated_against_the_schema(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("slide_id,label,split,center,path,annotation\n../etc,2,tr,0,a.tif,\nok,1,test,0,b.tif,\n")
    with pytest.raises(WsimilError) as err:
        read_sheet(p)
    msg = str(err.value)
    assert str(p) in msg and "line 2: label: 2 is not one of [0, 1]" in msg, msg
    assert "line 2: split: 'tr' is not one of" in msg and "line 2: slide_id: '../etc' does not match" in msg, msg
    assert "line 3" not in msg


def test_dataset_command_writes_sheet_manifest_and_notes(tmp_path):
    root = tmp_path / "c16"
    (root / "evaluation").mkdir(parents=True)
    (root / "evaluation" / "reference.csv").write_text(
        "image,type,class,center\nnormal_001.tif,normal,negative,0\ntumor_001.tif,tumor,macro,1\n"
        "test_001.tif,tumor,micro,0\ntest_049.tif,tumor,macro,1\n")
    (root / "checksums.md5").write_text(f"{'a' * 32}  CAMELYON16/images/normal_001.tif\n"
                                        f"{'b' * 32}  CAMELYON16/annotations/tumor_001.xml\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"dataset: {{source: camelyon16}}\ndownload: {{dir: {root}, val_fraction: 0.0}}\n")
    out = tmp_path / "out"
    res = subprocess.run(WSIMIL + ["dataset", "--config", str(cfg), "--sheet", str(out / "slides.csv"), "--manifest",
                                   str(out / "files.csv"), "--notes", str(out / "notes.txt")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    sheet = read_sheet(out / "slides.csv")
    assert list(sheet["slide_id"]) == ["normal_001", "test_001", "tumor_001"]
    assert (out / sheet.loc[2, "annotation"]).resolve() == (root / "annotations" / "tumor_001.xml").resolve()
    assert sheet.loc[1, "annotation"] == ""  # tumour test slide with no annotation in checksums.md5
    files = pd.read_csv(out / "files.csv", keep_default_na=False)
    assert len(files) == 4 and files.set_index("url").loc[
        "https://camelyon-dataset.s3.amazonaws.com/CAMELYON16/images/normal_001.tif", "md5"] == "a" * 32
    assert "test_049: left out (a duplicate" in (out / "notes.txt").read_text()
