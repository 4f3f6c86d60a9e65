"""Extraction throughput: the bare network vs `extract_slide` end to end, on one synthetic slide.

    python benchmarks/extraction.py [--extractor efficientnet_lite0] [--rounds 5] [--threads 2]

The project's goal: tiles/s of extraction >= 90% of the bare network's on the same batch size. Rounds are
interleaved so that a busy machine slows every variant alike; medians are reported.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from wsimil.features.extract import extract_slide
from wsimil.features.extractors import build_extractor
from wsimil.features.store import read_patches
from wsimil.slides import synthetic
from wsimil.slides.patching import PatchingParams, run_patching
from wsimil.slides.reader import open_slide


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extractor", default="efficientnet_lite0")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--size-um", type=float, nargs=2, default=(3500, 2800), help="slide size (default: 4x a default slide)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="wsimil-bench-"))
    cfg = synthetic.resolve_config({"size_um": list(args.size_um)})
    row = synthetic.plan_dataset(cfg).query("label == 1").iloc[0]
    synthetic.render_slide(cfg, row, work)
    slide = work / row["path"]
    pfile = work / "patches.h5"
    run_patching(slide, row["slide_id"], work / row["annotation"], pfile, PatchingParams.from_config({}))
    patches = read_patches(pfile)
    spec = patches.spec
    ext = build_extractor(args.extractor)
    with open_slide(slide) as s:
        tiles = np.stack([s.read_region(tuple(c), spec.level, (spec.read_size, spec.read_size)) for c in patches.coords])
    batches = [ext.preprocess(tiles[i : i + args.batch_size]) for i in range(0, len(tiles), args.batch_size)]

    def bare() -> float:
        t = time.perf_counter()
        with torch.inference_mode():
            for x in batches:
                ext.model(x)
        return len(tiles) / (time.perf_counter() - t)

    bare()  # warm-up
    rows = []
    for r in range(args.rounds):
        rows.append({"round": r, "variant": "bare network", "tiles_per_s": bare()})
        for nw in (0, 1):
            s = extract_slide(slide, pfile, work / f"f{nw}.h5", ext, batch_size=args.batch_size,
                              num_threads=args.threads, num_workers=nw, progress=False)
            rows.append({"round": r, "variant": f"extract_slide, {nw} workers", "tiles_per_s": s["tiles_per_s"]})
    df = pd.DataFrame(rows)
    bare_per_round = df[df.variant == "bare network"].set_index("round")["tiles_per_s"]
    df["ratio_to_bare"] = df["tiles_per_s"] / df["round"].map(bare_per_round)
    summary = df.groupby("variant", sort=False)[["tiles_per_s", "ratio_to_bare"]].median()
    print(f"{args.extractor}, {len(tiles)} patches of {spec.patch_size} px, batch {args.batch_size}, "
          f"{args.threads} threads, {args.rounds} rounds (medians):")
    print(summary.round(3).to_markdown())


if __name__ == "__main__":
    main()
