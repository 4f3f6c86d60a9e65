"""Result figures and heatmaps on small fake tables: files written, sizes, input checks, the AUC they print."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from wsimil.models.base import list_methods
from wsimil.reporting import figures as F
from wsimil.reporting.heatmaps import _heat_image, plot_heatmaps, rank_normalise
from wsimil.slides import synthetic as S
from wsimil.slides.patching import grid_coords
from wsimil.slides.reader import open_slide

METHODS = ["maxpool", "minet", "focusmil", "abmil", "dsmil"]
SEEDS = [0, 1, 2]


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def _check_written(paths: list[Path], out: Path, width_in: tuple[float, float], dpi: int = 200) -> None:
    """PNG and PDF beside it, both non-empty; the PNG about ``width_in`` inches wide at ``dpi``."""
    assert paths == [out, out.with_suffix(".pdf")]
    for p in paths:
        assert p.stat().st_size > 1000, p
    assert out.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
    w, h = _png_size(out)
    assert width_in[0] * dpi <= w <= width_in[1] * dpi, (w, h)
    assert 250 <= h <= 3000, (w, h)
    assert not list(out.parent.glob(".*.tmp")), "temporary files left behind"


# -- fake tables ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def preds() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for i, m in enumerate(METHODS):
        for seed in SEEDS:
            y = np.repeat([0, 1], 15)
            s = rng.normal(size=30) + (0.5 + 0.5 * i) * y
            rows += [{"method": m, "seed": seed, "label": a, "score": b} for a, b in zip(y, s)]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def history() -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for m in ["minet", "focusmil_bs1", "focusmil_no_vib", "focusmil", "focusmil (beta=0.1)"]:
        for seed in SEEDS:
            for e in range(20 - 3 * seed):  # seeds stop at different epochs
                rows.append({"method": m, "seed": seed, "epoch": e, "train_auc": 1 - 0.5 * np.exp(-e / 4),
                             "val_auc": 0.6 + 0.05 * rng.normal() if e % 2 == 0 else np.nan})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def ablation() -> pd.DataFrame:
    rng = np.random.default_rng(2)
    return pd.DataFrame([{"n_pseudo_bags": k, "seed": s, "tier": t, "auc": 0.85 + 0.02 * rng.normal()}
                         for k in (1, 2, 4, 8, 16) for s in SEEDS for t in ("Tier 1", "Tier 2")])


@pytest.fixture(scope="module")
def dose() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    rows = []
    for m in METHODS:
        for s in SEEDS:
            for axis, slope, values in (("strength", 0.2, (0.0, 0.5, 1.0, 2.0)), ("fraction", 0.4, (0, 0.1, 0.5, 1))):
                rows += [{"method": m, "seed": s, "axis": axis, "value": v,
                          "auc": 0.9 - slope * v + 0.02 * rng.normal()} for v in values]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    rng = np.random.default_rng(4)
    return pd.DataFrame([{"experiment": e, "method": m, "seed": s,
                          "slide_auc": float(np.clip(0.8 + 0.1 * rng.normal(), 0, 1))}
                         for e in ("standard", "ood", "poison") for m in METHODS for s in SEEDS])


# -- colours --------------------------------------------------------------------------------------------------
def test_method_colors_fixed_and_distinct():
    everything = list_methods()
    full = F.method_colors(everything)
    assert len(set(full.values())) == len(everything)
    assert F.method_colors(["abmil"])["abmil"] == full["abmil"]  # independent of the other methods shown
    assert F.method_colors(list(reversed(everything))) == full
    variants = ["focusmil (beta=0.1)", "focusmil (beta=1)", "focusmil", "minet"]
    a, b = F.method_colors(variants), F.method_colors(variants[::-1])
    assert a == b and len(set(a.values())) == 4
    many = [f"m{i}" for i in range(16)]
    assert len(set(F.method_colors(many).values())) == 16


def test_method_styles_tell_families_apart():
    st = F.method_styles(["minet", "abmil", "focusmil (beta=0.1)", "unknown_method"])
    assert st["minet"]["family"] == "max-pooling" and st["abmil"]["family"] == "attention"
    assert st["focusmil (beta=0.1)"]["family"] == "max-pooling"
    assert st["unknown_method"]["family"] is None
    assert (st["minet"]["ls"], st["minet"]["marker"]) != (st["abmil"]["ls"], st["abmil"]["marker"])


# -- each figure ----------------------------------------------------------------------------------------------
def test_roc_curves_written_and_auc_matches_sklearn(preds, tmp_path, monkeypatch):
    figs = []
    save = F._save
    monkeypatch.setattr(F, "_save", lambda fig, out, dpi: figs.append(fig) or save(fig, out, dpi))
    out = tmp_path / "roc.png"
    paths = F.plot_roc_curves(preds, out, title="test ROC")
    _check_written(paths, out, (6.5, 7.5))
    titles = {ax.get_title().split("\n")[0]: ax.get_title() for ax in figs[0].axes if ax.get_visible()}
    assert list(titles) == METHODS and len(figs[0].axes) == len(METHODS)  # five methods: one row, no empty panel
    for m in METHODS:
        aucs = [roc_auc_score(g["label"], g["score"]) for _, g in preds[preds["method"] == m].groupby("seed")]
        found = re.search(r"AUC (\d\.\d{3}) \((\d+) seeds, (\d+) slides\)", titles[m])
        assert found, titles[m]
        assert float(found.group(1)) == pytest.approx(np.mean(aucs), abs=6e-4)
        n_slides = preds[(preds["method"] == m) & (preds["seed"] == 0)].shape[0]
        assert int(found.group(2)) == len(aucs) and int(found.group(3)) == n_slides


def test_roc_curves_use_only_test_split_and_reject_one_class(preds, tmp_path):
    two = preds[preds["method"].isin(METHODS[:2])].assign(split="test")
    extra = two.assign(split="train", label=0)  # would make every seed one-class if it were used
    paths = F.plot_roc_curves(pd.concat([two, extra]), tmp_path / "roc2.png")
    _check_written(paths, tmp_path / "roc2.png", (3.2, 3.8))  # two panels: one column wide
    with pytest.raises(ValueError, match="both classes"):
        F.plot_roc_curves(two.assign(label=1), tmp_path / "bad.png")


def test_training_curves(history, tmp_path):
    out = tmp_path / "train.png"
    _check_written(F.plot_training_curves(history, out), out, (6.5, 7.3))


def test_dtfd_ablation(ablation, tmp_path):
    out = tmp_path / "dtfd.png"
    _check_written(F.plot_dtfd_ablation(ablation, out), out, (3.2, 3.8))


def test_dose_response(dose, tmp_path):
    out = tmp_path / "dose.png"
    _check_written(F.plot_dose_response(dose, out, fixed_fraction=0.1, fixed_strength=1.0), out, (6.5, 7.3))
    with pytest.raises(ValueError, match="'intensity'"):
        F.plot_dose_response(dose.replace({"axis": {"strength": "intensity"}}), tmp_path / "bad.png")


def test_metric_bars(bars, tmp_path):
    out = tmp_path / "bars.png"
    _check_written(F.plot_metric_bars(bars, out, "slide_auc", "test slide AUC"), out, (5.0, 7.3))
    one = tmp_path / "bars1.png"
    _check_written(F.plot_metric_bars(bars[bars["experiment"] == "ood"], one, "slide_auc", "AUC"), one, (3.2, 3.8))


@pytest.mark.parametrize(
    ("func", "table", "column", "args"),
    [
        (F.plot_roc_curves, "preds", "score", ()),
        (F.plot_training_curves, "history", "val_auc", ()),
        (F.plot_dtfd_ablation, "ablation", "tier", ()),
        (F.plot_dose_response, "dose", "axis", ()),
        (F.plot_metric_bars, "bars", "slide_auc", ("slide_auc", "AUC")),
        (F.plot_metric_bars, "bars", "experiment", ("slide_auc", "AUC")),
    ],
)
def test_missing_column_is_named(func, table, column, args, request, tmp_path):
    df = request.getfixturevalue(table).drop(columns=[column])
    with pytest.raises(ValueError, match=f"'{column}'") as err:
        func(df, tmp_path / "x.png", *args)
    assert isinstance(err.value, F.WsimilError)  # the CLI reports it like every other input error
    assert not list(tmp_path.iterdir()), "nothing written on bad input"


# -- heatmaps -------------------------------------------------------------------------------------------------
SYNTH = {
    "seed": 7,
    "size_um": [440, 340],
    "slides": {"train": {"normal": 1, "tumour": 1}, "val": {"normal": 0, "tumour": 0},
               "test": {"normal": 0, "tumour": 0}},
    "tissue": {"follicles": [1, 2], "follicle_radius_um": [30.0, 50.0]},
    "lesions": {"count": [1, 1], "radius_um": [80.0, 110.0]},
    "min_level_size": 128,
    "tile_size": 128,
}


@pytest.fixture(scope="module")
def heat_slides(tmp_path_factory):
    from wsimil.slides.annotations import tumour_fraction, tumour_region

    out = tmp_path_factory.mktemp("heat")
    S.generate_dataset(SYNTH, out, slide_ids=["tumor_001", "normal_001"])
    rng = np.random.default_rng(5)
    slides, scores = [], {}
    for sid, ann in (("tumor_001", out / "annotations" / "tumor_001.xml"), ("normal_001", None)):
        path = out / "slides" / f"{sid}.tif"
        with open_slide(path) as s:
            coords = grid_coords(s.dimensions, 64)
        tf = tumour_fraction(tumour_region(ann), coords, 64) if ann else np.zeros(len(coords))
        slides.append({"slide_id": sid, "path": path, "annotation": ann, "coords": coords, "patch_size_level0": 64})
        scores[(sid, "maxpool")] = 5 * tf + rng.normal(size=len(coords))  # logits
        scores[(sid, "abmil")] = rng.dirichlet(np.ones(len(coords)))  # attention weights
    return slides, scores


def test_plot_heatmaps_writes_png_and_pdf(heat_slides, tmp_path):
    slides, scores = heat_slides
    out = tmp_path / "heat.png"
    _check_written(plot_heatmaps(slides, ["maxpool", "abmil"], scores, out), out, (6.5, 7.3))


def test_plot_heatmaps_outlines_the_marked_patches(heat_slides, tmp_path):
    """The poisoned patches are outlined in magenta in every panel of their slide; no marks, no magenta."""
    import matplotlib.image as mpimg

    slides, scores = heat_slides
    n = len(slides[0]["coords"])
    mask = np.zeros(n, bool)
    mask[: n // 2] = True

    def magenta(path):
        img = mpimg.imread(path)[..., :3]
        return int((np.abs(img - np.array([0xE7, 0x29, 0x8A]) / 255).max(axis=-1) < 0.08).sum())

    plain = plot_heatmaps(slides, ["maxpool", "abmil"], scores, tmp_path / "plain.png")[0]
    marked = plot_heatmaps(slides, ["maxpool", "abmil"], scores, tmp_path / "marked.png",
                           marked={"tumor_001": mask})[0]
    assert magenta(plain) == 0 and magenta(marked) > 200
    with pytest.raises(ValueError, match="marks for"):
        plot_heatmaps(slides, ["abmil"], scores, tmp_path / "x.png", marked={"tumor_001": mask[:-1]})


def test_plot_heatmaps_checks_its_input(heat_slides, tmp_path):
    slides, scores = heat_slides
    with pytest.raises(ValueError, match="'tumor_001'.*'dsmil'"):
        plot_heatmaps(slides, ["maxpool", "dsmil"], scores, tmp_path / "x.png")
    short = {**scores, ("normal_001", "abmil"): scores[("normal_001", "abmil")][:-1]}
    with pytest.raises(ValueError, match="normal_001"):
        plot_heatmaps(slides, ["abmil"], short, tmp_path / "x.png")
    with pytest.raises(ValueError, match="patch_size_level0"):
        plot_heatmaps([{k: v for k, v in slides[0].items() if k != "patch_size_level0"}], ["abmil"], scores,
                      tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


def test_rank_normalise_and_heat_image():
    r = rank_normalise(np.array([10.0, -3.0, 10.0, 0.5]))
    assert r.tolist() == pytest.approx([5 / 6, 0.0, 5 / 6, 1 / 3])  # ties share their mean rank
    assert rank_normalise(np.array([1e-9, 1.0, 1e9])).tolist() == [0.0, 0.5, 1.0]  # the scale does not matter
    # two 100 px patches on a 400 x 200 px slide drawn at 40 x 20: each covers a 10 x 10 block
    heat = _heat_image(np.array([[0, 0], [300, 100]]), 100, np.array([0.2, 0.9]), (20, 40), (400, 200))
    assert np.nanmin(heat[:10, :10]) == np.nanmax(heat[:10, :10]) == 0.2
    assert np.all(heat[10:, 30:] == 0.9)
    assert np.isnan(heat[10:, :30]).all() and np.isnan(heat[:10, 10:]).all()


def test_metric_bars_span_the_seeds_and_stay_in_range(tmp_path, monkeypatch):
    """Three seeds at 0.02, 0.98, 1.0: a mean ± std bar would run past 1 and below 0; the seed range does not."""
    from matplotlib.collections import LineCollection

    figs = []
    save = F._save
    monkeypatch.setattr(F, "_save", lambda fig, out, dpi: figs.append(fig) or save(fig, out, dpi))
    df = pd.DataFrame({"experiment": "standard", "method": "maxpool", "seed": [0, 1, 2],
                       "slide_auc": [0.02, 0.98, 1.0]})
    F.plot_metric_by_method(df, "slide_auc", tmp_path / "m.png")
    segs = [seg for c in figs[0].axes[0].collections if isinstance(c, LineCollection) for seg in c.get_segments()]
    ys = np.concatenate([np.asarray(seg)[:, 1] for seg in segs])
    assert len(segs) and ys.min() == pytest.approx(0.02) and ys.max() == pytest.approx(1.0)
