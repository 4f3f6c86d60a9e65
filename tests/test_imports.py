"""Bring your own features: CLAM/TRIDENT h5, CLAM pt and DSMIL csv imported into the feature store."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from wsimil.cli import main
from wsimil.datasets.imports import import_slide, patch_size_from_attrs, source_path
from wsimil.features.store import read_features
from wsimil.io import WsimilError
from wsimil.slides.annotations import write_asap_xml

# A 4 x 4 grid of 128-px (level-0) patches and a tumour square (100, 100)-(300, 300), by hand:
# patch (0, 0): 28 x 28 px inside; (128, 0): 128 x 28; (256, 0): 44 x 28; (128, 128): all of it; ...
SIZE = 128
YS, XS = np.mgrid[0:4, 0:4]
COORDS = np.stack([XS.ravel(), YS.ravel()], axis=1) * SIZE  # (16, 2) level-0 top-left, row-major
SQUARE = np.array([[100, 100], [300, 100], [300, 300], [100, 300]], dtype=float)
_SIDE = {0: 28, 1: 128, 2: 44, 3: 0}  # px of the square within grid row/column 0..3
EXPECTED_TF = np.array([_SIDE[x] * _SIDE[y] / SIZE**2 for x, y in zip(XS.ravel(), YS.ravel())], dtype=np.float32)


def _annotation(tmp_path: Path, name: str = "t.xml") -> Path:
    path = tmp_path / "annotations" / name
    write_asap_xml(path, [SQUARE])
    return path


def _feats(n: int = 16, d: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def _clam_h5(path: Path, feats: np.ndarray, coords: np.ndarray, attrs: dict | None = None) -> Path:
    """As CLAM writes h5_files (chunked, resizable; int32 coords); ``attrs`` on coords as its patch files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=feats, maxshape=(None, feats.shape[1]), chunks=(8, feats.shape[1]))
        c = f.create_dataset("coords", data=coords.astype(np.int32), maxshape=(None, 2), chunks=(8, 2))
        for k, v in (attrs or {}).items():
            c.attrs[k] = v
    return path


def _trident_h5(path: Path, feats: np.ndarray, coords: np.ndarray) -> Path:
    """As TRIDENT writes features: attributes on ``features`` (name, savetodir, encoder) and ``coords``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        d = f.create_dataset("features", data=feats[None])  # (1, N, D)
        d.attrs.update({"name": path.stem, "savetodir": str(path.parent), "encoder": "uni_v1"})
        c = f.create_dataset("coords", data=coords.astype(np.int64))
        c.attrs.update({"patch_size": 256, "patch_size_level0": 2 * 256 // 4, "level0_magnification": 40,
                        "target_magnification": 20, "overlap": 0, "name": path.stem, "savetodir": "x",
                        "level0_width": 512, "level0_height": 512})
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------------- h5
def test_h5_clam_layout_with_patch_attrs(tmp_path):
    x = _feats()
    src = _clam_h5(tmp_path / "h5_files" / "tumor_001.h5", x, COORDS,
                   {"patch_size": 64, "patch_level": 1, "downsample": np.array([2.0, 2.0]),
                    "downsampled_level_dim": np.array([256, 256]), "level_dim": np.array([256, 256]),
                    "name": "tumor_001", "save_path": "patches"})
    out = tmp_path / "features" / "tumor_001.h5"
    s = import_slide(src, "h5", out, "tumor_001", _annotation(tmp_path), 1, None)
    assert s["n_patches"] == 16 and s["feature_dim"] == 6 and s["level0_size"] == SIZE
    bag = read_features(out)
    assert bag.features.dtype == np.float16
    np.testing.assert_array_equal(bag.features, x.astype(np.float16))
    np.testing.assert_array_equal(bag.coords, COORDS)
    assert bag.coords.dtype == np.int64
    np.testing.assert_allclose(bag.tumor_fraction, EXPECTED_TF, atol=1e-6)
    assert bag.tumor_fraction[5] == 1.0 and bag.tumor_fraction[0] == pytest.approx(784 / 16384)
    a = bag.attrs
    assert a["extractor"] == "imported:h5" and a["source_format"] == "h5" and a["slide_id"] == "tumor_001"
    assert a["source_path"] == str(src.resolve()) and a["source_sha256"] == _sha(src)
    assert a["coords_available"] and a["level0_size"] == SIZE and "downsample" in a["patch_size_level0_source"]
    assert a["tumor_fraction_source"] == "annotation" and "patch_labels_skipped_reason" not in a
    assert a["feature_dim"] == 6 and a["dtype"] == "float16"


def test_h5_trident_layout_and_float32(tmp_path):
    x = _feats(d=5)
    src = _trident_h5(tmp_path / "features_uni_v1" / "tumor_002.h5", x, COORDS)
    out = tmp_path / "out" / "tumor_002.h5"
    import_slide(src, "h5", out, "tumor_002", _annotation(tmp_path), 1, None, dtype="float32")
    bag = read_features(out)
    assert bag.features.shape == (16, 5) and bag.features.dtype == np.float32
    np.testing.assert_array_equal(bag.features, x)
    np.testing.assert_array_equal(bag.coords, COORDS)
    assert bag.attrs["level0_size"] == SIZE and "patch_size_level0" in bag.attrs["patch_size_level0_source"]
    assert bag.attrs["source_encoder"] == "uni_v1"
    np.testing.assert_allclose(bag.tumor_fraction, EXPECTED_TF, atol=1e-6)


def test_h5_clam_features_file_without_attrs_needs_the_patch_size(tmp_path):
    """CLAM's extract_features_fp.py writes h5_files with no attributes at all."""
    src = _clam_h5(tmp_path / "h5" / "t.h5", _feats(), COORDS)
    ann = _annotation(tmp_path)
    import_slide(src, "h5", tmp_path / "a.h5", "t", ann, 1, None)
    bag = read_features(tmp_path / "a.h5")
    assert bag.tumor_fraction is None and "level0_size" not in bag.attrs
    assert "patch_size_level0" in bag.attrs["patch_labels_skipped_reason"]
    import_slide(src, "h5", tmp_path / "b.h5", "t", ann, 1, SIZE)
    bag = read_features(tmp_path / "b.h5")
    np.testing.assert_allclose(bag.tumor_fraction, EXPECTED_TF, atol=1e-6)
    assert bag.attrs["patch_size_level0_source"] == "imported_features.patch_size_level0"
    # a normal slide without annotation: all-normal patches, as `wsimil patch` writes
    import_slide(src, "h5", tmp_path / "c.h5", "t", None, 0, None)
    bag = read_features(tmp_path / "c.h5")
    assert bag.attrs["tumor_fraction_source"] == "normal slide" and not bag.tumor_fraction.any()
    # a tumour slide without annotation: unknown
    import_slide(src, "h5", tmp_path / "d.h5", "t", "", 1, SIZE)
    bag = read_features(tmp_path / "d.h5")
    assert bag.tumor_fraction is None and "without annotation" in bag.attrs["patch_labels_skipped_reason"]


def test_patch_size_from_attrs():
    assert patch_size_from_attrs({"patch_size": 256, "patch_level": 0})[0] == 256
    assert patch_size_from_attrs({"patch_size": 256, "patch_level": 1, "downsample": (4.0002, 4.0002)})[0] == 1024
    assert patch_size_from_attrs({"patch_size": 256, "patch_level": 0, "custom_downsample": 2})[0] == 512
    assert patch_size_from_attrs({"patch_size": 224, "level0_magnification": 40, "target_magnification": 20,
                                  "patch_size_level0": "None"})[0] == 448
    size, why = patch_size_from_attrs({"patch_size": 256, "patch_level": 2})
    assert size is None and "not guessed" in why
    size, why = patch_size_from_attrs({})
    assert size is None and "no patch size" in why


def test_h5_bad_shapes_are_refused(tmp_path):
    p = tmp_path / "s.h5"
    with h5py.File(p, "w") as f:
        f["features"] = np.zeros((2, 16, 4), np.float32)
        f["coords"] = COORDS
    with pytest.raises(WsimilError, match=r"s\.h5.*\(N, D\) or \(1, N, D\).*\(2, 16, 4\)"):
        import_slide(p, "h5", tmp_path / "o.h5", "s", None, 0, None)
    with h5py.File(p, "w") as f:
        f["features"] = np.zeros((16, 4), np.float32)
        f["coords"] = COORDS[:10]
    with pytest.raises(WsimilError, match="16 feature rows but 10 coords"):
        import_slide(p, "h5", tmp_path / "o.h5", "s", None, 0, None)
    assert not (tmp_path / "o.h5").exists()


# ------------------------------------------------------------------------------------------------------- pt
def test_pt_tensor_has_no_coords(tmp_path):
    x = torch.from_numpy(_feats(n=9, d=4))
    src = tmp_path / "pt_files" / "tumor_003.pt"
    src.parent.mkdir()
    torch.save(x, src)
    out = tmp_path / "f" / "tumor_003.h5"
    s = import_slide(src, "pt", out, "tumor_003", _annotation(tmp_path), 1, SIZE)
    assert not s["coords_available"]
    with h5py.File(out, "r") as f:
        assert "coords" not in f and "tumor_fraction" not in f  # absent, not zeros
    bag = read_features(out)
    np.testing.assert_array_equal(bag.features, x.numpy().astype(np.float16))
    assert not bag.attrs["coords_available"]
    assert bag.attrs["extractor"] == "imported:pt" and bag.attrs["source_sha256"] == _sha(src)
    assert "no patch coordinates" in bag.attrs["patch_labels_skipped_reason"]
    assert "level0_size" not in bag.attrs  # nothing can place these patches on the slide
    # a normal slide: zeros (a normal slide has no tumour, wherever its patches are)
    import_slide(src, "pt", tmp_path / "n.h5", "n", None, 0, None)
    bag = read_features(tmp_path / "n.h5")
    assert bag.tumor_fraction.shape == (9,) and not bag.tumor_fraction.any()


class _Payload:
    """Unpickling this would run ``_ran``: weights_only must refuse before that."""

    def __reduce__(self):
        return (_ran, ())


RAN: list[int] = []


def _ran():
    RAN.append(1)
    return "ran"


def test_pt_pickled_objects_are_refused(tmp_path):
    p = tmp_path / "evil.pt"
    torch.save({"features": torch.zeros(3, 2), "obj": _Payload()}, p)
    with pytest.raises(WsimilError, match=r"evil\.pt: refused: not a plain tensor") as exc:
        import_slide(p, "pt", tmp_path / "o.h5", "evil", None, 0, None)
    assert "weights_only=False" not in str(exc.value)  # never PyTorch's advice to unpickle it after all
    assert RAN == []
    p = tmp_path / "lam.pt"
    torch.save({"features": torch.zeros(3, 2)}, p)  # loads under weights_only, but is not a tensor
    with pytest.raises(WsimilError, match=r"lam\.pt: holds a dict, not a tensor"):
        import_slide(p, "pt", tmp_path / "o.h5", "lam", None, 0, None)
    p = tmp_path / "np.pt"
    torch.save(np.zeros((3, 2), np.float32), p)  # what TRIDENT's saveas='pt' writes: a numpy array
    with pytest.raises(WsimilError, match=r"np\.pt: refused"):
        import_slide(p, "pt", tmp_path / "o.h5", "np", None, 0, None)
    p = tmp_path / "int.pt"
    torch.save(torch.zeros(3, 2, dtype=torch.int64), p)
    with pytest.raises(WsimilError, match=r"int\.pt: the tensor must be floating point"):
        import_slide(p, "pt", tmp_path / "o.h5", "int", None, 0, None)
    assert not (tmp_path / "o.h5").exists()


# ------------------------------------------------------------------------------------------------------ csv
def test_csv_dsmil_layout(tmp_path):
    x = _feats(n=7, d=5).astype(np.float64)
    src = tmp_path / "datasets" / "C16" / "1-tumor" / "tumor_004.csv"
    src.parent.mkdir(parents=True)
    pd.DataFrame(x).to_csv(src, index=False, float_format="%.4f")  # as DSMIL's compute_feats.py
    found = source_path(tmp_path / "datasets" / "C16", "tumor_004", "csv")  # found in its class sub-folder
    assert found == src
    out = tmp_path / "f" / "tumor_004.h5"
    import_slide(found, "csv", out, "tumor_004", _annotation(tmp_path), 1, None)
    bag = read_features(out)
    np.testing.assert_array_equal(bag.features, np.round(x, 4).astype(np.float16))
    assert bag.attrs["extractor"] == "imported:csv" and bag.attrs["source_sha256"] == _sha(src)
    assert bag.tumor_fraction is None
    assert "CSV files carry no patch coordinates" in bag.attrs["patch_labels_skipped_reason"]


def test_csv_errors_name_file_row_and_column(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("0,1,2\n0.1,0.2,0.3\n0.4,abc,0.6\n")
    with pytest.raises(WsimilError, match=r"s\.csv: non-numeric value 'abc' at row 2 \(line 3\), column '1'"):
        import_slide(p, "csv", tmp_path / "o.h5", "s", None, 0, None)
    p.write_text("0.5,0.2,0.3\n0.1,0.2,0.3\n")  # no header: the first patch would become the header
    with pytest.raises(WsimilError, match="looks like data, not a header"):
        import_slide(p, "csv", tmp_path / "o.h5", "s", None, 0, None)
    p.write_text("0,1,2\n0.1,,0.3\n")
    with pytest.raises(WsimilError, match=r"s\.csv: 1 NaN or infinite feature values .*patch 0, dimension 1"):
        import_slide(p, "csv", tmp_path / "o.h5", "s", None, 0, None)
    p.write_text("0,1,2\n")
    with pytest.raises(WsimilError, match=r"s\.csv: empty bag"):
        import_slide(p, "csv", tmp_path / "o.h5", "s", None, 0, None)
    assert not (tmp_path / "o.h5").exists()


# ------------------------------------------------------------------------------------------- shared checks
def test_nan_dim_empty_overflow_and_missing_file(tmp_path):
    x = _feats()
    x[3, 1] = np.nan
    x[7, 0] = np.inf
    src = _clam_h5(tmp_path / "nan.h5", x, COORDS)
    with pytest.raises(WsimilError, match=r"nan\.h5: 2 NaN or infinite feature values in 2 of 16 patches"):
        import_slide(src, "h5", tmp_path / "o.h5", "nan", None, 0, None)
    src = _clam_h5(tmp_path / "dim.h5", _feats(d=6), COORDS)
    with pytest.raises(WsimilError, match=r"dim\.h5: feature dimension 6, but the other slides have 1024"):
        import_slide(src, "h5", tmp_path / "o.h5", "dim", None, 0, None, expected_dim=1024)
    src = _clam_h5(tmp_path / "empty.h5", np.zeros((0, 6), np.float32), np.zeros((0, 2), np.int64))
    with pytest.raises(WsimilError, match=r"empty\.h5: empty bag"):
        import_slide(src, "h5", tmp_path / "o.h5", "empty", None, 0, None)
    with h5py.File(tmp_path / "trident_empty.h5", "w") as f:  # TRIDENT's file for a slide without patches
        f["features"] = np.empty((0,), np.float32)
        f["coords"] = np.empty((0, 2), np.int64)
    with pytest.raises(WsimilError, match=r"trident_empty\.h5: empty bag"):
        import_slide(tmp_path / "trident_empty.h5", "h5", tmp_path / "o.h5", "e", None, 0, None)
    src = _clam_h5(tmp_path / "big.h5", _feats() * 1e5, COORDS)
    with pytest.raises(WsimilError, match="overflow float16.*float32"):
        import_slide(src, "h5", tmp_path / "o.h5", "big", None, 0, None)
    assert not (tmp_path / "o.h5").exists()
    (tmp_path / "src").mkdir()
    for i in range(7):
        (tmp_path / "src" / f"other_{i}.pt").touch()
    with pytest.raises(WsimilError) as exc:
        source_path(tmp_path / "src", "tumor_009", "pt")
    msg = str(exc.value)
    assert str(tmp_path / "src" / "tumor_009.pt") in msg and "other_0.pt" in msg and "other_4.pt" in msg
    assert "other_5.pt" not in msg and "7 in all" in msg
    with pytest.raises(WsimilError, match="annotation file not found"):
        import_slide(_clam_h5(tmp_path / "ok.h5", _feats(), COORDS), "h5", tmp_path / "o.h5", "ok",
                     tmp_path / "nope.xml", 1, SIZE)


# ---------------------------------------------------------------------------------------------------- CLI
def _write_sheet(root: Path, rows: list[dict]) -> Path:
    sheet = root / "slides.csv"
    columns = ["slide_id", "label", "split", "center", "path", "annotation"]
    pd.DataFrame(rows, columns=columns).to_csv(sheet, index=False)
    return sheet


def test_cli_import_several_slides_and_errors(tmp_path, capsys):
    root = tmp_path / "ds"
    _annotation(root, "t1.xml")
    _clam_h5(root / "h5" / "t1.h5", _feats(d=4), COORDS)
    _clam_h5(root / "h5" / "n1.h5", _feats(d=4, seed=1), COORDS)
    _clam_h5(root / "h5" / "n2.h5", _feats(d=3, seed=2), COORDS)
    sheet = _write_sheet(root, [
        {"slide_id": "t1", "label": 1, "split": "train", "center": 0, "path": "", "annotation": "annotations/t1.xml"},
        {"slide_id": "n1", "label": 0, "split": "train", "center": 0, "path": "", "annotation": ""},
        {"slide_id": "n2", "label": 0, "split": "test", "center": 0, "path": "", "annotation": ""},
    ])
    outs = [str(tmp_path / "f" / f"{s}.h5") for s in ("t1", "n1")]
    code = main(["import-features", "--format", "h5", "--src-dir", str(root / "h5"), "--sheet", str(sheet),
                 "--slide-id", "t1", "n1", "--out", *outs, "--patch-size-level0", str(SIZE)])
    assert code == 0
    np.testing.assert_allclose(read_features(outs[0]).tumor_fraction, EXPECTED_TF, atol=1e-6)
    assert not read_features(outs[1]).tumor_fraction.any()
    # the odd one out first: named against the majority's dimension, and nothing of the import is left behind
    g = tmp_path / "g"
    code = main(["import-features", "--format", "h5", "--src-dir", str(root / "h5"), "--sheet", str(sheet),
                 "--slide-id", "n2", "t1", "n1", "--out", str(g / "n2.h5"), str(g / "t1.h5"), str(g / "n1.h5"),
                 "--patch-size-level0", str(SIZE)])
    err = capsys.readouterr().err
    assert code == 2 and f"2 of 3 files are 4-d, but {root / 'h5' / 'n2.h5'} (3)" in err, err
    assert not g.exists() or not list(g.iterdir())
    code = main(["import-features", "--format", "pt", "--src-dir", str(root / "h5"), "--sheet", str(sheet),
                 "--slide-id", "t1", "--out", str(tmp_path / "g" / "t1.h5")])
    err = capsys.readouterr().err
    assert code == 2 and str(root / "h5" / "t1.pt") in err and "n1.h5" in err
    code = main(["import-features", "--format", "h5", "--src-dir", str(root / "h5"), "--sheet", str(sheet),
                 "--slide-id", "zz", "--out", str(tmp_path / "g" / "zz.h5")])
    assert code == 2 and "not in the sample sheet" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- end to end (no Snakemake)
def test_import_train_evaluate_end_to_end(tmp_path):
    """Imported h5 features (tumour patches shifted) -> `wsimil train maxpool` -> `wsimil evaluate`: AUC 1."""
    t0 = time.perf_counter()
    root = tmp_path / "byo"
    rng = np.random.default_rng(0)
    rows = []
    plan = [("train", 0), ("train", 1)] * 3 + [("val", 0), ("val", 1)] + [("test", 0), ("test", 1)] * 2
    for i, (split, label) in enumerate(plan):
        sid = f"{'tumor' if label else 'normal'}_{i:03d}"
        x = rng.normal(size=(16, 8)).astype(np.float32)
        ann = ""
        if label:
            write_asap_xml(root / "annotations" / f"{sid}.xml", [SQUARE])
            ann = f"annotations/{sid}.xml"
            x[EXPECTED_TF > 0.5] += 4.0  # the tumour patches (here the one fully inside the square) stand out
        _clam_h5(root / "h5_files" / f"{sid}.h5", x, COORDS,
                 {"patch_size": SIZE, "patch_level": 0, "downsample": np.array([1.0, 1.0])})
        rows.append({"slide_id": sid, "label": label, "split": split, "center": i % 2, "path": "", "annotation": ann})
    sheet = _write_sheet(root, rows)
    feats = tmp_path / "features"
    ids = [r["slide_id"] for r in rows]
    assert main(["import-features", "--format", "h5", "--src-dir", str(root / "h5_files"), "--sheet", str(sheet),
                 "--slide-id", *ids, "--out", *[str(feats / f"{s}.h5") for s in ids]]) == 0
    run = tmp_path / "runs" / "standard" / "maxpool" / "seed0"
    assert main(["train", "--features", str(feats), "--slides", str(sheet), "--method", "maxpool", "--seed", "0",
                 "--set", "epochs=30", "--set", "lr=1e-3", "--out", str(run), "--experiment", "standard",
                 "--no-progress"]) == 0
    assert main(["evaluate", str(run), "--features", str(feats), "--sheet", str(sheet)]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["test_auc"] == 1.0 and m["slide_auc"] == 1.0
    assert m["patch_metrics_skipped_reason"] is None and m["patch_n_slides_tumour_slides"] == 2
    assert "mpp_level0" in m["froc_skipped_reason"]  # imported files carry no um/px: FROC skipped, with the reason
    assert time.perf_counter() - t0 < 60
