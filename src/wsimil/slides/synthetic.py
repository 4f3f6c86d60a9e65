"""A synthetic "mini-Camelyon": H&E-like lymph-node whole-slide images with metastases, offline and fast.

Each slide is a real pyramidal TIFF (``slides/<id>.tif``, read by OpenSlide and tiffslide) and each tumour
slide has an ASAP XML annotation (``annotations/<id>.xml``, polygons in level-0 pixels, group ``_0``) as
CAMELYON16 ships them. ``docs/data.md`` describes the model; in short:

- colour: Beer-Lambert, ``RGB = background * exp(-(c_H * h + c_E * e))`` per channel, from hematoxylin and
  eosin concentration maps and per-hospital optical-density stain vectors;
- tissue: a bean-shaped lymph node (capsule, subcapsular and medullary sinuses, follicles with germinal
  centres, hilar fat) on white glass, densely packed ~7 um lymphocyte nuclei;
- metastases: 1-2 irregular, cohesive nests of tumour cells per tumour slide (nuclei 1.5-2x larger, paler,
  vesicular, with nucleoli; eosinophilic cytoplasm; cell borders; fibrous septa in larger lesions), radii
  log-uniform from a few-cell cluster (isolated tumour cells) to a macro-metastasis; the defaults give a
  tumour share of the tissue like CAMELYON16's (median ~3 %, a third of the slides < 1 %, none > ~32 %;
  ``benchmarks/synthetic_stats.py`` measures it); the XML polygon is the traced outline of the rendered
  lesion mask;
- hospitals (three by default): stain vectors, stain amounts, glass tint, focus blur and sensor noise.

Everything is seeded per slide from ``(synthetic.seed, slide_id)``: the same config gives the same bytes,
whatever other slides are generated.
"""

from __future__ import annotations

import copy
import math
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping

import numpy as np

from wsimil.io import WsimilError, check_slide_id, write_csv_atomic

SHEET_COLUMNS = ["slide_id", "label", "split", "center", "path", "annotation"]
SPLITS = ("train", "val", "test")
CLASSES = ("normal", "tumour")

# Macenko et al. (2009) reference H&E optical-density vectors (as used by staintools / torchstain).
MACENKO_H = [0.5626, 0.7201, 0.4062]
MACENKO_E = [0.2159, 0.8012, 0.5581]
# Ruifrok & Johnston (2001) hematoxylin optical-density vector (scikit-image's rgb2hed).
RUIFROK_H = [0.650, 0.704, 0.286]

_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "mpp": 0.5,
    "magnification": 20,
    "size_um": [1750, 1400],
    "held_out_hospitals": [],
    "slides": {
        "train": {"normal": 10, "tumour": 8},
        "val": {"normal": 3, "tumour": 3},
        "test": {"normal": 6, "tumour": 6},
    },
    "tissue": {
        "fill": 0.88,
        "capsule_um": 12.0,
        "follicles": [3, 7],
        "follicle_radius_um": [60.0, 130.0],
        "hilar_fat": True,
        "lymphocyte_diameter_um": 7.0,
        "lymphocyte_spacing_um": 8.0,
    },
    "lesions": {
        "count": [1, 2],
        "radius_um": [15.0, 300.0],
        "nucleus_scale": [1.5, 2.0],
        "cell_spacing_um": 16.0,
    },
    "stain_jitter": 0.05,
    "hospitals": [
        {
            "name": "hospital_a",
            "h_vector": list(MACENKO_H),
            "e_vector": list(MACENKO_E),
            "h_scale": 1.0,
            "e_scale": 1.0,
            "background": [242, 240, 244],
            "blur_um": 0.35,
            "noise": 2.0,
        },
        {
            "name": "hospital_b",
            "h_vector": [0.62, 0.72, 0.31],
            "e_vector": [0.14, 0.86, 0.49],
            "h_scale": 1.2,
            "e_scale": 0.8,
            "background": [235, 234, 230],
            "blur_um": 0.6,
            "noise": 3.0,
        },
        {
            "name": "hospital_c",
            "h_vector": list(RUIFROK_H),
            "e_vector": list(MACENKO_E),
            "h_scale": 0.8,
            "e_scale": 1.25,
            "background": [245, 244, 243],
            "blur_um": 0.25,
            "noise": 1.5,
        },
    ],
    "tile_size": 256,
    "jpeg_quality": 90,
    "min_level_size": 512,
}


def default_config() -> dict:
    """The default ``synthetic:`` config section (a fresh deep copy)."""
    return copy.deepcopy(_DEFAULTS)


def _merge(base: dict, override: Mapping) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict) and key != "slides":
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_config(cfg: Mapping | None) -> dict:
    """The ``synthetic:`` section merged over the defaults, with the checks a renderer needs."""
    cfg = _merge(_DEFAULTS, cfg or {})
    if "slides" in cfg:
        slides = {s: {c: int((cfg["slides"].get(s) or {}).get(c, 0)) for c in CLASSES} for s in SPLITS}
        unknown = set(cfg["slides"]) - set(SPLITS)
        if unknown:
            raise WsimilError(f"synthetic.slides: unknown split(s) {sorted(unknown)}; use {list(SPLITS)}")
        cfg["slides"] = slides
    def bad(msg: str) -> WsimilError:
        return WsimilError(f"invalid synthetic config: {msg}")
    if not cfg["mpp"] > 0:
        raise bad(f"mpp must be > 0, got {cfg['mpp']}")
    if len(cfg["size_um"]) != 2 or min(cfg["size_um"]) < 100:
        raise bad(f"size_um must be [width, height] >= 100 um, got {cfg['size_um']}")
    if not cfg["hospitals"]:
        raise bad("hospitals must list at least one hospital")
    for i, h in enumerate(cfg["hospitals"]):
        for key in ("h_vector", "e_vector", "background"):
            if len(h[key]) != 3:
                raise bad(f"hospitals[{i}].{key} must have 3 values")
    lo, hi = cfg["lesions"]["count"]
    if not 1 <= lo <= hi:
        raise bad(f"lesions.count must be [min, max] with 1 <= min <= max, got {cfg['lesions']['count']}")
    rlo, rhi = cfg["lesions"]["radius_um"]
    if not 0 < rlo <= rhi:
        raise bad(f"lesions.radius_um must be [min, max] with 0 < min <= max, got {cfg['lesions']['radius_um']}")
    if any(v < 0 for s in SPLITS for v in cfg["slides"][s].values()):
        raise bad("slide counts must be >= 0")
    held = [int(h) for h in cfg["held_out_hospitals"]]
    if any(not 0 <= h < len(cfg["hospitals"]) for h in held) or len(set(held)) != len(held):
        raise bad(f"held_out_hospitals must be distinct indices into hospitals (0-{len(cfg['hospitals']) - 1}), "
                  f"got {cfg['held_out_hospitals']}")
    if len(held) >= len(cfg["hospitals"]):
        raise bad(f"held_out_hospitals {held}: every hospital is held out, none is left for train/val/test")
    cfg["held_out_hospitals"] = held
    return cfg


# -- the plan ---------------------------------------------------------------------------------------------


def _seed_sequence(cfg: Mapping, slide_id: str) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(cfg["seed"]) & 0xFFFFFFFF, zlib.crc32(slide_id.encode())])


def slide_seed(cfg: Mapping, slide_id: str) -> int:
    """The 32-bit seed of one slide, from the dataset seed and the slide id only."""
    return int(_seed_sequence(cfg, slide_id).generate_state(1)[0])


def lesion_plan(cfg: Mapping, slide_id: str, label: int) -> list[float]:
    """Nominal radii (um) of the lesions of one slide (empty for a normal slide), log-uniform in radius_um."""
    if int(label) != 1:
        return []
    rng = np.random.default_rng(_seed_sequence(cfg, slide_id).spawn(2)[0])
    lo, hi = cfg["lesions"]["count"]
    n = int(rng.integers(int(lo), int(hi) + 1))
    rlo, rhi = (float(v) for v in cfg["lesions"]["radius_um"])
    return sorted((float(np.exp(rng.uniform(np.log(rlo), np.log(rhi)))) for _ in range(n)), reverse=True)


def lesion_class(radii_um: list[float]) -> str:
    """CAMELYON-like slide class from the largest nominal lesion diameter, scaled to the small slides.

    negative (no lesion), itc (< 200 um), micro (200-500 um), macro (>= 500 um). The clinical thresholds are
    0.2 mm and 2 mm; the macro threshold is scaled down (x 1/4) because a synthetic slide is only ~1.75 mm
    wide, the ITC threshold is not. These names are informational (nothing downstream uses them) and they
    are not area-consistent: on the ~1.3 mm^2 of tissue of a default slide, a 200 um lesion is already
    ~2.5 % of the tissue. ``docs/data.md`` compares them with classes at an area-consistent scale.
    """
    if not radii_um:
        return "negative"
    d = 2 * max(radii_um)
    return "itc" if d < 200 else "micro" if d < 500 else "macro"


def external_id(test_id: str, hospital: int) -> str:
    """Slide id of the copy of test slide ``test_id`` stained and scanned by held-out hospital ``hospital``."""
    return f"{test_id}_h{int(hospital)}"


def plan_dataset(cfg: Mapping | None) -> "pd.DataFrame":  # noqa: F821
    """The slides to generate: sample-sheet columns plus seed, hospital, lesion, ``tissue_of`` and
    ``external`` columns. Pure and cheap.

    The train, val and test slides are spread over the hospitals that are not in ``held_out_hospitals``.
    Each held-out hospital re-stains and re-scans the tissue of every test slide (``external`` True,
    ``tissue_of`` the test slide, id ``<test id>_h<hospital>``): an external test cohort of the same patients,
    so that a change of AUC from the test slides to the held-out hospital is paired slide by slide.
    """
    import pandas as pd

    cfg = resolve_config(cfg)
    held = list(cfg["held_out_hospitals"])
    inside = [h for h in range(len(cfg["hospitals"])) if h not in held]
    n_hosp = len(inside)
    rows: list[dict] = []
    counters = {"normal": 0, "tumour": 0}
    for split in ("train", "val"):
        for cls, prefix in (("normal", "normal"), ("tumour", "tumor")):
            for _ in range(cfg["slides"][split][cls]):
                counters[cls] += 1
                rows.append({"slide_id": f"{prefix}_{counters[cls]:03d}", "label": int(cls == "tumour"),
                             "split": split})
    test = [int(cls == "tumour") for cls in CLASSES for _ in range(cfg["slides"]["test"][cls])]
    order = np.random.default_rng([int(cfg["seed"]) & 0xFFFFFFFF, 16]).permutation(len(test))
    for k, j in enumerate(order):
        rows.append({"slide_id": f"test_{k + 1:03d}", "label": test[j], "split": "test"})
    # Hospitals: round robin within each (split, class), starting where the previous group stopped, so
    # every split and class spans the hospitals and the totals stay balanced.
    start = 0
    groups: dict[tuple[str, int], list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault((r["split"], r["label"]), []).append(i)
    for key in sorted(groups, key=lambda k: (SPLITS.index(k[0]), k[1])):
        for k, i in enumerate(groups[key]):
            rows[i]["center"] = inside[(start + k) % n_hosp]
        start = (start + len(groups[key])) % n_hosp
    for r in rows:
        r["tissue_of"], r["external"] = r["slide_id"], False
    rows += [{"slide_id": external_id(r["slide_id"], h), "label": r["label"], "split": "test", "center": h,
              "tissue_of": r["slide_id"], "external": True}
             for h in held for r in list(rows) if r["split"] == "test" and not r["external"]]
    for r in rows:
        sid = check_slide_id(r["slide_id"])
        radii = lesion_plan(cfg, r["tissue_of"], r["label"])
        r["path"] = f"slides/{sid}.tif"
        r["annotation"] = f"annotations/{sid}.xml" if r["label"] == 1 else ""
        r["seed"] = slide_seed(cfg, r["tissue_of"])
        r["hospital"] = str(cfg["hospitals"][r["center"]].get("name", f"hospital_{r['center']}"))
        r["n_lesions"] = len(radii)
        r["lesion_class"] = lesion_class(radii)
        r["lesion_diameters_um"] = ";".join(f"{2 * x:.0f}" for x in radii)
    columns = SHEET_COLUMNS + ["seed", "hospital", "n_lesions", "lesion_class", "lesion_diameters_um",
                               "tissue_of", "external"]
    df = pd.DataFrame(rows, columns=columns)
    return df.astype({"label": int, "center": int, "seed": "int64", "n_lesions": int, "external": bool})


EXTERNAL_SHEET = "slides_external.csv"


def write_sheet(cfg: Mapping | None, out_dir: str | Path) -> Path:
    """Write ``out_dir/slides.csv`` (the train, val and test slides; sample-sheet columns only) and
    ``out_dir/slides_external.csv`` (the held-out hospitals' copies of the test slides; empty without
    ``held_out_hospitals``), atomically. Returns the first."""
    plan = plan_dataset(cfg)
    out = Path(out_dir) / "slides.csv"
    for path, part in ((out, plan[~plan["external"]]), (Path(out_dir) / EXTERNAL_SHEET, plan[plan["external"]])):
        write_csv_atomic(part[SHEET_COLUMNS], path)
    return out


def generate_dataset(cfg: Mapping | None, out_dir: str | Path, slide_ids: list[str] | None = None,
                     with_sheet: bool = True) -> Path:
    """Render every planned slide (or ``slide_ids``) under ``out_dir`` and write the sheet (unless
    ``with_sheet`` is False); returns the sheet's path."""
    plan = plan_dataset(cfg)
    if slide_ids is not None:
        missing = set(slide_ids) - set(plan["slide_id"])
        if missing:
            raise WsimilError(f"slides not in the synthetic plan: {sorted(missing)}")
        plan = plan[plan["slide_id"].isin(slide_ids)]
    for _, row in plan.iterrows():
        render_slide(cfg, row, out_dir)
    return write_sheet(cfg, out_dir) if with_sheet else Path(out_dir) / "slides.csv"


# -- rendering --------------------------------------------------------------------------------------------


def _get(row: Any, key: str) -> Any:
    return row[key] if not hasattr(row, "_asdict") else getattr(row, key)


def render_slide(cfg: Mapping | None, row: Any, out_dir: str | Path) -> None:
    """Render one slide: ``out_dir/slides/<id>.tif`` and, for a tumour slide, ``out_dir/annotations/<id>.xml``.

    ``row`` needs ``slide_id``, ``label`` and ``center`` (a plan row or a sample-sheet row); everything else
    is derived from ``(cfg.seed, tissue_of)`` (``tissue_of`` = the slide id, except for a held-out hospital's
    copy of a test slide).
    """
    from wsimil.slides.annotations import write_asap_xml
    from wsimil.slides.tiff import write_pyramidal_tiff

    cfg = resolve_config(cfg)
    slide_id = check_slide_id(str(_get(row, "slide_id")))
    label, center = int(_get(row, "label")), int(_get(row, "center"))
    if not 0 <= center < len(cfg["hospitals"]):
        raise WsimilError(f"slide {slide_id}: center {center} has no entry in synthetic.hospitals")
    try:  # a held-out hospital's copy draws the tissue of its test slide; a sample-sheet row has no tissue_of
        tissue = check_slide_id(str(_get(row, "tissue_of")))
    except (KeyError, AttributeError):
        tissue = slide_id
    rgb, polygons = render_pixels(cfg, tissue, label, center)
    out_dir = Path(out_dir)
    if label == 1:  # annotation first: the slide file marks the job as done
        write_asap_xml(out_dir / "annotations" / f"{slide_id}.xml", polygons, group="_0")
    write_pyramidal_tiff(out_dir / "slides" / f"{slide_id}.tif", rgb, mpp=float(cfg["mpp"]),
                         tile=int(cfg["tile_size"]), min_level_size=int(cfg["min_level_size"]),
                         compression="jpeg", quality=int(cfg["jpeg_quality"]),
                         magnification=float(cfg["magnification"]))


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    n = np.linalg.norm(v)
    if not n > 0:
        raise WsimilError(f"stain vector {list(v)} has zero length")
    return (v / n).astype(np.float32)


_SHIFT = 4  # sub-pixel bits for OpenCV drawing (1/16 px)
_HSCALE = 100.0  # hematoxylin concentration per uint8 step in the nucleus map


class _Canvas:
    """Level-0 nucleus maps drawn with anti-aliased OpenCV primitives (fast, sub-pixel, painter's order).

    ``A`` is the nuclear coverage (0-255) and ``NH`` the nuclear hematoxylin concentration x 100; an
    anti-aliased edge blends into what was drawn before, so overlapping nuclei meet smoothly.
    """

    def __init__(self, h: int, w: int):
        self.A = np.zeros((h, w), np.uint8)
        self.NH = np.zeros((h, w), np.uint8)

    @staticmethod
    def _fix(v) -> np.ndarray:
        return np.round(np.asarray(v, np.float64) * (1 << _SHIFT)).astype(np.int64)

    def ellipses(self, x, y, a, b, angle_rad, h):
        """Filled ellipses: centres x, y and semi-axes a, b in px; hematoxylin ``h`` each."""
        import cv2

        n = len(x)
        if n == 0:
            return
        bc = lambda v: np.broadcast_to(np.asarray(v, np.float64), (n,))  # noqa: E731
        X, Y = self._fix(x).tolist(), self._fix(y).tolist()
        AX, BX = self._fix(np.maximum(bc(a), 0.5)).tolist(), self._fix(np.maximum(bc(b), 0.5)).tolist()
        ANG = np.degrees(bc(angle_rad)).tolist()
        HV = np.clip(np.round(bc(h) * _HSCALE), 0, 255).astype(int).tolist()
        A, NH, aa = self.A, self.NH, cv2.LINE_AA
        for i in range(n):
            c, ax = (X[i], Y[i]), (AX[i], BX[i])
            cv2.ellipse(A, c, ax, ANG[i], 0, 360, 255, -1, aa, _SHIFT)
            cv2.ellipse(NH, c, ax, ANG[i], 0, 360, HV[i], -1, aa, _SHIFT)

    def polygons(self, polys: np.ndarray, h, coverage: bool = True):
        """Filled polygons ((N, K, 2) px vertices), hematoxylin ``h`` each."""
        import cv2

        n = len(polys)
        if n == 0:
            return
        P = self._fix(polys).astype(np.int32)
        HV = np.clip(np.round(np.broadcast_to(np.asarray(h, np.float64), (n,)) * _HSCALE), 0, 255)
        HV = HV.astype(int).tolist()
        A, NH, aa = self.A, self.NH, cv2.LINE_AA
        for i in range(n):
            if coverage:
                cv2.fillPoly(A, [P[i]], 255, aa, _SHIFT)
            cv2.fillPoly(NH, [P[i]], HV[i], aa, _SHIFT)


def _nucleus_outlines(rng, x, y, a, b, angle, irregularity: float, k: int = 14) -> np.ndarray:
    """(N, k, 2) vertices of irregular elliptical nuclear outlines (2nd-4th order harmonic wobble)."""
    n = len(x)
    t = np.linspace(0, 2 * np.pi, k, endpoint=False)[None, :]
    rr = np.ones((n, k))
    for order in (2, 3, 4):
        rr += rng.normal(0, irregularity / order * 2, (n, 1)) * np.cos(order * t + rng.uniform(0, 2 * np.pi, (n, 1)))
    u = np.asarray(a)[:, None] * rr * np.cos(t)
    v = np.asarray(b)[:, None] * rr * np.sin(t)
    c, s = np.cos(angle)[:, None], np.sin(angle)[:, None]
    return np.stack([np.asarray(x)[:, None] + u * c - v * s, np.asarray(y)[:, None] + u * s + v * c], axis=2)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth unit-variance noise on ``shape`` with correlation length about ``cell`` pixels."""
    import cv2

    h, w = shape
    gh, gw = int(math.ceil(h / cell)) + 3, int(math.ceil(w / cell)) + 3
    g = rng.standard_normal((gh, gw)).astype(np.float32)
    big = cv2.resize(g, (int(gw * cell), int(gh * cell)), interpolation=cv2.INTER_CUBIC)
    oy, ox = int(cell), int(cell)
    out = big[oy:oy + h, ox:ox + w]
    step = max(1, int(min(h, w) // 256))  # statistics from a subsample: cheap on level-0 fields
    sample = out[::step, ::step]
    out -= sample.mean()
    out *= 1.0 / (float(sample.std()) + 1e-6)
    return out


def _jittered_grid(rng, w: float, h: float, spacing: float, jitter: float, x0=0.0, y0=0.0, hexagonal=False):
    ny, nx = int(h / (spacing * (0.866 if hexagonal else 1.0))) + 2, int(w / spacing) + 2
    gy, gx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    if hexagonal:
        gx = gx + 0.5 * (gy % 2)
        gy = gy * 0.866
    x = x0 + (gx.ravel() + rng.uniform(-jitter, jitter, gx.size)) * spacing
    y = y0 + (gy.ravel() + rng.uniform(-jitter, jitter, gy.size)) * spacing
    keep = (x >= 0) & (x < x0 + w) & (y >= 0) & (y < y0 + h)
    return x[keep].astype(np.float32), y[keep].astype(np.float32)


def slide_geometry(cfg: Mapping | None, slide_id: str, label: int) -> SimpleNamespace:
    """The geometry of one slide, without its cells and colours (the cheap first part of ``render_pixels``).

    Returns a namespace with, among others, ``tissue`` and ``lesion`` (level-0 (H, W) bool masks: the lymph node
    with its capsule and hilar fat, and the rendered metastases), ``polygons`` (the annotation polygons, level-0
    x, y, exactly as ``render_slide`` writes them to the XML), ``radii_um`` (``lesion_plan``) and ``mpp``.
    It does not depend on the hospital, and ``render_pixels`` draws the same geometry from the same seed.
    """
    import cv2

    cfg = resolve_config(cfg)
    mpp = float(cfg["mpp"])
    um = 1.0 / mpp  # px per um
    W = int(round(cfg["size_um"][0] * um))
    H = int(round(cfg["size_um"][1] * um))
    tis = cfg["tissue"]
    rng = np.random.default_rng(_seed_sequence(cfg, slide_id).spawn(2)[1])
    radii_um = lesion_plan(cfg, slide_id, label)

    # ---- low-resolution geometry (about 2 um per pixel) --------------------------------------------
    lo = max(1, int(round(2.0 / mpp)))
    hl, wl = int(math.ceil(H / lo)), int(math.ceil(W / lo))
    lo_um = lo * mpp
    yy, xx = np.mgrid[0:hl, 0:wl].astype(np.float32)
    xx = (xx + 0.5) * lo_um  # um
    yy = (yy + 0.5) * lo_um
    Wum, Hum = W * mpp, H * mpp

    def up(a: np.ndarray) -> np.ndarray:  # low-res field -> level 0 (bilinear, pixel-aligned)
        return cv2.resize(a, (wl * lo, hl * lo), interpolation=cv2.INTER_LINEAR)[:H, :W]

    # Bean-shaped node: perturbed ellipse with a hilum indentation (filled by hilar fat).
    fill = float(tis["fill"])
    cx = Wum / 2 + rng.uniform(-0.03, 0.03) * Wum
    cy = Hum / 2 + rng.uniform(-0.03, 0.03) * Hum
    ax = fill * Wum / 2 * rng.uniform(0.86, 0.98)
    ay = fill * Hum / 2 * rng.uniform(0.86, 0.98)
    rot = rng.uniform(-0.12, 0.12)
    dxu, dyu = xx - cx, yy - cy
    xr = dxu * math.cos(rot) + dyu * math.sin(rot)
    yr = -dxu * math.sin(rot) + dyu * math.cos(rot)
    rho = np.sqrt((xr / ax) ** 2 + (yr / ay) ** 2)
    theta = np.arctan2(yr / ay, xr / ax)
    outline = np.ones_like(rho)
    for k in range(2, 7):
        outline += rng.uniform(0, 0.05) / (k / 2) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    hilum = rng.uniform(-np.pi, np.pi)
    dth = np.angle(np.exp(1j * (theta - hilum))).astype(np.float32)
    notch = 0.22 * np.exp(-(dth / 0.38) ** 2)
    scale_um = min(ax, ay)
    edge_noise = _smooth_noise(rng, (hl, wl), 30 / lo_um) * 5.0 + _smooth_noise(rng, (hl, wl), 8 / lo_um) * 1.5
    node_field = (outline - notch - rho) * scale_um + edge_noise  # um, > 0 inside the node
    node_lo = node_field > 0
    fat_field = np.full_like(node_field, -1.0)
    if tis["hilar_fat"]:
        fat_field = ((outline + 0.03 - rho) * scale_um + edge_noise * 2) * (np.abs(dth) < 0.75)
        fat_field = np.where(node_lo, -1.0, fat_field - 3.0 * (np.abs(dth) > 0.7))

    # Depth below the capsule, orientation of the capsule (for spindle cells).
    dist = cv2.distanceTransform(node_lo.astype(np.uint8), cv2.DIST_L2, 5).astype(np.float32) * lo_um
    gy_, gx_ = np.gradient(cv2.GaussianBlur(dist, (0, 0), 3))
    tangent = np.arctan2(gy_, gx_) + np.pi / 2
    cap_um = float(tis["capsule_um"])
    cap_noise = _smooth_noise(rng, (hl, wl), 40 / lo_um)
    capsule = node_lo & (dist < cap_um * (1 + 0.3 * cap_noise))
    subcap = node_lo & ~capsule & (dist < cap_um * (1 + 0.3 * cap_noise) + 14)
    medulla_noise = _smooth_noise(rng, (hl, wl), 70 / lo_um)
    deep = np.clip((dist - 220) / 80, 0, 1)
    sinus = node_lo & (np.abs(medulla_noise) < 0.28 * deep)
    parenchyma_noise = _smooth_noise(rng, (hl, wl), 50 / lo_um)

    # Follicles in the cortex: mantle (dense) and germinal centre (paler, larger cells).
    mantle = np.zeros((hl, wl), bool)
    germinal = np.zeros((hl, wl), bool)
    fmin, fmax = tis["follicles"]
    rmin, rmax = tis["follicle_radius_um"]
    for _ in range(int(rng.integers(int(fmin), int(fmax) + 1))):
        r = rng.uniform(rmin, rmax)
        cand = np.argwhere((dist > r * 0.7 + cap_um) & (dist < r * 1.1 + cap_um + 40) & ~mantle)
        if len(cand) == 0:
            continue
        py, px = cand[rng.integers(len(cand))]
        fyc, fxc = yy[py, px], xx[py, px]
        d = np.sqrt((xx - fxc) ** 2 + ((yy - fyc) * rng.uniform(0.8, 1.2)) ** 2)
        fol = (d < r * (1 + 0.08 * parenchyma_noise)) & node_lo & ~capsule
        mantle |= fol
        germinal |= fol & (d < r * 0.62 * (1 + 0.1 * medulla_noise))

    # Lesions: irregular nests; centres deep enough for the lesion to sit mostly in the node.
    lesion_field = np.full((hl, wl), -1e3, np.float32)
    lesion_r_field = np.zeros((hl, wl), np.float32)
    centres: list[tuple[float, float, float]] = []
    for r in radii_um:
        need = min(0.6 * r, 0.8 * float(dist.max()))
        cand = np.argwhere((dist >= need) & ~capsule)
        if len(cand) == 0:
            cand = np.argwhere(node_lo)
        for _ in range(20):
            py, px = cand[rng.integers(len(cand))]
            lx, ly = xx[py, px], yy[py, px]
            if all(math.hypot(lx - ox, ly - oy) > 0.9 * (r + orr) for ox, oy, orr in centres):
                break
        centres.append((lx, ly, r))
        d = np.sqrt((xx - lx) ** 2 + (yy - ly) ** 2)
        th = np.arctan2(yy - ly, xx - lx)
        rr = np.ones_like(d)
        for k in range(2, 7):
            rr += rng.uniform(0.0, 0.16) / (k / 2) ** 0.8 * np.cos(k * th + rng.uniform(0, 2 * np.pi))
        lobes = _smooth_noise(rng, (hl, wl), max(3.0, 0.35 * r / lo_um))
        f = (rr * r - d) + lobes * 0.12 * r
        lesion_r_field = np.where(f > lesion_field, np.float32(r), lesion_r_field)
        lesion_field = np.maximum(lesion_field, f)
    septa_noise = _smooth_noise(rng, (hl, wl), 45 / lo_um)
    septa_lo = (np.abs(septa_noise) < 0.10) & (lesion_r_field > 150)

    # ---- level-0 masks -----------------------------------------------------------------------------
    node_f = up(node_field)
    tissue_alpha = np.clip(0.5 + node_f * um / 1.5, 0, 1)  # ~1.5 px soft edge
    capsule_f = up(capsule.astype(np.float32))
    lesion_mask = np.zeros((H, W), bool)
    polygons: list[np.ndarray] = []
    if radii_um:
        lesion_mask = (up(lesion_field) > 0) & (node_f > 0) & (capsule_f < 0.5)
        n_lab, lab, stats, _ = cv2.connectedComponentsWithStats(lesion_mask.view(np.uint8), connectivity=8)
        min_area = (15 * um) ** 2  # drop slivers smaller than one tumour cell
        small = np.nonzero(stats[1:, cv2.CC_STAT_AREA] < min_area)[0] + 1
        if len(small):
            lesion_mask &= ~np.isin(lab, small)
        cont, _ = cv2.findContours(lesion_mask.view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        filled = np.zeros((H, W), np.uint8)  # fill holes: the rendered lesion is what the outline encloses
        cv2.drawContours(filled, cont, -1, 1, thickness=-1)
        lesion_mask = filled.view(bool)
        for c in cont:
            c = cv2.approxPolyDP(c, 1.0, True).reshape(-1, 2).astype(np.float64) + 0.5
            if len(c) >= 3:
                polygons.append(c)
        if not polygons:
            raise WsimilError(f"slide {slide_id}: no lesion could be placed in the tissue (slide too small?)")
    tissue = node_f > 0
    if tis["hilar_fat"]:
        tissue |= up(fat_field) > 0
    return SimpleNamespace(
        cfg=cfg, rng=rng, mpp=mpp, um=um, H=H, W=W, lo=lo, hl=hl, wl=wl, lo_um=lo_um, up=up, radii_um=radii_um,
        node_lo=node_lo, fat_field=fat_field, tangent=tangent, capsule=capsule, subcap=subcap, sinus=sinus,
        mantle=mantle, germinal=germinal, parenchyma_noise=parenchyma_noise, septa_lo=septa_lo,
        tissue_alpha=tissue_alpha, lesion=lesion_mask, polygons=polygons, tissue=tissue)


def render_pixels(cfg: Mapping, slide_id: str, label: int, center: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """The level-0 RGB image (H, W, 3) uint8 of one slide and its lesion polygons (level-0 x, y)."""
    import cv2

    cfg = resolve_config(cfg)
    hosp = cfg["hospitals"][center]
    tis = cfg["tissue"]
    les = cfg["lesions"]
    g = slide_geometry(cfg, slide_id, label)
    rng, um, H, W, lo, hl, wl, lo_um, up = g.rng, g.um, g.H, g.W, g.lo, g.hl, g.wl, g.lo_um, g.up
    radii_um, polygons, lesion_mask, tissue_alpha = g.radii_um, g.polygons, g.lesion, g.tissue_alpha
    node_lo, fat_field, tangent, capsule, subcap = g.node_lo, g.fat_field, g.tangent, g.capsule, g.subcap
    sinus, mantle, germinal, parenchyma_noise, septa_lo = g.sinus, g.mantle, g.germinal, g.parenchyma_noise, g.septa_lo

    # ---- base (non-nuclear) stain concentrations -------------------------------------------------
    base_h_lo = np.where(node_lo, 0.26 + 0.04 * parenchyma_noise, 0).astype(np.float32)
    base_e_lo = np.where(node_lo, 0.30 + 0.04 * parenchyma_noise, 0).astype(np.float32)
    for mask, hv, ev in ((germinal, 0.22, 0.34), (sinus, 0.10, 0.40), (subcap, 0.10, 0.36),
                         (capsule, 0.06, 0.85)):
        base_h_lo[mask] = hv
        base_e_lo[mask] = ev
    base_h = up(base_h_lo)
    base_e = up(base_e_lo)

    fine = _smooth_noise(rng, (H, W), 1.2 * um)  # fine texture (chromatin, fibres)
    fibre = _smooth_noise(rng, (hl, wl), 1.5)
    base_e *= 1.0 + 0.18 * up(fibre) + 0.08 * fine

    # Hilar fat: adipocytes (white) with thin eosinophilic membranes (Voronoi borders).
    if tis["hilar_fat"] and (fat_field > 0).any():
        seeds = np.ones((hl, wl), np.uint8)
        fx, fy = _jittered_grid(rng, wl, hl, 55 / lo_um, 0.4)
        seeds[fy.astype(int), fx.astype(int)] = 0
        _, vor = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
        border = np.zeros((hl, wl), np.float32)
        border[:, 1:] += vor[:, 1:] != vor[:, :-1]
        border[1:, :] += vor[1:, :] != vor[:-1, :]
        fat_lo = (fat_field > 0).astype(np.float32)
        membrane = up(np.minimum(border, 1) * fat_lo)
        fat_alpha = np.clip(up(fat_field) * um / 1.5 + 0.5, 0, 1) * membrane
        base_e += 0.55 * fat_alpha
        base_h += 0.06 * fat_alpha
        tissue_alpha = np.maximum(tissue_alpha, fat_alpha)

    # ---- nuclei ----------------------------------------------------------------------------------
    lym_r = float(tis["lymphocyte_diameter_um"]) / 2 * um
    s_lo, s_hi = les["nucleus_scale"]
    tum_r = lym_r * rng.uniform(s_lo, s_hi)
    canvas = _Canvas(H, W)

    def lookup(a: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return a[np.clip((y / lo).astype(int), 0, hl - 1), np.clip((x / lo).astype(int), 0, wl - 1)]

    def full_lookup(a: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return a[np.clip(y.astype(int), 0, H - 1), np.clip(x.astype(int), 0, W - 1)]

    # Lymphocytes: dense, small, dark, round (painted in random order so none is always on top).
    density = np.where(node_lo, 0.86 + 0.08 * parenchyma_noise, 0.0)
    density[mantle] = 0.97
    density[germinal] = 0.5
    density[sinus] = 0.22
    density[subcap] = 0.3
    density[capsule] = 0.0
    lx, ly = _jittered_grid(rng, W, H, float(tis["lymphocyte_spacing_um"]) * um, 0.38)
    keep = rng.random(len(lx)) < lookup(density, lx, ly)
    if radii_um:
        keep &= ~full_lookup(lesion_mask, lx, ly) | (rng.random(len(lx)) < 0.04)
    order = rng.permutation(int(keep.sum()))
    lx, ly = lx[keep][order], ly[keep][order]
    n = len(lx)
    r = lym_r * rng.lognormal(0, 0.08, n)
    canvas.ellipses(lx, ly, r, r * rng.uniform(0.82, 1.0, n), rng.uniform(0, np.pi, n),
                    rng.normal(1.6, 0.12, n))

    # Germinal-centre blasts and sinus histiocytes: larger, paler, oval nuclei (benign look-alikes).
    for mask, spacing, frac, rscale, h_in, nucleoli in ((germinal, 12.0, 0.55, 1.3, 0.85, True),
                                                       (sinus, 15.0, 0.30, 1.35, 0.70, False)):
        bx, by = _jittered_grid(rng, W, H, spacing * um, 0.4)
        keep = (rng.random(len(bx)) < frac) & lookup(mask, bx, by)
        if radii_um:
            keep &= ~full_lookup(lesion_mask, bx, by)
        bx, by = bx[keep], by[keep]
        n = len(bx)
        r = lym_r * rscale * rng.lognormal(0, 0.1, n)
        rb = r * rng.uniform(0.65, 0.95, n)
        ang = rng.uniform(0, np.pi, n)
        canvas.polygons(_nucleus_outlines(rng, bx, by, r, rb, ang, 0.04), rng.normal(h_in + 0.4, 0.1, n))
        canvas.polygons(_nucleus_outlines(rng, bx, by, r * 0.8, rb * 0.8, ang, 0.03),
                        rng.normal(h_in, 0.1, n), coverage=False)
        if nucleoli and n:
            sel = rng.random(n) < 0.5
            m = int(sel.sum())
            canvas.ellipses(bx[sel] + rng.normal(0, 0.2, m) * r[sel], by[sel], 0.7 * um, 0.7 * um, 0.0, 1.3)

    # Spindle cells of the capsule (fibroblasts), along the capsule.
    sx, sy = _jittered_grid(rng, W, H, 11 * um, 0.45)
    keep = (rng.random(len(sx)) < 0.45) & lookup(capsule, sx, sy)
    sx, sy = sx[keep], sy[keep]
    n = len(sx)
    canvas.ellipses(sx, sy, rng.uniform(4.5, 7, n) * um, rng.uniform(1.0, 1.5, n) * um,
                    lookup(tangent, sx, sy) + rng.normal(0, 0.15, n), rng.normal(1.5, 0.1, n))

    # Tumour: cohesive polygonal cells (eosinophilic cytoplasm, cell borders), large pleomorphic vesicular
    # nuclei (dark membrane rim, pale chromatin) with 1-2 nucleoli; fibrous septa in the larger lesions.
    if radii_um:
        ys_, xs_ = np.nonzero(lesion_mask[::4, ::4])
        y0, y1 = max(0, ys_.min() * 4 - 8), min(H, ys_.max() * 4 + 12)
        x0, x1 = max(0, xs_.min() * 4 - 8), min(W, xs_.max() * 4 + 12)
        sub = lesion_mask[y0:y1, x0:x1]
        spacing = float(les["cell_spacing_um"]) * um
        tx, ty = _jittered_grid(rng, x1 - x0, y1 - y0, spacing, 0.22, hexagonal=True)
        septa_here = lookup(septa_lo, tx + x0, ty + y0)
        keep = full_lookup(sub, tx, ty) & (rng.random(len(tx)) < np.where(septa_here, 0.08, 0.96))
        tx, ty = tx[keep], ty[keep]
        seeds = np.ones(sub.shape, np.uint8)
        seeds[ty.astype(int), tx.astype(int)] = 0
        _, cell = cv2.distanceTransformWithLabels(seeds, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
        cyto = rng.normal(0.66, 0.07, cell.max() + 1).astype(np.float32)
        border = np.zeros(sub.shape, bool)
        border[:, 1:] |= cell[:, 1:] != cell[:, :-1]
        border[1:, :] |= cell[1:, :] != cell[:-1, :]
        sept = up(septa_lo.astype(np.float32))[y0:y1, x0:x1] > 0.5
        e_t = np.where(sept, 0.80, cyto[cell] + 0.12 * border) * (1 + 0.08 * fine[y0:y1, x0:x1])
        h_t = np.where(sept, 0.05, 0.13 + 0.04 * border)
        be, bh = base_e[y0:y1, x0:x1], base_h[y0:y1, x0:x1]
        be[sub] = e_t[sub]
        bh[sub] = h_t[sub]
        order = rng.permutation(len(tx))
        tx, ty = tx[order] + x0, ty[order] + y0
        n = len(tx)
        r = tum_r * rng.lognormal(0, 0.13, n)
        rb = r * rng.uniform(0.72, 1.0, n)
        ang = rng.uniform(0, np.pi, n)
        canvas.polygons(_nucleus_outlines(rng, tx, ty, r, rb, ang, 0.07), rng.normal(1.35, 0.12, n))
        canvas.polygons(_nucleus_outlines(rng, tx, ty, r * 0.8, rb * 0.8, ang, 0.05),
                        rng.normal(0.68, 0.1, n), coverage=False)
        k = rng.integers(1, 3, n)
        ni = np.repeat(np.arange(n), k)
        ang = rng.uniform(0, 2 * np.pi, len(ni))
        rad = rng.uniform(0, 0.4, len(ni)) * rb[ni]
        nr = rng.uniform(0.7, 1.1, len(ni)) * um
        canvas.ellipses(tx[ni] + rad * np.cos(ang), ty[ni] + rad * np.sin(ang), nr, nr * 0.9, 0.0,
                        rng.normal(1.4, 0.1, len(ni)))

    # ---- composition: Beer-Lambert with the hospital's stains ------------------------------------
    A = canvas.A.astype(np.float32)
    A *= 1 / 255
    texture = 0.12 if not radii_um else np.where(lesion_mask, np.float32(0.3), np.float32(0.12))
    NH = canvas.NH.astype(np.float32)
    NH *= 1 + texture * fine
    NH *= 1 / _HSCALE
    jit = float(cfg["stain_jitter"])
    h_scale = float(hosp["h_scale"]) * float(np.exp(rng.normal(0, jit)))
    e_scale = float(hosp["e_scale"]) * float(np.exp(rng.normal(0, jit)))
    keep_base = tissue_alpha
    keep_base *= 1 - A  # cytoplasm / stroma shows where there is no nucleus
    conc_h = base_h
    conc_h *= keep_base
    conc_h += NH
    conc_h *= h_scale
    conc_e = base_e
    conc_e *= keep_base
    conc_e += 0.48 * A
    conc_e *= e_scale
    hv, ev = _unit(hosp["h_vector"]), _unit(hosp["e_vector"])
    bg = np.asarray(hosp["background"], np.float32)
    illum = up(_smooth_noise(rng, (hl, wl), 400 / lo_um) * 0.012 + 1.0)
    noise = float(hosp["noise"])
    if noise > 0:
        illum += rng.standard_normal((H, W), np.float32) * (noise / float(bg.mean()))
    rgb = np.empty((H, W, 3), np.uint8)
    for c in range(3):
        od = conc_h * -hv[c]
        od -= conc_e * ev[c]
        chan = cv2.exp(od)
        chan *= illum
        chan *= bg[c]
        rgb[..., c] = cv2.convertScaleAbs(chan)  # rounds and saturates to uint8
    blur = float(hosp["blur_um"]) * um
    if blur > 0.05:
        cv2.GaussianBlur(rgb, (0, 0), blur, dst=rgb)
    return rgb, polygons

