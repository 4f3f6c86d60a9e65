"""``features.precision``: the encoder under bfloat16 autocast, its resolution, and its record in feature files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wsimil.cli import main
from wsimil.config import validate_config
from wsimil.features import extractors as ex
from wsimil.features.extract import extract_slide, resolve_extraction_precision
from wsimil.features.store import PatchSet, PatchSpec, read_features, write_patches
from wsimil.io import WsimilError
from wsimil.poison import PoisonSpec
from test_features import write_pyramid


def write_patch_file(path: Path, slide_id: str, patch: int = 64, n_side: int = 3) -> None:
    coords = np.array([(x * patch, y * patch) for y in range(n_side) for x in range(n_side)], dtype=np.int64)
    spec = PatchSpec(slide_id=slide_id, patch_size=patch, target_mpp=0.5, level=0, read_size=patch,
                     level0_size=patch, mpp_level0=0.5)
    write_patches(path, PatchSet(coords=coords, tumor_fraction=np.zeros(len(coords), np.float32), spec=spec))


@pytest.fixture(scope="module")
def effnet():
    return ex.build_extractor("efficientnet_lite0")


@pytest.fixture(scope="module")
def slide_and_patches(tmp_path_factory):
    d = tmp_path_factory.mktemp("prec")
    slide = write_pyramid(d / "s1.tif", size=256)
    write_patch_file(d / "s1_patches.h5", "s1")
    return slide, d / "s1_patches.h5"


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_bf16_features_are_close_to_fp32_but_not_identical(slide_and_patches, effnet, tmp_path):
    slide, pf = slide_and_patches
    out = {}
    for prec in ("fp32", "bf16"):
        path = tmp_path / f"{prec}.h5"
        s = extract_slide(slide, pf, path, effnet, batch_size=4, num_workers=0, progress=False, dtype="float32",
                          precision=prec)
        assert s["precision"] == prec
        bag = read_features(path, expected_dim=1280)
        assert bag.features.dtype == np.float32  # storage follows `dtype`, whatever the arithmetic
        assert bag.attrs["precision"] == prec and bag.attrs["dtype"] == "float32"
        out[prec] = bag.features
    f32, bf16 = out["fp32"], out["bf16"]
    assert f32.shape == bf16.shape == (9, 1280) and np.isfinite(bf16).all()
    assert not np.array_equal(f32, bf16)  # autocast really ran: bf16 rounding changes the features
    cos = _cosine(f32, bf16)
    assert cos.min() > 0.99, cos
    # and fp32 is still the bare network's float32 forward pass
    from wsimil.slides.reader import open_slide

    with open_slide(slide) as sl:
        tile = sl.read_region((0, 0), 0, (64, 64))
    np.testing.assert_allclose(f32[0], effnet.embed(tile[None]).numpy()[0], rtol=1e-4, atol=1e-5)


def test_bf16_stored_as_float16_and_poisoned_files_record_precision(slide_and_patches, effnet, tmp_path):
    slide, pf = slide_and_patches
    spec = PoisonSpec(strength=0.25, fraction=0.5, seed=0)
    s = extract_slide(slide, pf, tmp_path / "p.h5", effnet, batch_size=4, num_workers=0, progress=False,
                      poison=spec, precision="bf16")
    bag = read_features(tmp_path / "p.h5")
    assert s["precision"] == "bf16" and bag.features.dtype == np.float16
    assert bag.attrs["precision"] == "bf16" and bag.attrs["poisoned"] and bag.attrs["n_poisoned"] == 5


def test_auto_resolves_to_bf16_only_where_native(slide_and_patches, effnet, tmp_path, monkeypatch):
    from wsimil import precision as loop

    assert resolve_extraction_precision("fp32", "cpu") == "fp32"
    assert resolve_extraction_precision("bf16", "cpu") == "bf16"  # kept even where emulated (with a warning)
    expected = "bf16" if loop.bf16_native("cpu") else "fp32"
    assert resolve_extraction_precision("auto", "cpu") == expected
    monkeypatch.setattr(loop, "bf16_native", lambda device: True)
    assert resolve_extraction_precision("auto", "cpu") == "bf16"
    slide, pf = slide_and_patches
    s = extract_slide(slide, pf, tmp_path / "a.h5", effnet, batch_size=8, num_workers=0, progress=False,
                      precision="auto")
    assert s["precision"] == "bf16" and read_features(tmp_path / "a.h5").attrs["precision"] == "bf16"  # never "auto"
    monkeypatch.setattr(loop, "bf16_native", lambda device: False)
    assert resolve_extraction_precision("auto", "cpu") == "fp32"


def test_bad_precision_is_rejected_before_writing(slide_and_patches, effnet, tmp_path):
    slide, pf = slide_and_patches
    with pytest.raises(WsimilError, match="precision must be fp32, bf16 or auto, got 'fp16'"):
        extract_slide(slide, pf, tmp_path / "x.h5", effnet, num_workers=0, progress=False, precision="fp16")
    assert not (tmp_path / "x.h5").exists()
    with pytest.raises(WsimilError):
        resolve_extraction_precision("float16", "cpu")
    with pytest.raises(WsimilError, match="precision"):
        validate_config({"features": {"precision": "fp16"}})
    assert validate_config({})["features"]["precision"] == "fp32"


def _extract_clean(slide_and_patches, tmp_path, precision: str) -> list[str]:
    """A one-slide sheet and the slide's clean features (tmp_path/clean.h5) by `wsimil extract`; the arguments
    that `wsimil poison` shares with it."""
    slide, pf = slide_and_patches
    pd.DataFrame([{"slide_id": "s1", "label": 0, "split": "train", "center": 0, "path": "", "annotation": ""}]).to_csv(
        tmp_path / "slides.csv", index=False)
    params = json.dumps({"precision": precision, "num_workers": 0, "device": "cpu", "batch_size": 8})
    common = ["--slide", str(slide), "--slide-id", "s1", "--patches", str(pf), "--params", params, "--no-progress"]
    assert main(["extract", *common, "--out", str(tmp_path / "clean.h5")]) == 0
    return common


def test_cli_extract_and_poison_use_the_features_precision(slide_and_patches, tmp_path):
    """`wsimil extract` and `wsimil poison` read `features.precision` from the same section: clean and poisoned
    files of a workflow are computed alike."""
    common = _extract_clean(slide_and_patches, tmp_path, "bf16")
    assert main(["poison", *common, "--sheet", str(tmp_path / "slides.csv"), "--clean", str(tmp_path / "clean.h5"),
                 "--out", str(tmp_path / "pois.h5")]) == 0
    clean, pois = read_features(tmp_path / "clean.h5"), read_features(tmp_path / "pois.h5")
    assert clean.attrs["precision"] == pois.attrs["precision"] == "bf16"
    assert pois.attrs["poisoned"] and not clean.attrs["poisoned"]


def test_cli_poison_writes_every_level_as_separate_calls_would(slide_and_patches, tmp_path, capsys):
    """`wsimil poison` with two levels in one call (the workflow's one job per target slide) writes, level by
    level, the same features as one call per level."""
    common = _extract_clean(slide_and_patches, tmp_path, "fp32")
    levels = [json.dumps({"strength": st, "fraction": 0.5, "seed": 0, "targets": None}) for st in (0.1, 1.0)]
    poison = [*common, "--sheet", str(tmp_path / "slides.csv"), "--clean", str(tmp_path / "clean.h5")]
    assert main(["poison", *poison, "--poison", *levels, "--out", str(tmp_path / "a.h5"), str(tmp_path / "b.h5")]) == 0
    for lv, name in zip(levels, ("a", "b")):
        assert main(["poison", *poison, "--poison", lv, "--out", str(tmp_path / f"one_{name}.h5")]) == 0
        together, alone = read_features(tmp_path / f"{name}.h5"), read_features(tmp_path / f"one_{name}.h5")
        np.testing.assert_array_equal(together.features, alone.features)
    assert not np.array_equal(read_features(tmp_path / "a.h5").features, read_features(tmp_path / "b.h5").features)
    assert main(["poison", *poison, "--poison", *levels, "--out", str(tmp_path / "c.h5")]) == 2
    assert "one --out per slide and poison level: 1 slides x 2 levels, got 1" in capsys.readouterr().err
