"""The synthetic mini-Camelyon generator: plan, pyramidal TIFF, annotations, colour and determinism."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
from shapely.geometry import Polygon
from shapely.ops import unary_union

from wsimil.io import WsimilError, check_slide_id
from wsimil.slides import synthetic as S
from wsimil.slides.annotations import read_asap_xml, tumour_region
from wsimil.slides.reader import open_slide
from wsimil.slides.tiff import pyramid_sizes, write_pyramidal_tiff

SMALL = {
    "seed": 7,
    "size_um": [440, 340],
    "slides": {"train": {"normal": 2, "tumour": 2}, "val": {"normal": 1, "tumour": 1},
               "test": {"normal": 2, "tumour": 2}},
    "tissue": {"follicles": [1, 2], "follicle_radius_um": [30.0, 50.0]},
    "lesions": {"count": [1, 2], "radius_um": [60.0, 110.0]},
    "min_level_size": 128,
    "tile_size": 128,
}


def _row(plan: pd.DataFrame, slide_id: str) -> pd.Series:
    return plan.set_index("slide_id", drop=False).loc[slide_id]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    plan = S.plan_dataset(SMALL)
    for sid in ("normal_001", "tumor_001", "tumor_002"):
        S.render_slide(SMALL, _row(plan, sid), out)
    return out, plan


def _deconvolve(rgb: np.ndarray, hosp: dict) -> tuple[np.ndarray, np.ndarray]:
    """Hematoxylin and eosin concentrations per pixel (least squares on optical density)."""
    bg = np.asarray(hosp["background"], float)
    od = -np.log(np.clip(rgb.astype(float), 1, None) / bg)
    m = np.stack([S._unit(hosp["h_vector"]), S._unit(hosp["e_vector"])], axis=1).astype(float)  # 3 x 2
    he = od.reshape(-1, 3) @ np.linalg.pinv(m).T
    return he[:, 0].reshape(rgb.shape[:2]), he[:, 1].reshape(rgb.shape[:2])


def _polygon_mask(polys, shape) -> np.ndarray:
    import cv2

    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(p).astype(np.int32) for p in polys], 1)
    return mask.astype(bool)


def _tissue(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(int).sum(2) < 3 * 215


# -- plan ---------------------------------------------------------------------------------------------


def test_plan_default_counts_names_and_centres():
    cfg = S.default_config()
    plan = S.plan_dataset(cfg)
    assert list(plan.columns[:6]) == S.SHEET_COLUMNS
    for split in S.SPLITS:
        for cls, label in (("normal", 0), ("tumour", 1)):
            grp = plan[(plan.split == split) & (plan.label == label)]
            assert len(grp) == cfg["slides"][split][cls]
            assert grp.center.nunique() >= 2, (split, cls)
    assert plan.slide_id.is_unique
    for sid in plan.slide_id:
        check_slide_id(sid)
    trainval = plan[plan.split != "test"]
    assert trainval[trainval.label == 0].slide_id.str.match(r"^normal_\d{3}$").all()
    assert trainval[trainval.label == 1].slide_id.str.match(r"^tumor_\d{3}$").all()
    test = plan[plan.split == "test"]
    assert sorted(test.slide_id) == [f"test_{i:03d}" for i in range(1, len(test) + 1)]
    assert 0 < test.label.iloc[: len(test) // 2].sum() < len(test) // 2  # test ids mix the classes
    assert (plan.path == "slides/" + plan.slide_id + ".tif").all()
    assert (plan.annotation == np.where(plan.label == 1, "annotations/" + plan.slide_id + ".xml", "")).all()
    lo, hi = cfg["lesions"]["count"]
    assert (plan.n_lesions[plan.label == 1].between(lo, hi)).all() and (plan.n_lesions[plan.label == 0] == 0).all()
    assert plan.center.nunique() == len(cfg["hospitals"]) == 3
    assert set(plan.lesion_class[plan.label == 1]) <= {"itc", "micro", "macro"}
    assert plan.equals(S.plan_dataset(copy.deepcopy(cfg)))


def _many_tumour_slides(n: int) -> dict:
    cfg = S.default_config()
    cfg["slides"] = {"train": {"normal": 0, "tumour": n}, "val": {}, "test": {}}
    return cfg


def _fraction_of_tissue(cfg, slide_id: str) -> float:
    """Annotation area / tissue area from the generator's geometry (what benchmarks/synthetic_stats.py reports)."""
    g = S.slide_geometry(cfg, slide_id, 1)
    region = unary_union([Polygon(p).buffer(0) for p in g.polygons])
    return region.area / g.tissue.sum()


def test_default_lesion_classes_span_itc_to_macro():
    # docs/data.md: with the defaults about half the tumour slides are ITC-sized, 40 % micro, 11 % macro
    # (generator thresholds). The old defaults (radius 50-450 um, 1-3 lesions) gave 14 / 38 / 48 %.
    plan = S.plan_dataset(_many_tumour_slides(300))
    share = plan.lesion_class.value_counts(normalize=True)
    assert 0.35 < share["itc"] < 0.65 and 0.25 < share["micro"] < 0.55 and 0.05 < share["macro"] < 0.25, share
    diam = np.array([float(d) for s in plan.lesion_diameters_um for d in s.split(";")])
    lo, hi = S.default_config()["lesions"]["radius_um"]
    assert diam.min() >= 2 * lo and diam.max() <= 2 * hi
    assert diam.min() < 60 and diam.max() > 500  # a few-cell cluster to a macro-metastasis
    assert set(plan.n_lesions) == {1, 2}


def test_default_tumour_fraction_of_tissue_is_camelyon_like():
    # docs/data.md: median ~3 % of the tissue, a third of the slides < 1 %, most < 10 %, none above ~32 %.
    # The old defaults gave a median of 17 % and only 35 % of the slides below 10 %.
    cfg = S.resolve_config(_many_tumour_slides(24))
    fr = np.array([_fraction_of_tissue(cfg, f"tumor_{i:03d}") for i in range(1, 25)])
    assert fr.min() > 0
    assert 0.01 < np.median(fr) < 0.06, np.median(fr)
    assert (fr < 0.01).mean() >= 0.1 and (fr < 0.10).mean() >= 0.6, fr
    assert fr.max() <= 0.35, fr.max()


def test_geometry_is_deterministic_and_is_what_is_rendered():
    cfg = S.resolve_config(SMALL)
    g1, g2 = S.slide_geometry(cfg, "tumor_002", 1), S.slide_geometry(copy.deepcopy(SMALL), "tumor_002", 1)
    np.testing.assert_array_equal(g1.tissue, g2.tissue)
    np.testing.assert_array_equal(g1.lesion, g2.lesion)
    assert g1.lesion.any() and not (g1.lesion & ~g1.tissue).any()  # the lesion lies in the tissue
    _, polys = S.render_pixels(cfg, "tumor_002", 1, 1)
    assert len(polys) == len(g1.polygons) and all(np.array_equal(a, b) for a, b in zip(polys, g1.polygons))
    g0 = S.slide_geometry(cfg, "normal_001", 0)
    assert not g0.lesion.any() and g0.polygons == [] and 0.3 < g0.tissue.mean() < 0.9


def test_generated_slide_tumour_fraction_from_its_files(tmp_path):
    """A default-size tumour slide: XML area / the pipeline's tissue mask agrees with the geometry."""
    from wsimil.slides.tissue import TissueParams, segment_tissue

    cfg = S.default_config()
    row = _row(S.plan_dataset(cfg), "tumor_003")
    S.render_slide(cfg, row, tmp_path)
    region = tumour_region(tmp_path / row.annotation)
    with open_slide(tmp_path / row.path) as s:
        tm = segment_tissue(s, TissueParams.from_config({"seg_downsample": 16}))
    frac = region.area / (tm.mask.sum() * tm.scale[0] * tm.scale[1])
    expected = _fraction_of_tissue(cfg, "tumor_003")
    assert 0 < frac < 0.35
    assert frac == pytest.approx(expected, rel=0.1), (frac, expected)


def test_plan_rejects_bad_config():
    with pytest.raises(WsimilError, match="hospitals"):
        S.plan_dataset({"hospitals": []})
    with pytest.raises(WsimilError, match="split"):
        S.plan_dataset({"slides": {"training": {"normal": 1}}})
    with pytest.raises(WsimilError, match="center"):
        S.render_slide(SMALL, {"slide_id": "normal_001", "label": 0, "center": 5}, "/nonexistent")


def test_write_sheet_contract_columns(tmp_path):
    path = S.write_sheet(SMALL, tmp_path)
    sheet = pd.read_csv(path, keep_default_na=False)
    assert list(sheet.columns) == S.SHEET_COLUMNS
    assert len(sheet) == 10 and sheet.slide_id.is_unique
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slides.csv", "slides_external.csv"]
    assert pd.read_csv(tmp_path / "slides_external.csv").empty  # no held-out hospital in SMALL


def test_held_out_hospital_restains_every_test_slide(tmp_path):
    """synthetic.held_out_hospitals: train/val/test from the other hospitals; each test slide's tissue again,
    stained and scanned by the held-out hospital (same geometry and lesions, other colours)."""
    cfg = {**SMALL, "held_out_hospitals": [2]}
    plan = S.plan_dataset(cfg)
    main, ext = plan[~plan["external"]], plan[plan["external"]]
    assert set(main["center"]) == {0, 1} and set(ext["center"]) == {2}
    test = main[main["split"] == "test"]
    assert list(ext["slide_id"]) == [f"{t}_h2" for t in test["slide_id"]]
    assert list(ext["tissue_of"]) == list(test["slide_id"]) and list(ext["label"]) == list(test["label"])
    assert (ext["split"] == "test").all()
    assert list(ext["lesion_diameters_um"]) == list(test["lesion_diameters_um"])
    S.write_sheet(cfg, tmp_path)
    assert list(pd.read_csv(tmp_path / "slides.csv")["slide_id"]) == list(main["slide_id"])
    assert list(pd.read_csv(tmp_path / "slides_external.csv")["slide_id"]) == list(ext["slide_id"])
    tumour = test[test["label"] == 1].iloc[0]
    copy = ext[ext["tissue_of"] == tumour["slide_id"]].iloc[0]
    a, poly_a = S.render_pixels(S.resolve_config(cfg), tumour["slide_id"], 1, int(tumour["center"]))
    S.render_slide(cfg, copy, tmp_path)
    b, poly_b = S.render_pixels(S.resolve_config(cfg), copy["tissue_of"], 1, 2)
    assert len(poly_a) == len(poly_b) and all(np.array_equal(p, q) for p, q in zip(poly_a, poly_b))
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 2  # another hospital's colours
    assert (tmp_path / "slides" / f"{copy['slide_id']}.tif").is_file()
    assert (tmp_path / "annotations" / f"{copy['slide_id']}.xml").is_file()
    with pytest.raises(WsimilError, match="held_out_hospitals"):
        S.plan_dataset({**SMALL, "held_out_hospitals": [0, 1, 2]})
    with pytest.raises(WsimilError, match="held_out_hospitals"):
        S.plan_dataset({**SMALL, "held_out_hospitals": [5]})


# -- the TIFF -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_backends_read_levels_and_mpp(dataset, backend):
    out, _ = dataset
    w, h = round(440 / 0.5), round(340 / 0.5)
    with open_slide(out / "slides" / "tumor_001.tif", backend=backend) as s:
        assert s.backend == backend
        assert s.dimensions == (w, h)
        assert s.level_dimensions == pyramid_sizes(w, h, 128) == [(w, h), (w // 2, h // 2), (w // 4, h // 4)]
        assert np.allclose(s.level_downsamples, [1, 2, 4], rtol=1e-3)
        assert s.mpp == pytest.approx(0.5)
        region = s.read_region((0, 0), 0, (w, h))
        assert region.shape == (h, w, 3) and region.dtype == np.uint8
    assert not list((out / "slides").glob(".*"))  # no temporary files left behind


def test_level1_is_downsampled_level0(dataset):
    out, _ = dataset
    with open_slide(out / "slides" / "tumor_001.tif") as s:
        l0 = s.read_region((200, 160), 0, (400, 320)).astype(float)
        l1 = s.read_region((200, 160), 1, (200, 160)).astype(float)
    ref = l0.reshape(160, 2, 200, 2, 3).mean(axis=(1, 3))
    assert np.abs(l1 - ref).mean() < 5.0  # JPEG q90 on both levels
    assert np.abs(l1 - l0[::2, ::2]).mean() > np.abs(l1 - ref).mean()  # averaged, not subsampled


def test_tiff_writer_rejects_bad_input_and_reads_back(tmp_path):
    with pytest.raises(WsimilError, match="uint8"):
        write_pyramidal_tiff(tmp_path / "x.tif", np.zeros((64, 64), np.uint8), mpp=0.5)
    img = np.zeros((300, 520, 3), np.uint8)
    img[:, :, 0] = np.linspace(0, 255, 520)[None, :]
    img[:, :, 1] = np.linspace(0, 255, 300)[:, None]
    write_pyramidal_tiff(tmp_path / "x.tif", img, mpp=0.25, tile=128, min_level_size=100, compression=None)
    with open_slide(tmp_path / "x.tif", backend="openslide") as s:
        assert s.level_dimensions == [(520, 300), (260, 150), (130, 75)]
        assert s.mpp == pytest.approx(0.25)
        assert s.properties.get("openslide.objective-power") == "40"
        np.testing.assert_array_equal(s.read_region((0, 0), 0, (520, 300)), img)


# -- determinism --------------------------------------------------------------------------------------


def test_render_is_deterministic_and_independent_of_other_slides(dataset, tmp_path):
    out, plan = dataset
    row = _row(plan, "tumor_001")
    a, pa = S.render_pixels(SMALL, "tumor_001", 1, int(row.center))
    S.render_pixels(SMALL, "tumor_002", 1, 0)  # another slide in between changes nothing
    bigger = copy.deepcopy(SMALL)
    bigger["slides"]["train"] = {"normal": 9, "tumour": 9}
    b, pb = S.render_pixels(bigger, "tumor_001", 1, int(row.center))
    np.testing.assert_array_equal(a, b)
    assert len(pa) == len(pb) and all(np.array_equal(x, y) for x, y in zip(pa, pb))
    S.render_slide(SMALL, row, tmp_path)
    assert (tmp_path / "slides" / "tumor_001.tif").read_bytes() == (out / "slides" / "tumor_001.tif").read_bytes()
    other = copy.deepcopy(SMALL)
    other["seed"] = 8
    c, _ = S.render_pixels(other, "tumor_001", 1, int(row.center))
    assert np.abs(a.astype(int) - c).mean() > 5  # a different seed is a different slide


# -- annotations and biology ----------------------------------------------------------------------------


@pytest.mark.parametrize("slide_id", ["tumor_001", "tumor_002"])
def test_annotation_polygons_follow_lesion(dataset, slide_id):
    out, plan = dataset
    assert not (out / "annotations" / "normal_001.xml").exists()
    groups = read_asap_xml(out / "annotations" / f"{slide_id}.xml")
    assert list(groups) == ["_0"] and 1 <= len(groups["_0"]) <= 2 * SMALL["lesions"]["count"][1]
    region = tumour_region(out / "annotations" / f"{slide_id}.xml")
    with open_slide(out / "slides" / f"{slide_id}.tif") as s:
        w, h = s.dimensions
        rgb = s.read_region((0, 0), 0, (w, h))
    assert region.area > 50 * 50  # at least a 25 um square
    assert Polygon([(0, 0), (w, 0), (w, h), (0, h)]).contains(region)
    inside = _polygon_mask(groups["_0"], (h, w))
    tissue = _tissue(rgb)
    assert tissue[inside].mean() > 0.97  # the lesion lies in tissue
    outside = tissue & ~_polygon_mask([np.asarray(region.buffer(20).exterior.coords)] if region.geom_type
                                      == "Polygon" else [np.asarray(g.buffer(20).exterior.coords)
                                                         for g in region.geoms], (h, w))
    hosp = S.resolve_config(SMALL)["hospitals"][int(_row(plan, slide_id).center)]
    hem, eos = _deconvolve(rgb, hosp)
    import cv2

    nuclear = cv2.GaussianBlur(hem.astype(np.float32), (0, 0), 1.5) > 0.4
    # Tumour nuclei are paler (vesicular chromatin) ...
    assert np.median(hem[inside & nuclear]) < np.median(hem[outside & nuclear]) - 0.1
    # ... the lesion is more eosinophilic between the nuclei ...
    assert np.median(eos[inside & ~nuclear]) > np.median(eos[outside & ~nuclear]) + 0.1
    # ... and its cells are larger: more nuclear area per detected nucleus (maxima of smoothed hematoxylin).
    smooth = cv2.GaussianBlur(hem.astype(np.float32), (0, 0), 4)
    peaks = (smooth == cv2.dilate(smooth, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (13, 13)))) & (smooth > 0.5)
    per_in = (nuclear & inside).sum() / max(1, (peaks & inside).sum())
    per_out = (nuclear & outside).sum() / max(1, (peaks & outside).sum())
    assert per_in > 1.15 * per_out, (per_in, per_out)


def test_colours_are_he_like(dataset):
    out, _ = dataset
    with open_slide(out / "slides" / "normal_001.tif") as s:
        w, h = s.dimensions
        rgb = s.read_region((0, 0), 0, (w, h)).astype(float)
    tissue = _tissue(rgb.astype(np.uint8))
    assert 0.3 < tissue.mean() < 0.9
    r, g, b = rgb[tissue].mean(0)
    assert 110 < r < 210 and 60 < g < 160 and 110 < b < 210, (r, g, b)
    assert r > g + 20 and b > g + 20  # purple-pink, not grey or green
    dark = rgb[tissue & (rgb.sum(2) < 3 * 110)]  # nuclei
    assert len(dark) > 0.05 * tissue.sum()
    assert np.all(np.abs(dark.mean(0) - [90, 50, 100]) < [35, 30, 35]), dark.mean(0)
    corner = rgb[:40, :40].reshape(-1, 3)
    assert corner.mean() > 225 and corner.std(0).max() < 8


def test_hospitals_differ_in_colour():
    cfg = S.resolve_config(SMALL)
    stats = []
    for center in range(len(cfg["hospitals"])):
        rgb, _ = S.render_pixels(cfg, "normal_001", 0, center)
        f = rgb.astype(float)
        tissue = _tissue(rgb)
        nuclei = tissue & (f.sum(2) < 3 * 130)
        stats.append((f[tissue].mean(0), f[nuclei].mean(0), f[:40, :40].reshape(-1, 3).mean(0)))
    assert len(stats) == 3
    (t0, _, bg0), (t1, _, bg1) = stats[:2]
    assert np.abs(t0 - t1).max() > 8, (t0, t1)
    assert np.abs(bg0 - bg1).max() > 3, (bg0, bg1)
    for i in range(3):
        for j in range(i + 1, 3):
            (_, ni, bi), (_, nj, bj) = stats[i], stats[j]
            assert np.abs(ni - nj).max() > 8, (i, j, ni, nj)  # hematoxylin hue and strength differ
            assert np.abs(bi - bj).max() > 3, (i, j, bi, bj)  # glass tint differs


@pytest.mark.parametrize("center", [0, 1, 2])
def test_glass_is_not_tissue_for_any_hospital(tmp_path, center):
    """CLAM's saturation threshold (8) must separate every hospital's glass from its tissue, as on real scanners."""
    from wsimil.slides.tissue import TissueParams, segment_tissue

    S.render_slide(SMALL, {"slide_id": "normal_001", "label": 0, "center": center}, tmp_path)
    with open_slide(tmp_path / "slides" / "normal_001.tif") as s:
        tm = segment_tissue(s, TissueParams.from_config({"seg_downsample": 4}))
    geometry = S.slide_geometry(SMALL, "normal_001", 0).tissue.mean()
    assert abs(tm.mask.mean() - geometry) < 0.06, (tm.mask.mean(), geometry)


def test_stats_script_reports_the_geometry(tmp_path, capsys):
    """benchmarks/synthetic_stats.py at toy scale: one row per tumour slide, fractions from the geometry."""
    import importlib.util
    from pathlib import Path

    import yaml

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "synthetic_stats.py"
    spec = importlib.util.spec_from_file_location("synthetic_stats", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({"synthetic": SMALL}))
    df = mod.main(["--config", str(cfg_file), "--n-tumour", "3", "--csv", str(tmp_path / "s.csv"), "--render", "1"])
    out = capsys.readouterr().out
    assert list(df.slide_id) == ["tumor_001", "tumor_002", "tumor_003"] and (tmp_path / "s.csv").exists()
    cfg = S.resolve_config(SMALL)
    for sid, frac in zip(df.slide_id, df.tumour_fraction):
        assert frac == pytest.approx(_fraction_of_tissue(cfg, sid), rel=1e-3)
    assert "tumour fraction of the tissue" in out and "cross-check on rendered files" in out
