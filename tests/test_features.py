"""Extractor registry, ImageNet sanity of the default encoder, batched extraction, poisoned extraction."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from wsimil.config import load_schema
from wsimil.features import extractors as ex
from wsimil.features.extract import extract_slide, magnification_for_mpp
from wsimil.features.store import PatchSet, PatchSpec, read_features, write_patches
from wsimil.io import WsimilError
from wsimil.names import BUILTIN_EXTRACTORS
from wsimil.poison import PoisonSpec, poisoned_patch_mask

CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
CUP_CLASSES = {504, 967, 968}  # coffee mug, espresso, cup


# -- fixtures -------------------------------------------------------------------------------------------------


def write_pyramid(path: Path, size: int = 512, tile: int = 64, seed: int = 0) -> Path:
    """A tiny Aperio-like pyramidal TIFF: levels 0 (size) and 1 (size/2) tiled, a stripped thumbnail at page 1."""
    tifffile = pytest.importorskip("tifffile")
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
    base = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    base = np.clip(base.astype(np.int16) + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)
    level1 = cv2.resize(base, (size // 2, size // 2), interpolation=cv2.INTER_AREA)
    thumb = cv2.resize(base, (size // 8, size // 8), interpolation=cv2.INTER_AREA)
    desc = f"Aperio Image Library v1.0 \n{size}x{size} [0,0 {size}x{size}] ({tile}x{tile}) |AppMag = 20|MPP = 0.5"
    with tifffile.TiffWriter(path) as tw:
        tw.write(base, tile=(tile, tile), photometric="rgb", compression="zlib", description=desc, metadata=None)
        tw.write(thumb, photometric="rgb", metadata=None)
        tw.write(level1, tile=(tile, tile), photometric="rgb", compression="zlib", metadata=None)
    return path


def write_patch_file(path: Path, slide_id: str, level: int = 0, patch: int = 64, read: int = 64, n_side: int = 4):
    ds = 2**level
    step = read * ds
    coords = np.array([(x * step, y * step) for y in range(n_side) for x in range(n_side)], dtype=np.int64)
    tf = np.linspace(0, 1, len(coords)).astype(np.float32)
    spec = PatchSpec(slide_id=slide_id, patch_size=patch, target_mpp=0.5 * ds * read / patch, level=level,
                     read_size=read, level0_size=step, mpp_level0=0.5)
    write_patches(path, PatchSet(coords=coords, tumor_fraction=tf, spec=spec))
    return coords, tf


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    d = tmp_path_factory.mktemp("slide")
    return write_pyramid(d / "s1.tif")


@pytest.fixture(scope="module")
def effnet():
    return ex.build_extractor("efficientnet_lite0")


# -- registry -------------------------------------------------------------------------------------------------


def test_registry_lists_the_builtin_names():
    assert ex.list_extractors() == sorted(BUILTIN_EXTRACTORS)
    for name, info in ex.EXTRACTORS.items():
        assert info.name == name and info.dim > 0 and info.description


def test_schema_enum_matches_registry():
    schema = load_schema("features.schema.yaml")
    feats = schema["properties"]["features"]
    assert feats["properties"]["extractor"]["enum"] == ex.list_extractors()
    for section in ("features", "poison"):
        sec = schema["properties"][section]
        assert sec["additionalProperties"] is False
        for key, sub in sec["properties"].items():
            assert "description" in sub and "default" in sub, f"{section}.{key}"


def test_schema_defaults_validate_and_unknown_keys_fail():
    jsonschema = pytest.importorskip("jsonschema")
    schema = load_schema("features.schema.yaml")
    props = schema["properties"]
    cfg = {sec: {k: v["default"] for k, v in props[sec]["properties"].items()} for sec in ("features", "poison")}
    jsonschema.validate(cfg, schema)
    assert cfg["poison"]["targets"] == [{"split": ["train", "val"], "label": [0]}, {"split": ["test"], "label": [1]}]
    for bad in ({"features": {"extractor": "vit"}}, {"features": {"batchsize": 8}},
                {"poison": {"targets": [{"split": ["train"], "labels": [0]}]}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


@pytest.mark.parametrize("name,dim", [("resnet18", 512), ("resnet50_trunc", 1024), ("efficientnet_lite0", 1280)])
def test_dims_random_init(name, dim):
    e = ex.build_extractor(name, pretrained=False)
    assert e.dim == dim and e.weights_sha256 is None and not e.model.training
    out = e.embed(np.full((2, 64, 64, 3), 128, np.uint8))
    assert out.shape == (2, dim) and out.dtype == torch.float32
    # the random init is fixed: a second build gives the same network
    out2 = ex.build_extractor(name, pretrained=False).embed(np.full((2, 64, 64, 3), 128, np.uint8))
    assert torch.equal(out, out2)


def test_resnet_weights_from_file_and_env(tmp_path, monkeypatch):
    from torchvision.models import resnet18, resnet50

    torch.manual_seed(1)
    full50 = resnet50(weights=None)
    f50 = tmp_path / "r50.pth"
    torch.save(full50.state_dict(), f50)  # a full ResNet-50: layer4 and fc are ignored
    e = ex.build_extractor("resnet50_trunc", weights=f50)
    assert e.weights_sha256 == ex.sha256_file(f50) and e.weights_path == str(f50)
    assert torch.equal(e.model.layer3[0].conv1.weight, full50.layer3[0].conv1.weight)
    assert not hasattr(e.model, "layer4")

    # a file that lacks a needed key fails clearly
    sd = full50.state_dict()
    del sd["layer2.0.conv1.weight"]
    bad = tmp_path / "bad.pth"
    torch.save(sd, bad)
    with pytest.raises(WsimilError, match="missing.*layer2.0.conv1.weight"):
        ex.build_extractor("resnet50_trunc", weights=bad)

    # $WSIMIL_WEIGHTS_DIR is searched under the official file name
    r18 = resnet18(weights=None)
    wdir = tmp_path / "w"
    wdir.mkdir()
    torch.save(r18.state_dict(), wdir / "resnet18-f37072fd.pth")
    monkeypatch.setenv("WSIMIL_WEIGHTS_DIR", str(wdir))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    # the official name promises a sha256 prefix our random file does not have: caught
    with pytest.raises(WsimilError, match="corrupt or not the official"):
        ex.build_extractor("resnet18")
    # an explicit path of any name is accepted (no promised hash), its sha256 recorded
    other = wdir / "my_resnet18.pth"
    torch.save(r18.state_dict(), other)
    e18 = ex.build_extractor("resnet18", weights=other)
    assert e18.dim == 512 and e18.embed(np.zeros((1, 32, 32, 3), np.uint8)).shape == (1, 512)


def test_missing_weights_error_names_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("WSIMIL_WEIGHTS_DIR", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torchhome"))
    with pytest.raises(WsimilError) as err:
        ex.build_extractor("resnet18")
    msg = str(err.value)
    assert str(tmp_path / "weights" / "resnet18-f37072fd.pth") in msg
    assert str(tmp_path / "torchhome" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in msg
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in msg
    with pytest.raises(WsimilError, match="resnet50-19c8e357.pth.*resnet50-0676ba61.pth"):
        ex.build_extractor("resnet50_trunc")
    with pytest.raises(WsimilError, match="not found"):
        ex.build_extractor("resnet18", weights=tmp_path / "nope.pth")
    with pytest.raises(WsimilError, match="unknown extractor"):
        ex.build_extractor("vit_giant")


# -- the default encoder is the real ImageNet model with the right preprocessing ---------------------------------


def _center_crop(img: np.ndarray, size: int = 224) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    s = min(h, w)
    img = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def test_efficientnet_lite0_imagenet_sanity(effnet):
    skdata = pytest.importorskip("skimage.data")
    assert effnet.dim == 1280 and effnet.weights_sha256.startswith("57934424")
    batch = np.stack([_center_crop(skdata.chelsea()), _center_crop(skdata.coffee())])
    feats = effnet.embed(batch)
    assert feats.shape == (2, 1280)
    with torch.inference_mode():
        logits = effnet.model.net._fc(feats)  # the pretrained ImageNet head on our pooled features
    top5 = logits.topk(5, dim=1).indices.tolist()
    assert CAT_CLASSES & set(top5[0]), top5[0]
    assert CUP_CLASSES & set(top5[1]), top5[1]
    assert top5[0][0] in CAT_CLASSES and top5[1][0] in CUP_CLASSES
    # inputs land in [-1, 1] (TF-Lite mean 127 / std 128)
    x = effnet.preprocess(np.array([[[[0, 127, 255]]]], np.uint8))
    assert torch.allclose(x.flatten(), torch.tensor([-127 / 128, 0.0, 1.0]), atol=1e-6)


# -- extraction -----------------------------------------------------------------------------------------------


def test_extract_slide(slide, effnet, tmp_path):
    pf = tmp_path / "p.h5"
    coords, tf = write_patch_file(pf, "s1", level=1, patch=48, read=64, n_side=3)  # 9 patches, resized 64 -> 48
    out = tmp_path / "f" / "s1.h5"
    summary = extract_slide(slide, pf, out, effnet, batch_size=4, num_threads=2, num_workers=1, progress=False)
    assert summary["n_patches"] == 9
    bag = read_features(out, expected_dim=1280)
    assert bag.features.shape == (9, 1280) and bag.features.dtype == np.float16
    np.testing.assert_array_equal(bag.coords, coords)
    np.testing.assert_array_equal(bag.tumor_fraction, tf)
    a = bag.attrs
    assert a["extractor"] == "efficientnet_lite0" and a["weights_sha256"].startswith("57934424")
    assert a["patch_size"] == 48 and a["level"] == 1 and a["read_size"] == 64
    assert a["mpp"] == pytest.approx(4 / 3) and a["magnification"] == pytest.approx(7.5)
    assert a["wsimil_version"] and a["poisoned"] == 0
    with h5py.File(out) as f:
        assert "poisoned" not in f

    # identical features on a rerun, also when read in this process and in another batch split
    out2 = tmp_path / "f" / "s1b.h5"
    extract_slide(slide, pf, out2, effnet, batch_size=4, num_threads=2, num_workers=0, progress=False)
    np.testing.assert_array_equal(read_features(out2).features, bag.features)

    # float32 on request, and the features equal the bare network on the same pixels
    out3 = tmp_path / "f" / "s1c.h5"
    extract_slide(slide, pf, out3, effnet, batch_size=4, num_workers=0, progress=False, dtype="float32")
    f32 = read_features(out3).features
    assert f32.dtype == np.float32
    import cv2

    from wsimil.slides.reader import open_slide

    with open_slide(slide) as s:
        tile = s.read_region(tuple(coords[4]), 1, (64, 64))
    ref = effnet.embed(cv2.resize(tile, (48, 48), interpolation=cv2.INTER_AREA)[None]).numpy()[0]
    np.testing.assert_allclose(f32[4], ref, rtol=1e-4, atol=1e-5)


def test_magnification_convention():
    assert magnification_for_mpp(0.5) == 20 and magnification_for_mpp(1.0) == 10 and magnification_for_mpp(0.25) == 40


def test_failed_reads_raise_and_write_nothing(slide, effnet, tmp_path, monkeypatch):
    from wsimil.slides import reader

    pf = tmp_path / "p.h5"
    coords, _ = write_patch_file(pf, "s1", n_side=3)
    real = reader.Slide.read_region

    def flaky(self, location, level, size):
        if location[0] == coords[5][0] and location[1] == coords[5][1]:
            raise OSError("TIFF tile decode failed")
        return real(self, location, level, size)

    monkeypatch.setattr(reader.Slide, "read_region", flaky)
    out = tmp_path / "s1.h5"
    with pytest.raises(WsimilError) as err:
        extract_slide(slide, pf, out, effnet, batch_size=4, num_workers=0, progress=False)
    msg = str(err.value)
    assert "s1" in msg and "1 of 9 patches" in msg and f"({coords[5][0]}, {coords[5][1]})" in msg
    assert not out.exists() and not list(tmp_path.glob(".s1.h5*"))


def test_corrupt_tile_in_file_is_reported(slide, effnet, tmp_path):
    import shutil

    import tifffile

    bad = tmp_path / "bad.tif"
    shutil.copy(slide, bad)
    with tifffile.TiffFile(bad) as t:
        off = t.pages[0].dataoffsets[0]  # level 0, tile (0, 0)
    with open(bad, "r+b") as f:
        f.seek(off)
        f.write(b"\xff" * 64)
    pf = tmp_path / "p.h5"
    write_patch_file(pf, "bad", n_side=2)
    with pytest.raises(WsimilError, match=r"patches could not be read.*patch 0 at \(0, 0\)"):
        extract_slide(bad, pf, tmp_path / "bad.h5", effnet, batch_size=2, num_workers=0, progress=False)
    assert not (tmp_path / "bad.h5").exists()


def test_poisoned_extraction_differs_exactly_at_poisoned_patches(slide, effnet, tmp_path):
    pf = tmp_path / "p.h5"
    write_patch_file(pf, "s1", n_side=3)
    clean = tmp_path / "clean.h5"
    pois = tmp_path / "pois.h5"
    spec = PoisonSpec(strength=0.25, fraction=0.5, seed=3)
    extract_slide(slide, pf, clean, effnet, batch_size=4, num_workers=0, progress=False)
    extract_slide(slide, pf, pois, effnet, batch_size=4, num_workers=1, progress=False, poison=spec)
    fc, fp = read_features(clean).features, read_features(pois).features
    with h5py.File(pois) as f:
        mask = f["poisoned"][:]
        attrs = dict(f.attrs)
    np.testing.assert_array_equal(mask, poisoned_patch_mask("s1", 9, spec))
    assert mask.sum() == 5  # floor(0.5 * 9 + 0.5)
    differs = (fc != fp).any(axis=1)
    np.testing.assert_array_equal(differs, mask)
    assert attrs["poison_strength"] == 0.25 and attrs["poison_fraction"] == 0.5 and attrs["poison_seed"] == 3
    assert attrs["poisoned"] and attrs["n_poisoned"] == 5
    # and the poisoned extraction is itself reproducible
    pois2 = tmp_path / "pois2.h5"
    extract_slide(slide, pf, pois2, effnet, batch_size=4, num_workers=0, progress=False, poison=spec)
    np.testing.assert_array_equal(read_features(pois2).features, fp)


def test_poisoned_extraction_reusing_the_clean_rows_equals_the_full_one(slide, effnet, tmp_path):
    """With clean_h5 only the poisoned patches are embedded: the other rows are the clean file's, bit for bit,
    and the poisoned rows match a full re-extraction (same pixels, same network)."""
    pf = tmp_path / "p.h5"
    write_patch_file(pf, "s1", n_side=3)
    clean, full, fast = tmp_path / "clean.h5", tmp_path / "full.h5", tmp_path / "fast.h5"
    spec = PoisonSpec(strength=0.25, fraction=0.5, seed=3)
    extract_slide(slide, pf, clean, effnet, batch_size=4, num_workers=0, progress=False)
    extract_slide(slide, pf, full, effnet, batch_size=4, num_workers=0, progress=False, poison=spec)
    out = extract_slide(slide, pf, fast, effnet, batch_size=4, num_workers=0, progress=False, poison=spec,
                        clean_h5=clean)
    mask = poisoned_patch_mask("s1", 9, spec)
    fc, ff, fs = (read_features(p).features for p in (clean, full, fast))
    np.testing.assert_array_equal(fs[~mask], fc[~mask])
    np.testing.assert_allclose(fs[mask], ff[mask], rtol=1e-2, atol=1e-3)  # float16 storage; batches differ
    assert (fs[mask] != fc[mask]).any(axis=1).all() and out["n_poisoned"] == 5
    with h5py.File(fast) as f:
        np.testing.assert_array_equal(f["poisoned"][:], mask)
    # a clean file of other patches (or itself poisoned) is refused, naming the file
    other = tmp_path / "p4.h5"
    write_patch_file(other, "s1", n_side=2)
    with pytest.raises(WsimilError, match=r"clean feature file .*full\.h5 does not match.*poisoned True"):
        extract_slide(slide, pf, tmp_path / "x.h5", effnet, batch_size=4, num_workers=0, progress=False,
                      poison=spec, clean_h5=full)
    with pytest.raises(WsimilError, match="same patches: False"):
        extract_slide(slide, other, tmp_path / "y.h5", effnet, batch_size=4, num_workers=0, progress=False,
                      poison=spec, clean_h5=clean)


def test_extract_rejects_wrong_slide_id_and_empty(slide, effnet, tmp_path):
    pf = tmp_path / "p.h5"
    write_patch_file(pf, "s1", n_side=1)
    with pytest.raises(WsimilError, match="belongs to slide 's1'"):
        extract_slide(slide, pf, tmp_path / "x.h5", effnet, slide_id="s2", num_workers=0, progress=False)
    with pytest.raises(WsimilError, match="slide file not found"):
        extract_slide(tmp_path / "none.tif", pf, tmp_path / "x.h5", effnet, num_workers=0, progress=False)


def test_a_feature_manifest_lists_every_file_in_order_and_refuses_a_missing_one(tmp_path):
    """write_manifest (how the workflow's jobs read a cell's features): slide id, path relative to the manifest
    and size per file, in the order given; a slide may take its file from another folder (a poison level's clean
    slides)."""
    from wsimil.features.store import feature_path, read_features, write_features, write_manifest
    from wsimil.io import WsimilError

    paths = {}
    for sid, n, folder in (("b_002", 3, "poison_x"), ("a_001", 5, "clean")):
        p = tmp_path / "features" / folder / f"{sid}.h5"
        write_features(p, np.full((n, 4), n, np.float32), np.zeros((n, 2), np.int64))
        paths[sid] = p
    out = write_manifest(paths, tmp_path / "manifests" / "cell.tsv")
    rows = [ln.split("\t") for ln in out.read_text().splitlines()]
    assert rows == [["slide_id", "path", "bytes"],
                    ["b_002", "../features/poison_x/b_002.h5", str(paths["b_002"].stat().st_size)],
                    ["a_001", "../features/clean/a_001.h5", str(paths["a_001"].stat().st_size)]]
    assert feature_path(out, "a_001") == tmp_path / "manifests" / "../features/clean/a_001.h5"
    assert read_features(feature_path(out, "b_002")).features.shape == (3, 4)
    with pytest.raises(WsimilError, match="no row for slide 'c_003'"):
        feature_path(out, "c_003")
    with pytest.raises(WsimilError, match="feature file not found: .*c_003.h5"):
        write_manifest({**paths, "c_003": tmp_path / "features" / "clean" / "c_003.h5"}, tmp_path / "manifests" / "o.tsv")
    assert not (tmp_path / "manifests" / "o.tsv").exists()


def test_a_feature_manifest_that_is_stale_or_points_away_is_refused(tmp_path):
    """read_manifest: a listed file whose size changed (the manifest is stale), an absolute path, or a path
    leaving the results folder above the manifest's is refused, naming the manifest and the line."""
    from wsimil.features.store import feature_path, write_features, write_manifest
    from wsimil.io import WsimilError

    p = tmp_path / "res" / "features" / "clean" / "a_001.h5"
    write_features(p, np.ones((3, 4), np.float32), np.zeros((3, 2), np.int64))
    man = write_manifest({"a_001": p}, tmp_path / "res" / "manifests" / "cell.tsv")
    write_features(p, np.ones((9, 4), np.float32), np.zeros((9, 2), np.int64))
    with pytest.raises(WsimilError, match=r"cell.tsv, line 2: .*a_001.h5. is \d+ bytes, not the \d+ it lists: .*stale"):
        feature_path(man, "a_001")
    outside = tmp_path / "elsewhere.h5"
    write_features(outside, np.ones((3, 4), np.float32), np.zeros((3, 2), np.int64))
    size = outside.stat().st_size
    for rel, why in ((str(outside), "relative .h5 path"), ("../../elsewhere.h5", "the path leaves")):
        bad = tmp_path / "res" / "manifests" / f"bad{len(rel)}.tsv"
        bad.write_text(f"slide_id\tpath\tbytes\na_001\t{rel}\t{size}\n")
        with pytest.raises(WsimilError, match=why):
            feature_path(bad, "a_001")
    wrong = tmp_path / "res" / "manifests" / "old.tsv"
    wrong.write_text("slide_id\tbytes\na_001\t10\n")
    with pytest.raises(WsimilError, match="first line must be the columns slide_id, path, bytes"):
        feature_path(wrong, "a_001")

