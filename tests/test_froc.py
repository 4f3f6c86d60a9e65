"""The CAMELYON16 lesion-level FROC on hand-made lesions, heatmaps and detections (known answers)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from shapely import affinity
from shapely.geometry import Point, Polygon, box

from wsimil.evaluation.froc import (
    Lesion,
    detections_from_heatmap,
    froc,
    lesions_from_region,
    lesions_from_xml,
    major_axis_length,
    match_detections,
    resampled_froc,
    slide_matches,
)
from wsimil.io import WsimilError
from wsimil.slides.annotations import write_asap_xml

# ----------------------------------------------------------------------------------------- geometry


def test_major_axis_of_disc_and_rectangle():
    assert major_axis_length(Point(0, 0).buffer(100, quad_segs=256)) == pytest.approx(200, rel=1e-4)
    # rectangle a x b: variance along the long side a^2/12 -> major axis 4a/sqrt(12)
    assert major_axis_length(box(10, 20, 310, 120)) == pytest.approx(4 * 300 / math.sqrt(12))
    rotated = affinity.rotate(box(0, 0, 300, 100), 37, origin="centroid")
    assert major_axis_length(rotated) == pytest.approx(4 * 300 / math.sqrt(12))
    # orientation of the ring does not matter
    assert major_axis_length(Polygon(list(box(0, 0, 300, 100).exterior.coords)[::-1])) == pytest.approx(
        4 * 300 / math.sqrt(12))


def test_major_axis_matches_skimage_regionprops():
    skimage_measure = pytest.importorskip("skimage.measure")
    from skimage.draw import polygon as draw_polygon

    poly = affinity.rotate(Polygon([(50, 60), (330, 90), (300, 170), (120, 200), (70, 150)]), 25, origin="centroid")
    img = np.zeros((400, 400), dtype=np.uint8)
    xy = np.asarray(poly.exterior.coords)
    rr, cc = draw_polygon(xy[:, 1], xy[:, 0], img.shape)
    img[rr, cc] = 1
    expected = skimage_measure.regionprops(img)[0].axis_major_length
    assert major_axis_length(poly) == pytest.approx(expected, rel=0.01)


def test_itc_rule_is_in_micrometres_after_75um_growth():
    # a disc of diameter D um grows to D + 75 um; ITC when that is < 275 um, i.e. D < 200 um
    mpp = 0.25
    for diameter_um, itc in ((150, True), (190, True), (210, False), (400, False)):
        disc = Point(5000, 5000).buffer(diameter_um / 2 / mpp, quad_segs=64)
        (lesion,) = lesions_from_region(disc, mpp)
        assert lesion.major_axis_um == pytest.approx(diameter_um + 75, rel=1e-3)
        assert lesion.is_itc is itc, diameter_um
    # the same pixels on a coarser scanner are a larger lesion
    disc = Point(0, 0).buffer(300, quad_segs=64)  # 600 px across
    assert lesions_from_region(disc, 0.25)[0].is_itc  # 150 um + 75
    assert not lesions_from_region(disc, 0.5)[0].is_itc  # 300 um + 75


def test_lesions_merge_within_75um_and_holes_are_filled():
    mpp = 1.0  # 1 px = 1 um
    a, near, far = box(0, 0, 500, 500), box(560, 0, 1060, 500), box(600, 0, 1100, 500)
    assert len(lesions_from_region(a.union(near), mpp)) == 1  # 60 um gap < 75 um
    assert len(lesions_from_region(a.union(far), mpp)) == 2  # 100 um gap
    ring = box(0, 0, 1000, 1000).difference(box(200, 200, 800, 800))
    (lesion,) = lesions_from_region(ring, mpp)
    assert lesion.geometry.contains(Point(500, 500)) and not lesion.geometry.interiors
    # grown by 37.5 um on each side
    assert lesion.geometry.contains(Point(-37, 500)) and not lesion.geometry.contains(Point(-38, 500))
    assert lesions_from_region(Polygon(), mpp) == []


def test_lesions_from_xml(tmp_path):
    path = tmp_path / "tumor_001.xml"
    big = np.array([[1000, 1000], [3000, 1000], [3000, 3000], [1000, 3000]])  # 1000 um at 0.5 um/px
    small = np.array([[8000, 8000], [8100, 8000], [8100, 8100], [8000, 8100]])  # 50 um
    write_asap_xml(path, [big, small])
    lesions = lesions_from_xml(path, 0.5)
    assert [les.is_itc for les in lesions] == [False, True]
    assert lesions[0].geometry.contains(Point(2000, 2000))
    assert lesions_from_xml(None, 0.5) == []
    with pytest.raises(WsimilError, match="missing.xml"):
        lesions_from_xml(tmp_path / "missing.xml", 0.5)


# ----------------------------------------------------------------------------------------- detections


def _grid(values: np.ndarray, step: int = 10, origin=(0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """Scores and top-left coords of a full grid of patches (row-major)."""
    h, w = values.shape
    ys, xs = np.mgrid[0:h, 0:w]
    coords = np.stack([xs.ravel() * step + origin[0], ys.ravel() * step + origin[1]], axis=1)
    return values.ravel().astype(float), coords


def test_detections_are_local_maxima_with_one_per_plateau():
    heat = np.array([
        [0.1, 0.2, 0.1, 0.0, 0.0],
        [0.2, 0.9, 0.2, 0.0, 0.6],
        [0.1, 0.2, 0.1, 0.0, 0.6],
        [0.0, 0.0, 0.0, 0.0, 0.0],
    ])
    scores, coords = _grid(heat, step=10, origin=(1000, 2000))
    det = detections_from_heatmap(scores, coords, 10)
    # the 0.9 peak (patch centre), then the 0.6 plateau once (its cell nearest the centroid, row-major tie)
    np.testing.assert_allclose(det, [[1015, 2015, 0.9], [1045, 2015, 0.6]])


def test_plateau_touching_a_higher_cell_is_not_a_maximum():
    scores, coords = _grid(np.array([[0.9, 0.5, 0.5, 0.5]]))
    np.testing.assert_allclose(detections_from_heatmap(scores, coords, 10), [[5, 5, 0.9]])
    # a constant heatmap is one plateau -> one detection
    scores, coords = _grid(np.full((3, 3), 0.4))
    np.testing.assert_allclose(detections_from_heatmap(scores, coords, 10), [[15, 15, 0.4]])


def test_missing_cells_split_regions_and_min_score():
    scores = np.array([0.3, 0.5])
    coords = np.array([[0, 0], [40, 0]])  # cells 0 and 4: not neighbours
    np.testing.assert_allclose(detections_from_heatmap(scores, coords, 10), [[45, 5, 0.5], [5, 5, 0.3]])
    np.testing.assert_allclose(detections_from_heatmap(scores, coords, 10, min_score=0.4), [[45, 5, 0.5]])
    assert detections_from_heatmap(np.zeros(0), np.zeros((0, 2)), 10).shape == (0, 3)
    with pytest.raises(ValueError, match="2 patch scores but 1"):
        detections_from_heatmap(scores, coords[:1], 10)
    with pytest.raises(ValueError, match="NaN"):
        detections_from_heatmap(np.array([0.1, np.nan]), coords, 10)


# ----------------------------------------------------------------------------------------- FROC


def _lesion(x0, y0, x1, y1, itc=False) -> Lesion:
    return Lesion(geometry=box(x0, y0, x1, y1), is_itc=itc, major_axis_um=0.0)


def test_perfect_heatmap_gives_froc_one_and_outside_only_gives_zero():
    mpp, step = 1.0, 100
    region = box(300, 300, 700, 700)  # cells 3..6 of a 12 x 12 grid
    lesions = lesions_from_region(region, mpp)
    assert len(lesions) == 1 and not lesions[0].is_itc
    ys, xs = np.mgrid[0:12, 0:12]
    inside = (xs >= 3) & (xs <= 6) & (ys >= 3) & (ys <= 6)
    perfect = np.where(inside, 1.0, 0.0)
    det_t = detections_from_heatmap(*_grid(perfect, step), step)
    det_n = detections_from_heatmap(*_grid(np.full((12, 12), 0.05), step), step)  # normal slide: one FP at 0.05
    res = froc({"t": det_t, "n": det_n}, {"t": lesions, "n": []})
    assert res["froc"] == 1.0 and all(v == 1.0 for v in res["sensitivity"].values())
    assert res["n_lesions"] == 1 and res["n_slides"] == 2 and res["n_detected_lesions"] == 1

    outside = np.where(inside, 0.1, 0.9)  # fires everywhere but the lesion
    det_t = detections_from_heatmap(*_grid(outside, step), step)
    assert len(det_t) == 1 and not lesions[0].geometry.contains(Point(det_t[0, :2]))
    res = froc({"t": det_t, "n": det_n}, {"t": lesions, "n": []})
    assert res["froc"] == 0.0 and res["n_false_positives"] == 2 and res["n_detected_lesions"] == 0


def test_detection_in_an_itc_is_neither_tp_nor_fp():
    lesions = {"big": [_lesion(0, 0, 1000, 1000)], "itc": [_lesion(0, 0, 50, 50, itc=True)]}
    dets = {"big": np.array([[500, 500, 0.6]]), "itc": np.array([[25, 25, 0.95]])}
    res = froc(dets, lesions)
    assert res["n_lesions"] == 1 and res["n_itc_lesions"] == 1
    assert res["n_false_positives"] == 0 and res["n_ignored_detections"] == 1
    assert res["froc"] == 1.0
    # an ITC-only slide set has no lesion to find: undefined, not 0 or 1
    only = froc({"itc": dets["itc"]}, {"itc": lesions["itc"]})
    assert math.isnan(only["froc"]) and "no non-ITC lesion" in only["nan_reason"]


def test_two_hits_in_one_lesion_count_once():
    lesions = [_lesion(0, 0, 1000, 1000), _lesion(5000, 5000, 6000, 6000)]
    det = np.array([[100, 100, 0.9], [900, 900, 0.8], [3000, 3000, 0.7]])
    lesion_probs, fp_probs, ignored = match_detections(det, lesions)
    np.testing.assert_array_equal(lesion_probs, [0.9, -np.inf])
    np.testing.assert_array_equal(fp_probs, [0.7])
    assert ignored == 1
    res = froc({"a": det}, {"a": lesions})
    # the ignored 0.8 hit is no threshold: 0.9 -> 1 TP 0 FP; 0.7 -> 1 TP 1 FP
    np.testing.assert_allclose(res["thresholds"], [np.inf, 0.9, 0.7])
    np.testing.assert_allclose(res["fps"], [0, 0, 1])
    np.testing.assert_allclose(res["sens"], [0, 0.5, 0.5])
    assert res["n_detected_lesions"] == 1 and res["n_false_positives"] == 1 and res["n_ignored_detections"] == 1
    assert res["froc"] == 0.5


def test_fp_rate_is_normalised_by_all_slides():
    # slide A: lesions L1, L2; hits 0.9 (L1), 0.5 (L2), FP 0.8. slide B (normal): FPs 0.7, 0.3.
    lesions = {"A": [_lesion(0, 0, 100, 100), _lesion(1000, 0, 1100, 100)], "B": []}
    dets = {"A": np.array([[50, 50, 0.9], [500, 500, 0.8], [1050, 50, 0.5]]),
            "B": np.array([[10, 10, 0.7], [20, 20, 0.3]])}
    # thresholds 0.9 / 0.8 / 0.7 / 0.5 / 0.3 -> TP 1,1,1,2,2 ; FP 0,1,2,2,3
    res2 = froc(dets, lesions)  # 2 slides: FP/slide 0, .5, 1, 1, 1.5
    np.testing.assert_allclose(res2["fps"], [0, 0, 0.5, 1, 1, 1.5])
    np.testing.assert_allclose(res2["sens"], [0, 0.5, 0.5, 0.5, 1, 1])
    assert res2["sensitivity"] == {"0.25": 0.5, "0.5": 0.5, "1": 1.0, "2": 1.0, "4": 1.0, "8": 1.0}
    assert res2["froc"] == pytest.approx(5 / 6)
    res4 = froc(dets, lesions, n_slides=4)  # two more slides with nothing: FP/slide 0, .25, .5, .5, .75
    assert res4["sensitivity"]["0.25"] == 0.5 and res4["sensitivity"]["0.5"] == 1.0
    assert res4["froc"] == pytest.approx(11 / 12)
    # between two points the sensitivity is interpolated linearly: 8 slides -> FP/slide .125, .25, .25, .375
    res8 = froc(dets, lesions, n_slides=8)
    assert res8["sensitivity"]["0.25"] == 1.0
    with pytest.raises(ValueError, match="n_slides=1 but 2 slides"):
        froc(dets, lesions, n_slides=1)


def test_interpolation_between_curve_points():
    lesions = {"A": [_lesion(0, 0, 10, 10), _lesion(100, 0, 110, 10)]}
    # FP at 0.9, L1 at 0.8, 3 FPs at 0.7, L2 at 0.1; one slide
    det = np.array([[500, 500, 0.9], [5, 5, 0.8], [600, 600, 0.7], [700, 700, 0.7], [800, 800, 0.7], [105, 5, 0.1]])
    res = froc({"A": det}, lesions)
    # curve (FP/slide, sens): (0,0) (1,0) (1,.5) (4,.5) (4,1); at a repeated FP rate the highest sensitivity
    # counts -> (0,0) (1,.5) (4,1), linear in between; beyond the last point it stays at 1
    np.testing.assert_allclose(res["fps"], [0, 1, 1, 4, 4])
    np.testing.assert_allclose(res["sens"], [0, 0, 0.5, 0.5, 1])
    assert res["sensitivity"] == pytest.approx({"0.25": 0.125, "0.5": 0.25, "1": 0.5, "2": 2 / 3, "4": 1.0, "8": 1.0})


def _official_style_froc(per_slide_lesion_probs, per_slide_fp_probs, n_lesions):
    """The challenge script's arithmetic, written out: missed lesions as probability 0, thresholds are all
    distinct probabilities but the smallest, np.interp on the reversed curve."""
    fps = [p for ps in per_slide_fp_probs for p in ps]
    tps = [p for ps in per_slide_lesion_probs for p in ps]
    all_probs = sorted(set(fps + tps))
    tot_fp, tot_tp = [], []
    for t in all_probs[1:]:
        tot_fp.append((np.asarray(fps) >= t).sum())
        tot_tp.append((np.asarray(tps) >= t).sum())
    tot_fp.append(0)
    tot_tp.append(0)
    fp_rate = np.asarray(tot_fp) / len(per_slide_fp_probs)
    sens = np.asarray(tot_tp) / n_lesions
    return float(np.mean(np.interp([0.25, 0.5, 1, 2, 4, 8], fp_rate[::-1], sens[::-1])))


@pytest.mark.parametrize("seed", range(5))
def test_froc_agrees_with_the_challenge_arithmetic(seed):
    rng = np.random.default_rng(seed)
    n_slides = 6
    dets, lesions, lesion_probs, fp_probs = {}, {}, [], []
    for s in range(n_slides):
        n_les = int(rng.integers(1 if s == 0 else 0, 4))  # slide 0 has a missed lesion: the script's 0
        les = [_lesion(i * 1000, 0, i * 1000 + 500, 500) for i in range(n_les)]
        rows, lp = [], []
        for i in range(n_les):
            if s == 0 and i == 0 or rng.random() < 0.3:
                lp.append(0.0)  # missed (the script's 0)
                continue
            ps = np.round(rng.uniform(0.01, 1, size=int(rng.integers(1, 3))), 2)
            rows += [[i * 1000 + 100 + 10 * k, 100, p] for k, p in enumerate(ps)]
            lp.append(float(ps.max()))
        fps = np.round(rng.uniform(0.01, 1, size=int(rng.integers(0, 6))), 2)
        rows += [[50_000 + 10 * k, 50_000, p] for k, p in enumerate(fps)]
        dets[f"s{s}"] = np.asarray(rows, dtype=float).reshape(-1, 3)
        lesions[f"s{s}"] = les
        lesion_probs.append(lp)
        fp_probs.append(list(fps))
    n_lesions = sum(len(v) for v in lesions.values())
    if n_lesions == 0:
        pytest.skip("no lesion drawn")
    res = froc(dets, lesions, n_slides=n_slides)
    assert res["froc"] == pytest.approx(_official_style_froc(lesion_probs, fp_probs, n_lesions))


# ----------------------------------------------------------------------------------------- resampling


def _random_slides(rng, n_slides=7):
    detections, lesions = {}, {}
    for k in range(n_slides):
        s = f"s{k}"
        lesions[s] = [Lesion(box(x, 0, x + 400, 400), False, 500.0) for x in range(0, 400 * rng.integers(0, 3) * 2, 800)]
        n = int(rng.integers(0, 12))
        xy = rng.uniform(0, 2400, size=(n, 2))
        detections[s] = np.column_stack([xy, rng.choice([0.1, 0.4, 0.7, rng.uniform()], size=n)])  # ties included
    return detections, lesions


@pytest.mark.parametrize("seed", range(5))
def test_resampled_froc_is_the_froc_of_the_drawn_slides(seed):
    """A resample's FROC equals froc() on the slides it draws, each repeat a copy (ties and misses included);
    the row of ones is the FROC of the slides as they are."""
    rng = np.random.default_rng(seed)
    detections, lesions = _random_slides(rng)
    lesions["s0"] = [Lesion(box(0, 0, 400, 400), False, 500.0)]  # at least one non-ITC lesion
    slides = sorted(detections)
    matches = slide_matches(detections, lesions, slides)
    counts = np.vstack([np.ones(len(slides), int), rng.multinomial(len(slides), np.full(len(slides), 1 / len(slides)), size=6)])
    got = resampled_froc(matches, counts, chunk=4)
    for b, row in enumerate(counts):
        det = {f"{s}#{i}": detections[s] for s, c in zip(slides, row) for i in range(c)}
        les = {f"{s}#{i}": lesions[s] for s, c in zip(slides, row) for i in range(c)}
        want = froc(det, les, n_slides=int(row.sum()))["froc"]
        if math.isnan(want):
            assert math.isnan(got[b])
        else:
            assert got[b] == pytest.approx(want, abs=1e-12), (b, row)
    assert got[0] == pytest.approx(froc(detections, lesions)["froc"], abs=1e-12)


def test_resampled_froc_refuses_counts_of_another_slide_set():
    with pytest.raises(ValueError, match="counts has 3 slides, matches 2"):
        resampled_froc([(np.array([0.5]), np.zeros(0)), (np.zeros(0), np.array([0.2]))], np.ones((1, 3)))


def test_froc_inputs_parse_each_annotation_once_with_a_cache(tmp_path, monkeypatch):
    """Two runs on the same slides: with a shared cache the XML is parsed once and both get the same lesions;
    the detections are each run's own."""
    import h5py

    from wsimil.evaluation import evaluate
    from wsimil.features.store import write_features

    xml = tmp_path / "tumor_001.xml"
    write_asap_xml(xml, [np.array([[0, 0], [2000, 0], [2000, 2000], [0, 2000]])])
    coords = np.array([[0, 0], [512, 0], [5120, 5120]])
    for s in ("tumor_001", "normal_001"):
        write_features(tmp_path / "f" / f"{s}.h5", np.ones((3, 4), np.float16), coords,
                       attrs={"level0_size": 512, "mpp_level0": 0.5})
    runs = []
    for k, top in enumerate([0, 2]):
        run = tmp_path / f"run{k}"
        run.mkdir()
        with h5py.File(run / "instance_scores.h5", "w") as f:
            for s in ("tumor_001", "normal_001"):
                v = np.zeros(3, np.float32)
                v[top] = 1.0
                f[s] = v
        runs.append(run)
    parsed = []
    real = evaluate.lesions_from_xml
    monkeypatch.setattr(evaluate, "lesions_from_xml", lambda p, mpp: parsed.append(p) or real(p, mpp))
    slides, labels = ["tumor_001", "normal_001"], {"tumor_001": 1, "normal_001": 0}
    ann = {"tumor_001": str(xml), "normal_001": ""}
    cache: dict = {}
    got = [evaluate.froc_inputs(r, tmp_path / "f", slides, labels, ann, cache) for r in runs]
    assert parsed.count(xml) == 1 and len(parsed) == 2  # the tumour XML once, the normal slide (None) once
    assert got[0][1]["tumor_001"] is got[1][1]["tumor_001"] and got[0][1]["normal_001"] == []
    fresh = evaluate.froc_inputs(runs[0], tmp_path / "f", slides, labels, ann)
    assert [les.geometry.equals(f.geometry) for les, f in zip(got[0][1]["tumor_001"], fresh[1]["tumor_001"])] == [True]
    # each run's own detections: run0's top maximum on the lesion's patch, run1's far outside it
    assert got[0][0]["tumor_001"][0].tolist() == [256, 256, 1] and got[1][0]["tumor_001"][0].tolist() == [5376, 5376, 1]
