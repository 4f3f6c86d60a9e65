"""Does bf16 training reach the slide AUC of fp32? Both precisions on the embedded default's features.

    make reproduce        # once: the embedded default's features under results/mini-camelyon
    python benchmarks/precision.py [--methods maxpool abmil ...] [--seeds 0 1 2] [--jobs 2]

For every method x feature set (clean, poisoned) x seed, trains with the method's published defaults in
``fp32`` and in ``bf16`` (``wsimil.training.loop.train``, selection on validation AUC as in the workflow)
and scores the test slides in fp32. Writes every run's test AUC to ``--out`` (csv) and a table of mean +- std
over seeds per precision beside it (markdown).
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = ROOT / "results" / "mini-camelyon"


def one_run(task: tuple[str, str, str, int, str]) -> dict:
    features_dir, sheet_path, method, seed, precision = task
    import torch

    torch.set_num_threads(1)
    from wsimil.datasets.sheet import read_sheet
    from wsimil.training.data import load_bags
    from wsimil.training.loop import predict, safe_auc, train

    bags = load_bags(read_sheet(sheet_path), features_dir)
    t = time.perf_counter()
    res = train(bags, method, seed, precision=precision)
    seconds = time.perf_counter() - t
    test = bags.indices("test")
    pred = predict(res.model, bags, test)
    return {"features": Path(features_dir).name, "method": method, "seed": seed, "precision": res.precision,
            "test_auc": safe_auc(bags.labels[test], pred.probs), "best_epoch": res.best_epoch,
            "val_auc": res.history[res.best_epoch].get("val_auc"), "train_seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="results/<dataset> of a finished run")
    ap.add_argument("--methods", nargs="+", default=["maxpool", "abmil", "focusmil"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=2, help="parallel processes, one thread each")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "precision.csv")
    args = ap.parse_args()

    feature_root = next((args.results / "features").glob("*/*"))  # <patches tag>/<extractor>
    sets = sorted(p for p in feature_root.iterdir() if p.is_dir())
    sheet = args.results / "data" / "slides.csv"
    tasks = [(str(fs), str(sheet), m, s, p) for m in args.methods for fs in sets for s in args.seeds
             for p in ("fp32", "bf16")]
    print(f"{len(tasks)} runs: {args.methods} x {[s.name for s in sets]} x seeds {args.seeds} x fp32/bf16", flush=True)
    rows = []
    with ProcessPoolExecutor(args.jobs) as pool:
        for row in pool.map(one_run, tasks):
            rows.append(row)
            print(f"{row['method']:16s} {row['features']:28s} seed {row['seed']} {row['precision']}: "
                  f"test AUC {row['test_auc']:.3f} ({row['train_seconds']:.0f} s)", flush=True)
    df = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False, float_format="%.4g")
    table = df.groupby(["method", "features", "precision"])["test_auc"].agg(["mean", "std"]).unstack("precision")
    table.columns = [f"{p} {stat}" for stat, p in table.columns]
    table["bf16 - fp32"] = table["bf16 mean"] - table["fp32 mean"]
    secs = df.groupby(["method", "features", "precision"])["train_seconds"].mean().unstack("precision")
    table["s/run fp32"], table["s/run bf16"] = secs["fp32"], secs["bf16"]
    md = table.reset_index().to_markdown(index=False, floatfmt=".3f")
    args.out.with_suffix(".md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
