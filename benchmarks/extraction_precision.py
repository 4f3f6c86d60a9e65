"""What does bf16 feature extraction cost? Speed, per-tile fidelity and downstream slide AUC against fp32.

    python benchmarks/extraction_precision.py [--work /tmp/wsimil-prec] [--rounds 1]   # ~10 min here

On the slides of a workflow config (default: the embedded default, ``config.yaml``), in a scratch folder
(never under results/):

1. ``wsimil synth`` and ``wsimil patch`` (the CLI calls of rules/slides.smk and rules/patches.smk) generate the
   slides and their patch grids; existing outputs in ``--work`` are reused.
2. Every slide's features are extracted with the config's ``features`` section in ``fp32`` and in ``bf16``
   (``wsimil.features.extract.extract_slide``, what ``wsimil extract`` runs, one network for all slides),
   the two precisions interleaved slide by slide so that background load slows both alike; ``tiles/s`` is
   patches / wall time of ``extract_slide`` (reading, network, writing), summed over slides, best of
   ``--rounds``. The first slide is extracted once in each precision beforehand as a warm-up.
3. Per-tile cosine similarity between the stored fp32 and bf16 features (and the relative L2 error).
4. ``wsimil train`` (the config's ``training`` methods, seeds, epochs cap, device, precision, threads: the
   call of rules/train.smk for the standard cell) and ``wsimil evaluate`` on each feature set; the slide test
   AUC of every run.

Writes ``--out`` (csv, one row per method x seed x feature precision, plus the speed and cosine rows) and a
markdown report beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "bf16")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def torch_version() -> str:
    import torch

    return torch.__version__


def wsimil(*args: str) -> None:
    cmd = [str(Path(sys.executable).with_name("wsimil")), *args]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"failed ({res.returncode}): {' '.join(cmd)}\n{res.stderr[-3000:]}")


def make_slides(config: dict, work: Path, jobs: int) -> pd.DataFrame:
    """Slides (wsimil synth) and patch files (wsimil patch) of the config's synthetic dataset under ``work``."""
    from wsimil.datasets.sheet import read_sheet, resolve

    data = work / "data"
    synth = json.dumps(config["synthetic"])
    if not (data / "slides.csv").is_file():
        wsimil("synth", "--params", synth, "--out", str(data), "--sheet-only")
    sheet = read_sheet(data / "slides.csv")
    todo = [s for s in sheet.itertuples() if not resolve(data / "slides.csv", s.path).is_file()]
    with ThreadPoolExecutor(jobs) as pool:  # one slide per process, as the workflow's jobs
        list(pool.map(lambda s: wsimil("synth", "--params", synth, "--out", str(data), "--slide", s.slide_id), todo))
    patching = json.dumps(config["patching"])

    def patch(s) -> None:
        out = work / "patches" / f"{s.slide_id}.h5"
        if not out.is_file():
            ann = str(resolve(data / "slides.csv", s.annotation)) if str(s.annotation).strip() else ""
            wsimil("patch", "--slide", str(resolve(data / "slides.csv", s.path)), "--slide-id", s.slide_id,
                   f"--annotation={ann}", "--label", str(s.label), "--params", patching, "--out", str(out))

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(patch, sheet.itertuples()))
    return sheet


def extract_both(config: dict, work: Path, sheet: pd.DataFrame, rounds: int, threads: int) -> pd.DataFrame:
    """Features of every slide in fp32 and bf16 (interleaved); per slide and precision the best time."""
    import torch

    from wsimil.datasets.sheet import resolve
    from wsimil.features.extract import extract_slide
    from wsimil.features.extractors import build_extractor

    cfg = config["features"]
    torch.set_num_threads(threads)
    ext = build_extractor(cfg["extractor"], weights=cfg["weights"], device=cfg["device"], input_size=cfg["input_size"])
    sheet_path = work / "data" / "slides.csv"

    def run(sid: str, path: str, prec: str, out: Path) -> dict:
        return extract_slide(resolve(sheet_path, path), work / "patches" / f"{sid}.h5", out, ext,
                             batch_size=cfg["batch_size"], slide_id=sid, num_workers=cfg["num_workers"],
                             dtype=cfg["dtype"], precision=prec, progress=False)

    first = sheet.iloc[0]
    for prec in PRECISIONS:  # warm-up: oneDNN builds its kernels for the batch shapes once per precision
        run(first.slide_id, first.path, prec, work / "warmup" / f"{prec}.h5")
    rows = []
    for r in range(rounds):
        for s in sheet.itertuples():
            for prec in PRECISIONS if (r + s.Index) % 2 == 0 else PRECISIONS[::-1]:
                out = work / "features" / prec / f"{s.slide_id}.h5"
                summary = run(s.slide_id, s.path, prec, out)
                assert summary["precision"] == prec
                rows.append({"round": r, "slide_id": s.slide_id, "precision": prec, "n_patches": summary["n_patches"],
                             "seconds": summary["seconds"]})
        print(f"round {r + 1}/{rounds} extracted", flush=True)
    return pd.DataFrame(rows)


def cosine_stats(work: Path, sheet: pd.DataFrame) -> dict:
    from wsimil.features.store import read_features

    cos, rel = [], []
    for sid in sheet["slide_id"]:
        a = read_features(work / "features" / "fp32" / f"{sid}.h5").features.astype(np.float64)
        b = read_features(work / "features" / "bf16" / f"{sid}.h5").features.astype(np.float64)
        na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        cos.append((a * b).sum(1) / (na * nb))
        rel.append(np.linalg.norm(a - b, axis=1) / na)
    cos, rel = np.concatenate(cos), np.concatenate(rel)
    return {"n_tiles": len(cos), "cos_mean": cos.mean(), "cos_p1": np.percentile(cos, 1), "cos_min": cos.min(),
            "rel_l2_mean": rel.mean(), "rel_l2_max": rel.max()}


def train_and_evaluate(config: dict, work: Path, prec: str) -> list[dict]:
    """`wsimil train` + `wsimil evaluate` on one feature set, as the standard cell of the workflow."""
    from wsimil.experiments import Cell, cell_overrides

    tr, ev = config["training"], config["evaluation"]
    methods = list(tr["methods"])
    cell = Cell(name="standard", experiment="standard", features="clean", sheet="main", methods=tuple(methods))
    overrides = {m: cell_overrides(config, cell, m) for m in methods}
    runs = work / "runs" / prec
    feats, sheet = work / "features" / prec, work / "data" / "slides.csv"
    t = time.perf_counter()
    wsimil("train", "--features", str(feats), "--slides", str(sheet), "--method", *methods,
           "--seed", *map(str, tr["seeds"]), "--out", str(runs / "{method}" / "seed{seed}"),
           "--overrides-per-method", json.dumps(overrides, sort_keys=True), "--experiment", f"features_{prec}",
           "--device", tr["device"], "--precision", tr["precision"], "--threads", str(tr["threads"]), "--no-progress")
    dirs = [runs / m / f"seed{s}" for m in methods for s in tr["seeds"]]
    wsimil("evaluate", *map(str, dirs), "--features", str(feats), "--sheet", str(sheet),
           "--threshold", str(ev["threshold"]), "--patch-positive-fraction", str(ev["patch_positive_fraction"]))
    print(f"{prec} features: trained and evaluated {len(dirs)} runs in {time.perf_counter() - t:.0f} s", flush=True)
    rows = []
    for m in methods:
        for s in tr["seeds"]:
            met = json.loads((runs / m / f"seed{s}" / "metrics.json").read_text())
            rows.append({"kind": "auc", "features": prec, "method": m, "seed": s, "test_auc": met["slide_auc"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "config.yaml")
    ap.add_argument("--work", type=Path, default=Path("/tmp/wsimil-prec"), help="scratch folder (not results/)")
    ap.add_argument("--rounds", type=int, default=1, help="extraction rounds (best per slide and precision)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for extraction")
    ap.add_argument("--jobs", type=int, default=2, help="parallel synth/patch processes and training jobs")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "extraction_precision.csv")
    args = ap.parse_args()
    if ROOT / "results" in [args.work, *args.work.resolve().parents]:
        raise SystemExit("--work must not be under results/")

    from wsimil.config import load_config

    config = load_config(args.config)
    args.work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    sheet = make_slides(config, args.work, args.jobs)
    print(f"{len(sheet)} slides and patch files in {time.perf_counter() - t:.0f} s", flush=True)

    times = extract_both(config, args.work, sheet, args.rounds, args.threads)
    best = times.groupby(["slide_id", "precision"]).agg(n=("n_patches", "first"), s=("seconds", "min")).reset_index()
    speed = best.groupby("precision").agg(n=("n", "sum"), s=("s", "sum"))
    speed["tiles_per_s"] = speed["n"] / speed["s"]
    cos = cosine_stats(args.work, sheet)
    print(speed.to_string(), "\n", cos, flush=True)

    with ThreadPoolExecutor(min(args.jobs, 2)) as pool:
        aucs = [r for rows in pool.map(lambda p: train_and_evaluate(config, args.work, p), PRECISIONS) for r in rows]

    rows = [{"kind": "speed", "features": p, "tiles": int(speed.loc[p, "n"]), "seconds": speed.loc[p, "s"],
             "tiles_per_s": speed.loc[p, "tiles_per_s"]} for p in PRECISIONS]
    rows.append({"kind": "cosine", "features": "bf16_vs_fp32", **cos})
    df = pd.DataFrame(rows + aucs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False, float_format="%.6g")

    auc = pd.DataFrame(aucs)
    table = auc.pivot_table(index="method", columns="features", values="test_auc", aggfunc=["mean", "std"])
    table.columns = [f"{p} {stat}" for stat, p in table.columns]
    table = table[[f"{p} {s}" for p in PRECISIONS for s in ("mean", "std")]]
    table["bf16 - fp32"] = table["bf16 mean"] - table["fp32 mean"]
    per_seed = auc.pivot_table(index=["method", "seed"], columns="features", values="test_auc")
    same = int((per_seed["bf16"] == per_seed["fp32"]).sum())
    fcfg, tcfg = config["features"], config["training"]
    md = [
        f"Slides of `{args.config.name}`: {len(sheet)} slides, {cos['n_tiles']} tiles; {fcfg['extractor']}, batch "
        f"{fcfg['batch_size']}, {fcfg['num_workers']} reader workers, {args.threads} threads, stored as "
        f"{fcfg['dtype']}; {cpu_name()}, {os.cpu_count()} CPUs, torch {torch_version()}.",
        "",
        "| features | tiles | seconds | tiles/s |",
        "|---|---:|---:|---:|",
        *[f"| {p} | {int(speed.loc[p, 'n'])} | {speed.loc[p, 's']:.1f} | {speed.loc[p, 'tiles_per_s']:.1f} |"
          for p in PRECISIONS],
        "",
        f"bf16 / fp32 speed: {speed.loc['bf16', 'tiles_per_s'] / speed.loc['fp32', 'tiles_per_s']:.2f}x",
        "",
        "| per-tile cosine (bf16 vs fp32) | mean | 1st percentile | min | rel. L2 error mean | max |",
        "|---|---:|---:|---:|---:|---:|",
        f"| {cos['n_tiles']} tiles | {cos['cos_mean']:.5f} | {cos['cos_p1']:.5f} | {cos['cos_min']:.5f} | "
        f"{cos['rel_l2_mean']:.4f} | {cos['rel_l2_max']:.4f} |",
        "",
        f"Slide test AUC, training `{tcfg['precision']}`, max_epochs {tcfg['max_epochs']}, seeds "
        f"{', '.join(map(str, tcfg['seeds']))}, mean and std over seeds:",
        "",
        table.reset_index().to_markdown(index=False, floatfmt=".3f"),
        "",
        f"Runs with the same test AUC on both feature sets (same method and seed): {same} of {len(per_seed)}.",
        "",
        per_seed.reset_index().to_markdown(index=False, floatfmt=".3f"),
    ]
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
