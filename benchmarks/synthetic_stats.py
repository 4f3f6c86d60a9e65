"""Lesion sizes, lesion classes and tumour fractions of the synthetic mini-Camelyon (not a speed benchmark).

    python benchmarks/synthetic_stats.py                       # the generator's defaults, their planned slides
    python benchmarks/synthetic_stats.py --n-tumour 300        # the same distribution on 300 tumour slides
    python benchmarks/synthetic_stats.py --config config.yaml  # a config's ``synthetic:`` section
    python benchmarks/synthetic_stats.py --render 4            # + cross-check 4 slides on the written files

For every tumour slide of the plan it computes, from the generator's own geometry
(``synthetic.slide_geometry``, the first and cheap part of the renderer, same seed, same masks):

- the nominal lesion diameters and the slide's ``lesion_class`` (as ``plan_dataset`` reports it);
- the **tumour fraction of the tissue**: area of the annotation polygons (the ones ``render_slide`` writes
  to the ASAP XML, written and read back with ``wsimil.slides.annotations.tumour_region``) divided by the
  tissue area (lymph node, capsule and hilar fat; glass excluded);
- the **witness rate** on a square patch grid (``--patch-um``, default 128 um = the embedded default's
  128 px at 1 um/px): among patches at least half covered by tissue, the share with any tumour and with
  >= 50 % tumour (``evaluation.patch_positive_fraction``). The pipeline's own grid and tissue mask differ
  slightly (CLAM-style segmentation, its own offsets), so this is an approximation of what MIL sees.

``--render K`` renders the first K tumour slides to a temporary folder and recomputes the fraction from
the written files: the XML through ``tumour_region`` and the tissue from the pipeline's CLAM-style tissue
mask (``wsimil.slides.tissue.segment_tissue`` with the embedded default's patching parameters).

It also prints the classes at an *area-consistent* scale: the clinical thresholds (ITC <= 0.2 mm,
macro > 2 mm) multiplied by sqrt(synthetic tissue area / CAMELYON16 tissue area), the latter estimated
from the CAMELYON16 patch counts of docs/references.md, "Patches per slide" (``--c16-tissue-mm2``, default
100 mm^2 ~ 8,000 patches of 224 px at 0.5 um/px). ``lesion_class`` itself keeps the generator's fixed
thresholds (200 / 500 um).

``probe`` (first argument) runs the **supervised patch probe**, the calibration instrument of the tumour's
appearance that no MIL method sees: a logistic regression on the standardised patch features
with the patch labels (``C`` = ``PROBE_C``, ``class_weight="balanced"``, one probe per positive definition),
trained on the patches of the train slides, its patch AUC / AP reported on the patches of the test slides,
with positives = tumour fraction >= 0.5 and = any tumour, a slide-bootstrap 95 % interval of each AUC, and
the class counts (``partial``: isolated-tumour-cell-like patches, 0 < fraction < 0.5)::

    python benchmarks/synthetic_stats.py probe --features DIR --sheet slides.csv   # existing feature files
    python benchmarks/synthetic_stats.py probe --synth --name today                # synthesise, patch, extract
    python benchmarks/synthetic_stats.py probe --synth --name s1 --set lesions.nucleus_scale=[1.2,1.5]

``--synth`` renders ``--train N T`` / ``--test N T`` normal / tumour slides with the calibration settings
(``PROBE_SYNTHETIC`` over the generator's defaults, then ``--config``'s ``synthetic:`` section, then ``--set``;
hospitals 0 and 1 stain the slides, hospital 2 is held out as in the embedded default), patches and extracts
them in-process with ``PROBE_PATCHING`` / ``PROBE_FEATURES``, probes them, and appends a row to
``benchmarks/results/probe_calibration.csv`` (and rewrites ``probe_calibration.md``) unless ``--no-record``.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from wsimil.evaluation.probe import PROBE_C, PROBE_CLASS_WEIGHT, load_probe_data, probe
from wsimil.slides import synthetic
from wsimil.slides.annotations import tumour_region, write_asap_xml


def load_config(path: str | None) -> dict:
    if path is None:
        return synthetic.default_config()
    data = yaml.safe_load(Path(path).read_text()) or {}
    section = data.get("synthetic", data) if isinstance(data, dict) else {}
    return synthetic.resolve_config(section)


def patch_stats(tissue: np.ndarray, lesion: np.ndarray, patch_px: int) -> tuple[int, int, int]:
    """(tissue patches, patches with any tumour, patches >= 50 % tumour) on a grid from the top-left corner."""
    h, w = (tissue.shape[0] // patch_px) * patch_px, (tissue.shape[1] // patch_px) * patch_px

    def cover(mask: np.ndarray) -> np.ndarray:
        m = mask[:h, :w].reshape(h // patch_px, patch_px, w // patch_px, patch_px)
        return m.mean(axis=(1, 3))

    t, les = cover(tissue), cover(lesion)
    keep = t >= 0.5
    return int(keep.sum()), int((keep & (les > 0)).sum()), int((keep & (les >= 0.5)).sum())


def slide_stats(cfg: dict, row: pd.Series, work: Path, patch_um: float) -> dict:
    g = synthetic.slide_geometry(cfg, row.slide_id, int(row.label))
    xml = work / f"{row.slide_id}.xml"
    write_asap_xml(xml, g.polygons, group="_0")
    region = tumour_region(xml)
    px_area = g.mpp**2  # um^2 per level-0 px
    tissue_px = int(g.tissue.sum())
    n_tis, n_any, n_half = patch_stats(g.tissue, g.lesion, max(1, int(round(patch_um / g.mpp))))
    return {
        "slide_id": row.slide_id,
        "hospital": row.hospital,
        "n_lesions": int(row.n_lesions),
        "lesion_diameters_um": row.lesion_diameters_um,
        "lesion_class": row.lesion_class,
        "max_diameter_um": 2 * max(g.radii_um),
        "tumour_mm2": region.area * px_area / 1e6,
        "tissue_mm2": tissue_px * px_area / 1e6,
        "tumour_fraction": region.area / tissue_px,
        "mask_fraction": float(g.lesion.sum()) / tissue_px,
        "tissue_patches": n_tis,
        "witness_any": n_any / max(1, n_tis),
        "witness_half": n_half / max(1, n_tis),
    }


def rendered_fraction(cfg: dict, row: pd.Series, work: Path) -> float:
    """Tumour fraction from the written files: XML polygons / the pipeline's tissue mask."""
    from wsimil.slides.reader import open_slide
    from wsimil.slides.tissue import TissueParams, segment_tissue

    synthetic.render_slide(cfg, row, work)
    region = tumour_region(work / row.annotation)
    with open_slide(work / row.path) as s:
        tm = segment_tissue(s, TissueParams.from_config({"seg_downsample": 16}))
    sx, sy = tm.scale
    return region.area / (float(tm.mask.sum()) * sx * sy)


def summary(values: pd.Series, pct: bool = True) -> str:
    q = values.quantile([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0]).to_numpy() * (100 if pct else 1)
    unit = "%" if pct else ""
    names = ("min", "p10", "q25", "median", "q75", "p90", "max")
    return "  ".join(f"{n} {v:.2f}{unit}" for n, v in zip(names, q))


def classify(d_um: float, itc_max: float, macro_min: float) -> str:
    return "itc" if d_um < itc_max else "micro" if d_um < macro_min else "macro"


def main(argv: list[str] | None = None) -> pd.DataFrame | dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "probe":
        return probe_main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config",
                    help="YAML with a `synthetic:` section (or the section itself); default: the generator's defaults")
    ap.add_argument("--n-tumour", type=int, default=0,
                    help="plan this many tumour slides (train split, tumor_001...) instead of the config's slides")
    ap.add_argument("--patch-um", type=float, default=128.0, help="patch side for the witness rate, um")
    ap.add_argument("--c16-tissue-mm2", type=float, default=100.0,
                    help="CAMELYON16 tissue area per slide assumed for the area-consistent class scale")
    ap.add_argument("--render", type=int, default=0, help="cross-check this many slides on rendered files")
    ap.add_argument("--csv", help="write the per-slide table here")
    ap.add_argument("--quiet", action="store_true", help="no per-slide table on stdout")
    args = ap.parse_args(argv)

    cfg = load_config(args.config)
    if args.n_tumour:
        cfg["slides"] = {"train": {"normal": 0, "tumour": args.n_tumour}, "val": {}, "test": {}}
    cfg = synthetic.resolve_config(cfg)
    plan = synthetic.plan_dataset(cfg)
    tumour = plan[plan.label == 1]
    if tumour.empty:
        sys.exit("the plan has no tumour slides")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="wsimil-synth-stats-") as tmp:
        df = pd.DataFrame([slide_stats(cfg, row, Path(tmp), args.patch_um) for row in tumour.itertuples()])
        took = time.perf_counter() - t0
        rendered = []
        for row in list(tumour.itertuples())[: args.render]:
            rendered.append((row.slide_id, rendered_fraction(cfg, row, Path(tmp))))
    les = cfg["lesions"]
    print(f"# {len(df)} tumour slides; size_um {cfg['size_um']}, lesions.count {les['count']}, "
          f"lesions.radius_um {les['radius_um']} ({took:.1f} s)")
    if not args.quiet:
        cols = ["slide_id", "hospital", "lesion_class", "lesion_diameters_um", "tumour_fraction", "tissue_patches",
                "witness_any", "witness_half"]
        pct = {c: "{:.2%}".format for c in cols[4:] if c != "tissue_patches"}
        print(df[cols].to_string(index=False, formatters=pct))
    print()
    print("tumour fraction of the tissue (annotation area / tissue area)")
    print("  " + summary(df.tumour_fraction))
    for cut in (0.01, 0.05, 0.10, 0.20, 0.30):
        print(f"  slides < {cut:.0%}: {(df.tumour_fraction < cut).mean():.0%}")
    print(f"  mean {df.tumour_fraction.mean():.2%}; annotation vs rendered mask: max |diff| "
          f"{(df.tumour_fraction - df.mask_fraction).abs().max():.3%} of the tissue")
    print("witness rate (patches of %g um with >= 50 %% tissue)" % args.patch_um)
    print("  any tumour:   " + summary(df.witness_any))
    print("  >= 50 % tumour: " + summary(df.witness_half))
    print(f"  slides without a >= 50 % tumour patch: {(df.witness_half == 0).mean():.0%}; "
          f"tissue patches per slide: median {df.tissue_patches.median():.0f}")
    print(f"tissue area per slide: median {df.tissue_mm2.median():.3f} mm^2")
    counts = df.lesion_class.value_counts()
    print("lesion_class (generator thresholds: itc < 200 um, micro < 500 um, macro >= 500 um): "
          + ", ".join(f"{c} {counts.get(c, 0)} ({counts.get(c, 0) / len(df):.0%})" for c in ("itc", "micro", "macro")))
    scale = math.sqrt(df.tissue_mm2.median() / args.c16_tissue_mm2)
    itc_max, macro_min = 200 * scale, 2000 * scale
    alt = df.max_diameter_um.map(lambda d: classify(d, itc_max, macro_min)).value_counts()
    print(f"area-consistent classes (scale {scale:.3f} = sqrt(tissue / {args.c16_tissue_mm2:g} mm^2): itc < "
          f"{itc_max:.0f} um, macro >= {macro_min:.0f} um): "
          + ", ".join(f"{c} {alt.get(c, 0)} ({alt.get(c, 0) / len(df):.0%})" for c in ("itc", "micro", "macro")))
    print("lesion diameters (um, all lesions): " + summary(pd.Series([float(x) for s in df.lesion_diameters_um
                                                                      for x in s.split(";")]), pct=False))
    if rendered:
        print("cross-check on rendered files (XML via tumour_region / CLAM-style tissue mask of the TIFF):")
        geo = df.set_index("slide_id").tumour_fraction
        for sid, frac in rendered:
            print(f"  {sid}: rendered {frac:.2%}  geometry {geo[sid]:.2%}")
    if args.csv:
        df.to_csv(args.csv, index=False)
    return df


# -- the supervised patch probe: calibrates the tumour's appearance, no MIL method involved --------------------

#: the calibration data: the embedded default's synthetic settings (1.0 um/px, three hospitals,
#: hospital 2 held out so hospitals 0 and 1 stain the probe's slides)
PROBE_SYNTHETIC = {"seed": 0, "mpp": 1.0, "magnification": 10, "size_um": [1750, 1400], "held_out_hospitals": [2]}
PROBE_PATCHING = {"target_mpp": 1.0, "patch_size": 128, "seg_downsample": 16}
PROBE_FEATURES = {"extractor": "efficientnet_lite0", "precision": "bf16", "batch_size": 64, "num_workers": 0,
                  "device": "cpu"}
RESULTS = Path(__file__).resolve().parent / "results"


def probe_features(features_dir: str | Path, sheet: str | Path | pd.DataFrame, C: float = PROBE_C) -> dict:
    """:func:`wsimil.evaluation.probe.probe` on the feature files of ``sheet`` in ``features_dir``."""
    return probe(load_probe_data(features_dir, sheet), C=C)


def _set_dotted(cfg: dict, key: str, value) -> None:
    node = cfg
    *path, last = key.split(".")
    for k in path:
        node = node.setdefault(k, {})
    node[last] = value


def probe_synthetic_config(section: dict | None, sets: dict | None, counts: dict) -> dict:
    """The calibration's ``synthetic:`` section: PROBE_SYNTHETIC, then ``section``, then the dotted ``sets``,
    with the probe's slide counts."""
    cfg = synthetic._merge(PROBE_SYNTHETIC, section or {})
    for k, v in (sets or {}).items():
        _set_dotted(cfg, k, v)
    cfg["slides"] = {"train": counts["train"], "val": {"normal": 0, "tumour": 0}, "test": counts["test"]}
    return synthetic.resolve_config(cfg)


def build_probe_dataset(cfg: dict, out_dir: str | Path, patching: dict | None = None,
                        features: dict | None = None) -> tuple[Path, dict]:
    """Render the plan's (non-external) slides of ``cfg`` under ``out_dir``, patch them (``patching``) and
    extract their features (``features``) in-process; returns (sheet path, seconds per stage). The feature
    files land in ``out_dir/features``."""
    import cv2
    import torch

    from wsimil.config import validate_config
    from wsimil.features.extract import extract_slide
    from wsimil.features.extractors import build_extractor
    from wsimil.slides.patching import PatchingParams, run_patching

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    out_dir = Path(out_dir)
    pcfg = validate_config({"patching": dict(PROBE_PATCHING if patching is None else patching)})["patching"]
    pcfg.pop("slides_per_job", None)
    fcfg = validate_config({"features": dict(PROBE_FEATURES if features is None else features)})["features"]
    params = PatchingParams.from_config(pcfg)
    plan = synthetic.plan_dataset(cfg)
    plan = plan[~plan["external"]]
    secs = {"render_s": 0.0, "patch_s": 0.0, "extract_s": 0.0}
    ext = build_extractor(fcfg["extractor"], weights=fcfg["weights"], device=fcfg["device"],
                          input_size=fcfg["input_size"], weights_sha256=fcfg.get("weights_sha256"))
    for row in plan.itertuples():
        t0 = time.perf_counter()
        synthetic.render_slide(cfg, row, out_dir)
        t1 = time.perf_counter()
        ann = out_dir / row.annotation if row.annotation else None
        patch_file = out_dir / "patches" / f"{row.slide_id}.h5"
        run_patching(out_dir / row.path, row.slide_id, ann, patch_file, params, label=int(row.label))
        t2 = time.perf_counter()
        extract_slide(out_dir / row.path, patch_file, out_dir / "features" / f"{row.slide_id}.h5", ext,
                      batch_size=fcfg["batch_size"], num_threads=1, slide_id=row.slide_id,
                      num_workers=fcfg["num_workers"], dtype=fcfg["dtype"], progress=False,
                      precision=fcfg["precision"])
        t3 = time.perf_counter()
        secs["render_s"] += t1 - t0
        secs["patch_s"] += t2 - t1
        secs["extract_s"] += t3 - t2
    sheet = out_dir / "slides.csv"
    plan[synthetic.SHEET_COLUMNS].to_csv(sheet, index=False)
    return sheet, {k: round(v, 1) for k, v in secs.items()}


_CAL_COLUMNS = ["name", "settings", "auc_half", "auc_half_lo", "auc_half_hi", "ap_half", "bacc_half", "auc_any",
                "auc_any_lo", "auc_any_hi", "ap_any", "bacc_any", "test_pos_half", "test_neg_half", "test_pos_any", "test_neg_any",
                "test_partial", "train_pos_half", "train_neg_half", "train_pos_any", "train_partial",
                "train_slides", "test_slides", "C", "class_weight", "render_s", "patch_s", "extract_s", "probe_s"]


def _f3(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{float(x):.3f}"


def write_calibration_md(csv: Path, md: Path) -> None:
    """The markdown table of every probe calibration row recorded in ``csv``."""
    df = pd.read_csv(csv)
    lines = ["# Supervised patch probe: calibration of the synthetic tumour's appearance", "",
             "Written by `python benchmarks/synthetic_stats.py probe --synth ...` from `probe_calibration.csv`. "
             f"Logistic regression on standardised efficientnet_lite0 features (C = {PROBE_C}, class_weight "
             f"{PROBE_CLASS_WEIGHT}), trained on the train slides' patches, evaluated on the test slides' patches "
             "(hospitals 0 and 1, 1.0 um/px, 128 px patches, bf16). `half`: positives = tumour fraction >= 0.5; "
             "`any`: > 0. [lo, hi]: 95 % slide-bootstrap interval. partial: 0 < fraction < 0.5.", "",
             "| name | settings (over the generator's defaults) | AUC half [95 %] | AP half | bal. acc. half "
             "| AUC any [95 %] | AP any | bal. acc. any "
             "| test pos half / any / neg half | test partial | train pos half | slides train / test | s render + patch + extract + probe |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in df.itertuples():
        lines.append(
            f"| {r.name} | `{r.settings}` | {r.auc_half:.3f} [{r.auc_half_lo:.3f}, {r.auc_half_hi:.3f}] | "
            f"{r.ap_half:.3f} | {_f3(getattr(r, 'bacc_half', None))} | {r.auc_any:.3f} [{r.auc_any_lo:.3f}, "
            f"{r.auc_any_hi:.3f}] | {r.ap_any:.3f} | {_f3(getattr(r, 'bacc_any', None))} | "
            f"{r.test_pos_half} / {r.test_pos_any} / {r.test_neg_half} | {r.test_partial} | {r.train_pos_half} | "
            f"{r.train_slides} / {r.test_slides} | {r.render_s:.0f} + {r.patch_s:.0f} + {r.extract_s:.0f} + "
            f"{r.probe_s:.0f} |")
    md.write_text("\n".join(lines) + "\n")


def _print_probe(res: dict) -> None:
    for name, what in (("half", "tumour fraction >= 0.5"), ("any", "any tumour (> 0)")):
        print(f"positives = {what}: test patch AUC {res[f'auc_{name}']:.4f} "
              f"[{res[f'auc_{name}_lo']:.4f}, {res[f'auc_{name}_hi']:.4f}], AP {res[f'ap_{name}']:.4f}, "
              f"balanced accuracy {res[f'bacc_{name}']:.4f}; "
              f"test {res[f'test_pos_{name}']} pos / {res[f'test_neg_{name}']} neg, "
              f"train {res[f'train_pos_{name}']} pos / {res[f'train_neg_{name}']} neg")
    print(f"isolated-tumour-cell-like patches (0 < fraction < 0.5): test {res['test_partial']}, "
          f"train {res['train_partial']}; slides train {res['train_slides']}, test {res['test_slides']}; "
          f"C {res['C']}, class_weight {res['class_weight']}")


def probe_main(argv: list[str]) -> dict:
    import json

    ap = argparse.ArgumentParser(prog="synthetic_stats.py probe",
                                 description="supervised patch probe on patch features")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--features", help="folder of <slide_id>.h5 feature files (with --sheet)")
    src.add_argument("--synth", action="store_true", help="synthesise, patch and extract the probe's slides first")
    ap.add_argument("--sheet", help="sample sheet CSV (slide_id,label,split,...) of the --features folder")
    ap.add_argument("--config", help="YAML whose `synthetic:` section (or the file itself) goes over PROBE_SYNTHETIC")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="dotted synthetic key, YAML value (e.g. lesions.nucleus_scale=[1.2,1.5]); repeatable")
    ap.add_argument("--train", type=int, nargs=2, default=[6, 14], metavar=("NORMAL", "TUMOUR"))
    ap.add_argument("--test", type=int, nargs=2, default=[4, 16], metavar=("NORMAL", "TUMOUR"))
    ap.add_argument("--work", help="keep the synthesised slides / features here (default: a temporary folder)")
    ap.add_argument("--name", default="probe", help="row name in the calibration table")
    ap.add_argument("--C", type=float, default=PROBE_C)
    ap.add_argument("--no-record", action="store_true", help="do not append to benchmarks/results/probe_calibration")
    ap.add_argument("--csv", help="also write this run's row here")
    args = ap.parse_args(argv)
    timings: dict = {"render_s": math.nan, "patch_s": math.nan, "extract_s": math.nan}
    settings = ""
    if args.synth:
        section = {}
        if args.config:
            data = yaml.safe_load(Path(args.config).read_text()) or {}
            section = data.get("synthetic", data)
        sets = {}
        for item in args.set:
            k, _, v = item.partition("=")
            sets[k.strip()] = yaml.safe_load(v)
        counts = {s: {"normal": n, "tumour": t} for s, (n, t) in (("train", args.train), ("test", args.test))}
        cfg = probe_synthetic_config(section, sets, counts)
        settings = json.dumps({**{k: v for k, v in section.items() if k not in ("slides",)}, **sets},
                              separators=(",", ":")) if (section or sets) else "{}"
        tmp = None if args.work else tempfile.TemporaryDirectory(prefix="wsimil-probe-")
        work = Path(args.work or tmp.name)
        try:
            sheet, timings = build_probe_dataset(cfg, work)
            t0 = time.perf_counter()
            res = probe_features(work / "features", sheet, C=args.C)
        finally:
            if tmp is not None:
                tmp.cleanup()
    else:
        if not args.sheet:
            ap.error("--features needs --sheet")
        t0 = time.perf_counter()
        res = probe_features(args.features, args.sheet, C=args.C)
    res.update(timings, probe_s=round(time.perf_counter() - t0, 1), name=args.name, settings=settings)
    _print_probe(res)
    print("seconds: " + ", ".join(f"{k} {res[k]}" for k in ("render_s", "patch_s", "extract_s", "probe_s")))
    row = pd.DataFrame([{c: res.get(c) for c in _CAL_COLUMNS}])
    if args.csv:
        row.to_csv(args.csv, index=False)
    if args.synth and not args.no_record:
        RESULTS.mkdir(exist_ok=True)
        csv = RESULTS / "probe_calibration.csv"
        if csv.exists():  # older rows may lack newer columns: rewrite the whole table
            row = pd.concat([pd.read_csv(csv), row], ignore_index=True).reindex(columns=_CAL_COLUMNS)
        tmp_csv = csv.with_suffix(".csv.tmp")
        row.to_csv(tmp_csv, index=False)
        tmp_csv.replace(csv)
        write_calibration_md(csv, RESULTS / "probe_calibration.md")
    return res


if __name__ == "__main__":
    main()
