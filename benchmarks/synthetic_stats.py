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
from the patch counts in REFERENCE.md (``--c16-tissue-mm2``, default 100 mm^2 ~ 8,000 patches of
224 px at 0.5 um/px). ``lesion_class`` itself keeps the generator's fixed thresholds (200 / 500 um).
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


def main(argv: list[str] | None = None) -> pd.DataFrame:
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


if __name__ == "__main__":
    main()
