"""Training speed and memory at CAMELYON16 scale: wsimil's loop against an official-style loop.

    python benchmarks/training.py --dim 1024 [--bags 270] [--methods abmil maxpool ...] [--threads 2]

Features: ``--bags`` slides (default 270, CAMELYON16's training set: 111 tumour, 159 normal) with lengths
drawn like real slides (log-normal, clipped to [300, 20000] instances, mean ~8,000), ``--dim`` features
(1024 as ResNet-50 trunc., 512 as ResNet-18), written once under ``--workdir`` in two forms: wsimil's
float16 HDF5 (``h5_files/<slide>.h5``, loaded once, as ``wsimil train`` loads them) and CLAM's float32
``pt_files/<slide>.pt`` (what the official-style loop reads, one file per step).

Each method runs in its own process (its peak memory is its own), which measures, on the same bags in
the same shuffled order:

- ``run``: a real training run, ``wsimil.training.loop.train`` for one epoch with a 10% validation split,
  after loading every feature file (the peak resident memory of the process is taken right after it);
- ``ours_<p>``: one epoch of ``train_epoch`` (the loop every run uses) in precision ``p``;
- ``bare_<p>``: the same steps with only forward + loss + backward + clipping + optimiser step timed, each
  batch packed beforehand, i.e. the model's own arithmetic in precision ``p``;
- ``ref_fp32``: the official style, one slide per step, fp32, each slide's ``.pt`` read by ``torch.load``
  inside the step, PyTorch's ``nn.Dropout`` (the official layer) instead of wsimil's cheaper-mask Dropout.

Two warm-up steps precede every timed epoch. Results go to ``--out`` (csv) and a markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

def slide_lengths(n: int, mean: int, rng: np.random.Generator) -> np.ndarray:
    """Log-normal patch counts (sigma 0.8) clipped to [mean / 25, 2.5 mean] (300-20,000 for mean 8,000),
    the median shifted until the mean is ``mean``."""
    z = rng.standard_normal(n)
    mu = np.log(mean)
    for _ in range(50):
        lengths = np.clip(np.exp(mu + 0.8 * z), max(1, mean // 25), 2.5 * mean).astype(int)
        mu += np.log(mean / lengths.mean())
    return lengths


def make_data(work: Path, n_bags: int, dim: int, mean_length: int, seed: int = 0) -> Path:
    """Write the benchmark features once; returns the data directory."""
    import torch

    from wsimil.features.store import write_features

    data = work / f"d{dim}_b{n_bags}_m{mean_length}_s{seed}"
    if (data / "slides.csv").is_file():
        return data
    rng = np.random.default_rng(seed)
    lengths = slide_lengths(n_bags, mean_length, rng)
    labels = np.zeros(n_bags, int)
    labels[rng.permutation(n_bags)[: round(n_bags * 111 / 270)]] = 1
    splits = np.where(rng.random(n_bags) < 0.1, "val", "train")
    concept = np.abs(rng.standard_normal(dim)).astype(np.float32)
    (data / "h5_files").mkdir(parents=True, exist_ok=True)
    (data / "pt_files").mkdir(exist_ok=True)
    ids = [f"bench_{i:03d}" for i in range(n_bags)]
    for sid, n, y in zip(ids, lengths, labels):
        x = np.abs(rng.standard_normal((n, dim), dtype=np.float32))
        if y:  # a small tumour region: 2-10% of the patches carry a shifted concept
            k = max(1, int(n * rng.uniform(0.02, 0.1)))
            x[:k] += concept
        x16 = x.astype(np.float16)
        write_features(data / "h5_files" / f"{sid}.h5", x16, np.zeros((n, 2), np.int64))
        torch.save(torch.from_numpy(x16.astype(np.float32)), data / "pt_files" / f"{sid}.pt")  # CLAM pt_files
    pd.DataFrame({"slide_id": ids, "label": labels, "split": splits, "n": lengths}).to_csv(data / "slides.csv", index=False)
    return data


def worker(args: argparse.Namespace) -> dict:
    """All measurements of one method, in this process."""
    import torch
    from torch import nn

    from wsimil.models.base import MILBatch, get_method
    from wsimil.models.layers import Dropout
    from wsimil.training.data import BagSet, load_bags, pack
    from wsimil.training.loop import batch_dtype, make_optimizer, make_schedulers, train, train_epoch, train_step

    torch.set_num_threads(args.threads)
    data = Path(args.data)
    sheet = pd.read_csv(data / "slides.csv", dtype={"slide_id": str})
    if args.limit:
        sheet = sheet.iloc[: args.limit]
    method = args.worker
    spec = get_method(method)
    hp = spec.hparams({"epochs": 1, "early_stopping": None})
    row: dict = {"method": method, "dim": args.dim, "n_bags": len(sheet), "n_instances": int(sheet["n"].sum()),
                 "bags_per_batch": int(hp["bags_per_batch"]), "threads": args.threads}

    t = time.perf_counter()
    bags = load_bags(sheet, data / "h5_files")
    row["load_s"] = time.perf_counter() - t
    t = time.perf_counter()
    train(bags, method, seed=0, overrides={"epochs": 1, "early_stopping": None}, precision=args.run_precision)
    row["run_s"] = time.perf_counter() - t
    row["run_precision"] = args.run_precision
    row["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux

    every = BagSet(bags.slide_ids, bags.labels, np.full(len(bags.labels), "train"), bags.features)
    order = np.random.default_rng(1).permutation(len(every.labels))
    def fresh():
        torch.manual_seed(0)
        model = spec.build(bags.dim, hp)
        opt = make_optimizer(model, hp)
        return model, opt, make_schedulers(opt, hp)[0]

    bpb = row["bags_per_batch"]
    warm = order[: 2 * bpb]
    for p in args.precisions:
        model, opt, per_step = fresh()
        train_epoch(model, every, warm, opt, hp, per_step, "cpu", p)
        t = time.perf_counter()
        train_epoch(model, every, order, opt, hp, per_step, "cpu", p)
        row[f"ours_{p}_s"] = time.perf_counter() - t

        model, opt, _ = fresh()
        model.train()
        x_dtype = batch_dtype(p)
        total = 0.0
        for i, start in enumerate([0, bpb] + list(range(0, len(order), bpb))):
            idx = order[start : start + bpb]
            batch = pack([every.features[j] for j in idx], every.labels[idx], x_dtype)
            t = time.perf_counter()
            train_step(model, opt, batch, hp, "cpu", p)
            if i >= 2:  # the first two are warm-up
                total += time.perf_counter() - t
        row[f"bare_{p}_s"] = total

    # Official style: one slide per step, fp32, torch.load of the slide's own file in the step.
    model, opt, _ = fresh()
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, Dropout):
                setattr(mod, child_name, nn.Dropout(child.p))
    model.train()
    ids = np.asarray(every.slide_ids)
    t = None
    for i, j in enumerate([order[0], order[1]] + list(order)):
        if i == 2:
            t = time.perf_counter()
        x = torch.load(data / "pt_files" / f"{ids[j]}.pt", weights_only=True)
        y = torch.tensor([float(every.labels[j])])
        train_step(model, opt, MILBatch(x, torch.zeros(len(x), dtype=torch.long), 1, y), hp, "cpu", "fp32")
    row["ref_fp32_s"] = time.perf_counter() - t
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--bags", type=int, default=270)
    ap.add_argument("--mean-length", type=int, default=8000, help="mean instances per bag")
    ap.add_argument("--methods", nargs="+", default=["all"])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--run-precision", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--max-bags", nargs="*", default=["transmil=54"],
                    help="METHOD=N: time METHOD on the first N bags only (TransMIL: ~2 s per 8,000-patch step here)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "wsimil-bench")
    ap.add_argument("--out", type=Path, help="csv (default benchmarks/results/training_d<dim>.csv)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--limit", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        print(json.dumps(worker(args)))
        return

    from wsimil.models.base import list_methods

    methods = list_methods() if args.methods == ["all"] else args.methods
    limits = dict(item.split("=") for item in args.max_bags)
    data = make_data(args.workdir, args.bags, args.dim, args.mean_length)
    sheet = pd.read_csv(data / "slides.csv")
    print(f"{len(sheet)} bags, {sheet['n'].sum():,} instances (min {sheet['n'].min()}, mean {sheet['n'].mean():.0f}, "
          f"max {sheet['n'].max()}) x {args.dim} in {data}", flush=True)
    out = args.out or Path(__file__).parent / "results" / f"training_d{args.dim}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for m in methods:
        cmd = [sys.executable, __file__, "--worker", m, "--data", str(data), "--dim", str(args.dim),
               "--threads", str(args.threads), "--run-precision", args.run_precision,
               "--limit", limits.get(m, "0"), "--precisions", *args.precisions]
        t = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            print(f"{m}: FAILED\n{res.stderr[-3000:]}", flush=True)
            continue
        row = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{m}: {time.perf_counter() - t:.0f} s  " + "  ".join(
            f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items() if k != "method"), flush=True)
        pd.DataFrame(rows).to_csv(out, index=False, float_format="%.4g")  # after every method: a crash keeps the rest
    df = summarise(pd.DataFrame(rows), args.precisions)
    df.to_csv(out, index=False, float_format="%.4g")
    out.with_suffix(".md").write_text(markdown(df, args.precisions))
    print(out.with_suffix(".md").read_text())


def summarise(df: pd.DataFrame, precisions: list[str]) -> pd.DataFrame:
    """Add the ratios the goals are stated in."""
    best = "bf16" if "bf16" in precisions else precisions[0]
    df[f"speedup_ours_{best}_vs_ref"] = df["ref_fp32_s"] / df[f"ours_{best}_s"]
    for p in precisions:
        df[f"overhead_{p}"] = df[f"ours_{p}_s"] / df[f"bare_{p}_s"]
    return df


def markdown(df: pd.DataFrame, precisions: list[str]) -> str:
    best = "bf16" if "bf16" in precisions else precisions[0]
    cols = ["method", "n_bags", "bags_per_batch", "ref_fp32_s"]
    for p in precisions:
        cols += [f"ours_{p}_s", f"bare_{p}_s", f"overhead_{p}"]
    cols += [f"speedup_ours_{best}_vs_ref", "run_s", "peak_rss_gib"]
    head = "| " + " | ".join(cols) + " |\n|" + "---|" + "---:|" * (len(cols) - 1) + "\n"
    body = ""
    for _, r in df[cols].iterrows():
        body += "| " + " | ".join(str(r[c]) if isinstance(r[c], str) else f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |\n"
    return head + body


if __name__ == "__main__":
    main()
