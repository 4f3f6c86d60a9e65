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


def _errorbars(ax) -> list[tuple[float, float, tuple[float, float] | None]]:
    """``(x, y, (bar low, bar high) or None)`` of every drawn error bar marker (legend-only ones skipped)."""
    from matplotlib.container import ErrorbarContainer

    out = []
    for c in ax.containers:
        if not isinstance(c, ErrorbarContainer):
            continue
        line, _, bars = c.lines
        if line is None or len(line.get_xdata()) == 0:
            continue
        span = None
        if bars:
            seg = np.asarray(bars[0].get_segments()[0])
            span = (float(seg[:, 1].min()), float(seg[:, 1].max())) if c.has_yerr else \
                (float(seg[:, 0].min()), float(seg[:, 0].max()))
        out.append((float(line.get_xdata()[0]), float(line.get_ydata()[0]), span))
    return out


def _legend_texts(fig) -> list[str]:
    return [t.get_text() for leg in [*fig.legends, *(a.get_legend() for a in fig.axes)] if leg for t in leg.get_texts()]


def _overlap(a, b) -> bool:
    """Whether two display-space bounding boxes share any area."""
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


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
def test_roc_curves_written_and_auc_matches_sklearn(preds, tmp_path, drawn):
    out = tmp_path / "roc.png"
    paths = F.plot_roc_curves(preds, out, title="test ROC")
    _check_written(paths, out, (6.5, 7.5))
    fig = drawn[0]
    titles = {ax.get_title().split("\n")[0]: ax.get_title() for ax in fig.axes}
    assert list(titles) == METHODS and len(fig.axes) == len(METHODS)  # five methods: one row, no empty panel
    for m in METHODS:
        aucs = [roc_auc_score(g["label"], g["score"]) for _, g in preds[preds["method"] == m].groupby("seed")]
        found = re.fullmatch(r"AUC (\d\.\d{3}) ± (\d\.\d{3})", titles[m].split("\n")[1])
        assert found, titles[m]
        assert float(found.group(1)) == pytest.approx(np.mean(aucs), abs=6e-4)
        assert float(found.group(2)) == pytest.approx(np.std(aucs, ddof=1), abs=6e-4)
    # the key names what is drawn: the seeds' curves, their mean, what the title's number is, and the counts
    texts = _legend_texts(fig)
    assert texts == [f"each seed's ROC ({len(SEEDS)} seeds)", "mean of the seeds' ROCs", "chance"]
    n_slides = preds[(preds["method"] == METHODS[0]) & (preds["seed"] == 0)].shape[0]
    assert fig.legends[0].get_title().get_text().split() == (
        f"panel titles: mean ± sd of the seeds' test AUCs; {n_slides} test slides").split()


@pytest.mark.parametrize("n_methods", [1, 2, 5])
def test_roc_titles_do_not_overlap(preds, tmp_path, drawn, n_methods):
    """At the figure's own size the panel titles (method and AUC), the figure title and the key stay apart."""
    shown = preds[preds["method"].isin(METHODS[:n_methods])]
    F.plot_roc_curves(shown.replace({"method": {"maxpool": "focusmil (beta=0.1)"}}), tmp_path / "roc.png",
                      title="ROC, standard test slides (mini-camelyon)")
    fig = drawn[0]
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not _overlap(boxes[i], boxes[j]), (fig.axes[i].get_title(), fig.axes[j].get_title())
    suptitle = fig._suptitle.get_window_extent(renderer)
    key = fig.legends[0].get_window_extent(renderer)
    assert not any(_overlap(suptitle, b) for b in boxes)
    for ax in fig.axes:
        assert not _overlap(key, ax.xaxis.label.get_window_extent(renderer))
        assert not _overlap(key, ax.get_window_extent(renderer))
    assert all(0 <= b.x0 and b.x1 <= fig.bbox.width for b in boxes)


def test_roc_curves_use_only_test_split_and_reject_one_class(preds, tmp_path):
    two = preds[preds["method"].isin(METHODS[:2])].assign(split="test")
    extra = two.assign(split="train", label=0)  # would make every seed one-class if it were used
    paths = F.plot_roc_curves(pd.concat([two, extra]), tmp_path / "roc2.png")
    _check_written(paths, tmp_path / "roc2.png", (3.2, 3.8))  # two panels: one column wide
    with pytest.raises(ValueError, match="both classes"):
        F.plot_roc_curves(two.assign(label=1), tmp_path / "bad.png")


def test_training_curves(history, tmp_path, drawn):
    out = tmp_path / "train.png"
    _check_written(F.plot_training_curves(history, out), out, (6.5, 7.3))
    fig = drawn[0]
    assert [ax.get_title() for ax in fig.axes] == list(dict.fromkeys(history["method"]))  # no empty panel
    lo, hi = fig.axes[0].get_xlim()
    assert all(ax.get_xlim() == (lo, hi) for ax in fig.axes)  # 14 to 20 epochs: one shared axis
    assert lo <= 0 and 19 <= hi <= 20


def test_training_curves_fit_each_panel_to_its_epochs(tmp_path, drawn):
    """An 8-epoch run beside 60-epoch runs gets its own epoch axis; unused grid cells are removed; the selected
    epoch of each seed is marked on its validation curve."""
    rows = []
    for m, n in (("minet", 8), ("focusmil_bs1", 8), ("focusmil", 60), ("focusmil_no_vib", 60), ("abmil", 60),
                 ("focusmil (beta=0.1)", 60)):
        for seed in SEEDS:
            best = min(n - 1, 3 + seed)
            rows += [{"method": m, "seed": seed, "epoch": e, "train_auc": 1 - 0.4 * np.exp(-e / 3),
                      "val_auc": 0.7 + 0.02 * (e == best), "selected_epoch": best} for e in range(n)]
    history = pd.DataFrame(rows)
    F.plot_training_curves(history, tmp_path / "t.png")
    fig = drawn[0]
    assert len(fig.axes) == 6 and all(ax.get_visible() for ax in fig.axes)  # 2 x 3, nothing hidden or empty
    for ax in fig.axes:
        last = history.loc[history["method"] == ax.get_title(), "epoch"].max()
        lo, hi = ax.get_xlim()
        assert lo <= 0 and last <= hi <= last + 2, (ax.get_title(), ax.get_xlim())
        assert ax.get_xlabel() == "epoch"
        assert max(ax.get_xticks()[(ax.get_xticks() >= lo) & (ax.get_xticks() <= hi)]) >= 0.5 * last
        marks = [ln for ln in ax.get_lines() if ln.get_gid() == "selected_epoch"]
        h = history[history["method"] == ax.get_title()]
        want = sorted((float(e), 0.72) for e in h.groupby("seed")["selected_epoch"].first())
        assert sorted((float(ln.get_xdata()[0]), round(float(ln.get_ydata()[0]), 6)) for ln in marks) == want
    assert [ax.get_ylabel() for ax in fig.axes] == ["slide AUC", "", "", "slide AUC", "", ""]
    assert "selected epoch (one per seed)" in _legend_texts(fig)
    F.plot_training_curves(history.drop(columns="selected_epoch"), tmp_path / "t2.png")
    assert "selected epoch (one per seed)" not in _legend_texts(drawn[1])
    assert not [ln for ax in drawn[1].axes for ln in ax.get_lines() if ln.get_gid() == "selected_epoch"]


def test_dtfd_ablation(ablation, tmp_path, drawn):
    out = tmp_path / "dtfd.png"
    _check_written(F.plot_dtfd_ablation(ablation, out), out, (3.2, 3.8))
    fig = drawn[0]
    ax = fig.axes[0]
    assert ax.get_ylabel() == "test AUC"  # neutral: Tier 1's AUC is over pseudo-bags, not slides
    assert _legend_texts(fig) == ["Tier 2: slide AUC", "Tier 1: pseudo-bag AUC"]
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    legend = fig.legends[0].get_window_extent(renderer)
    assert not _overlap(ax.title.get_window_extent(renderer), legend)
    assert not _overlap(ax.get_window_extent(renderer), legend)
    assert not _overlap(ax.xaxis.label.get_window_extent(renderer), legend)


def test_dose_response(dose, tmp_path, drawn):
    out = tmp_path / "dose.png"
    _check_written(F.plot_dose_response(dose, out, fixed_fraction=0.1, fixed_strength=1.0), out, (6.5, 7.3))
    with pytest.raises(ValueError, match="'intensity'"):
        F.plot_dose_response(dose.replace({"axis": {"strength": "intensity"}}), tmp_path / "bad.png")
    fig = drawn[0]
    for ax, axis in zip(fig.axes, ("strength", "fraction")):
        levels = sorted(dose.loc[dose["axis"] == axis, "value"].unique())
        assert list(ax.get_xticks()) == pytest.approx(levels)  # the ticks are the measured levels, no others
        for m in METHODS:
            (line,) = [ln for ln in ax.get_lines() if ln.get_gid() == f"method:{m}"]
            assert line.get_marker() not in (None, "None", "")  # a point at every level measured
            assert list(line.get_xdata()) == pytest.approx(levels)
        (chance,) = [ln for ln in ax.get_lines() if ln.get_gid() == "chance"]
        assert list(chance.get_ydata()) == [0.5, 0.5]


def test_dose_response_draws_only_the_levels_there_are(dose, tmp_path, drawn):
    """Two fraction levels (clean and one configured): two points per method and two ticks, nothing between."""
    two = dose[(dose["axis"] == "strength") | dose["value"].isin([0, 0.5])]
    F.plot_dose_response(two, tmp_path / "dose2.png")
    ax = drawn[0].axes[1]
    assert list(ax.get_xticks()) == [0, 0.5]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0 (clean)", "0.5"]
    assert all(len(ln.get_xdata()) == 2 for ln in ax.get_lines() if str(ln.get_gid()).startswith("method:"))


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


# -- what the markers and bars of the metric strip plot are ---------------------------------------------------
def _intervals(df: pd.DataFrame) -> pd.DataFrame:
    """Made-up seed-averaged AUCs, deliberately not the mean of the seeds, with asymmetric intervals."""
    keys = df[["experiment", "method"]].drop_duplicates().reset_index(drop=True)
    value = np.linspace(0.3, 0.9, len(keys))
    return keys.assign(value=value, low=value - 0.2, high=np.minimum(value + 0.05, 1.0))


def test_metric_by_method_draws_the_intervals_it_is_given(bars, tmp_path, drawn):
    """With intervals: the marker is ``value``, its bar exactly ``low``-``high``, the dots each seed's AUC; the
    key under the plot says so."""
    iv = _intervals(bars)
    F.plot_metric_by_method(bars, "slide_auc", tmp_path / "m.png", methods=METHODS, intervals=iv)
    fig = drawn[0]
    ax = fig.axes[0]
    drawn_bars = _errorbars(ax)
    assert len(drawn_bars) == len(iv)
    want = sorted((round(v, 9), (round(lo, 9), round(hi, 9))) for v, lo, hi in zip(iv["value"], iv["low"], iv["high"]))
    got = sorted((round(y, 9), (round(span[0], 9), round(span[1], 9))) for _, y, span in drawn_bars)
    assert got == want
    dots = np.sort(np.concatenate([c.get_offsets()[:, 1] for c in ax.collections if c.get_offsets().size and
                                   type(c).__name__ == "PathCollection"]))
    np.testing.assert_allclose(dots, np.sort(bars["slide_auc"].to_numpy()))
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["dots: each seed's AUC",
                                       "marker and bar: AUC of the seed-averaged scores, 95% CI"]


def test_metric_by_method_without_intervals_says_mean_and_range(bars, tmp_path, drawn):
    F.plot_metric_by_method(bars, "slide_auc", tmp_path / "m.png")
    ax = drawn[0].axes[0]
    for x, y, (lo, hi) in _errorbars(ax):
        method = list(dict.fromkeys(bars["method"]))[int(round(x))]
        candidates = [g["slide_auc"] for _, g in bars[bars["method"] == method].groupby("experiment")]
        assert any(y == pytest.approx(v.mean()) and (lo, hi) == pytest.approx((v.min(), v.max())) for v in candidates)
    key = [t.get_text() for t in drawn[0].legends[0].get_texts()]
    assert key == ["dots: each seed's AUC", "marker and bar: mean of the seeds, min–max"]


def test_metric_by_method_checks_its_intervals(bars, tmp_path):
    iv = _intervals(bars)
    with pytest.raises(ValueError, match=r"no interval for .*'poison', 'dsmil'"):
        F.plot_metric_by_method(bars, "slide_auc", tmp_path / "m.png",
                                intervals=iv[~((iv["experiment"] == "poison") & (iv["method"] == "dsmil"))])
    with pytest.raises(ValueError, match="repeats"):
        F.plot_metric_by_method(bars, "slide_auc", tmp_path / "m.png", intervals=pd.concat([iv, iv.head(1)]))
    with pytest.raises(ValueError, match="'high'"):
        F.plot_metric_by_method(bars, "slide_auc", tmp_path / "m.png", intervals=iv.drop(columns="high"))
    assert not list(tmp_path.iterdir())


def test_metric_by_method_marker_without_an_interval_has_no_bar(bars, tmp_path, drawn):
    one = bars[(bars["experiment"] == "standard") & (bars["method"] == "maxpool")]
    iv = pd.DataFrame({"experiment": ["standard"], "method": ["maxpool"], "value": [0.7], "low": [np.nan],
                       "high": [np.nan]})
    F.plot_metric_by_method(one, "slide_auc", tmp_path / "m.png", intervals=iv)
    assert _errorbars(drawn[0].axes[0]) == [(0.0, 0.7, None)]


def test_poison_comparison_passes_its_intervals_on(bars, tmp_path, drawn):
    iv = _intervals(bars[bars["experiment"].isin(["standard", "poison"])])
    F.plot_poison_comparison(bars, tmp_path / "p.png", methods=METHODS, intervals=iv)
    got = sorted(round(y, 9) for _, y, _ in _errorbars(drawn[0].axes[0]))
    assert got == sorted(round(v, 9) for v in iv["value"])
    assert "clean (standard)" in _legend_texts(drawn[0]) and "poisoned (poison)" in _legend_texts(drawn[0])


# -- the robustness card's figure -----------------------------------------------------------------------------
def test_card_figure_splits_values_from_changes(tmp_path, drawn):
    from wsimil.reporting import cards

    rng = np.random.default_rng(6)
    rows = []
    for m in ["maxpool", "abmil", "dsmil"]:
        for q in cards.ROWS:
            signed = q.startswith("change") or " − " in q
            v = float(rng.uniform(-0.5, 0.5) if signed else rng.uniform(0.3, 0.9))
            rows.append({"method": m, "quantity": q, "value": v, "ci_low": v - 0.1, "ci_high": v + 0.05,
                         "reading": "inconclusive" if signed else ""})
    table = pd.DataFrame(rows)
    cards.plot_card(table, "abmil", tmp_path / "abmil.png")
    fig = drawn[0]
    values, changes = fig.axes
    assert values.get_xlim() == (0.0, 1.0) and changes.get_xlim() == (-1.0, 1.0)
    assert values.get_xlabel() and changes.get_xlabel() and values.get_xlabel() != changes.get_xlabel()
    assert [ln.get_xdata()[0] for ln in changes.get_lines() if ln.get_gid() == "zero"] == [0]
    n_signed = sum(q.startswith("change") or " − " in q for q in cards.ROWS)
    assert len(changes.get_yticks()) == n_signed and len(values.get_yticks()) == len(cards.ROWS) - n_signed
    texts = _legend_texts(fig)
    assert any(t.startswith("other methods of this run") for t in texts)
    assert any(t.startswith("abmil") for t in texts)
    # the card's own method: its value and exactly its interval, on the panel of its kind
    mine = table[table["method"] == "abmil"].set_index("quantity")
    for ax in (values, changes):
        own = [c for c in ax.containers if c.lines[0] is not None and c.lines[0].get_gid() == "own"]
        assert len(own) == len(ax.get_yticks())
        for c in own:
            x = float(c.lines[0].get_xdata()[0])
            seg = np.asarray(c.lines[2][0].get_segments()[0])
            r = mine[np.isclose(mine["value"], x)].iloc[0]
            assert (seg[:, 0].min(), seg[:, 0].max()) == pytest.approx((r["ci_low"], r["ci_high"]))
    others = [c for ax in fig.axes for c in ax.containers if c.lines[0] is not None and c.lines[0].get_gid() == "other"]
    assert len(others) == 2 * len(cards.ROWS)
