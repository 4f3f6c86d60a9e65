"""What planning a cohort costs: `snakemake -n` on a sheet of N slides, its jobs, CPU seconds and peak memory.

Every `snakemake` call (a dry run, a rerun after a failed job, `--report`) builds the job graph before doing
anything, so this cost is paid on every call. The goal: a 10,000-slide sheet plans in <= 60 s of CPU and <= 2 GB,
and the cost grows no faster than the number of jobs.

    python benchmarks/planning.py --slides 100 1000 10000
    python benchmarks/planning.py --slides 1000 --cluster     # with the SLURM profile's grouping switched on
    python benchmarks/planning.py --slides 10000 --slides-per-job 10   # patching and extraction jobs of 10 slides

The sheet holds N dummy slides (empty files: planning reads the sheet, never a slide) in the real-data overlay
configs/slides.yaml (one slide per patching and extraction job, every method, five seeds). ``--cluster`` adds
the grouping of profiles/slurm (its ``groups`` and ``group-components``), as a SLURM run plans it. Time and
memory are those of the snakemake process (GNU time's user + system seconds and maximum resident set), one run
per size.
"""

from __future__ import annotations

import argparse
import csv
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
GNU_TIME = Path("/usr/bin/time") if Path("/usr/bin/time").is_file() else None  # GNU time: the child's peak RSS


def write_sheet(folder: Path, n: int) -> Path:
    """A sheet of ``n`` slides (half tumour; 60/20/20 train/val/test; four centres) and their empty files."""
    (folder / "slides").mkdir(parents=True, exist_ok=True)
    sheet = folder / "slides.csv"
    with sheet.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slide_id", "label", "split", "center", "path", "annotation"])
        for i in range(n):
            sid = f"slide_{i:05d}"
            (folder / "slides" / f"{sid}.tif").touch()
            split = "train" if i % 10 < 6 else "val" if i % 10 < 8 else "test"
            w.writerow([sid, i % 2, split, i % 4, f"slides/{sid}.tif", ""])
    return sheet


def plan(n: int, cluster: bool, per_job: int = 1) -> dict[str, float]:
    """Dry-run the workflow on ``n`` dummy slides; jobs, CPU seconds and peak MB of the snakemake process.
    ``per_job``: slides per patching and extraction job (``slides_per_job``; 1 = a rule per stage, more = a rule
    generated per slide group)."""
    with tempfile.TemporaryDirectory(prefix="wsimil-plan-") as tmp:
        work = Path(tmp)
        sheet = write_sheet(work / "data", n)
        overlay = work / "sheet.yaml"
        overlay.write_text(f"dataset:\n  sheet: {sheet}\npatching:\n  slides_per_job: {per_job}\n"
                           f"features:\n  slides_per_job: {per_job}\n")
        shutil.copy(ROOT / "config.yaml", work / "config.yaml")
        cmd = [sys.executable, "-m", "snakemake", "-n", "--cores", "16", "--snakefile", str(ROOT / "Snakefile"),
               "--directory", str(work), "--configfile", str(ROOT / "configs" / "slides.yaml"), str(overlay)]
        if cluster:
            profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
            cmd += ["--groups", *(f"{r}={g}" for r, g in profile["groups"].items()),
                    "--group-components", *(f"{g}={n}" for g, n in profile["group-components"].items())]
        if not GNU_TIME:
            raise SystemExit("GNU time (/usr/bin/time) is needed to measure the snakemake process")
        proc = subprocess.run([str(GNU_TIME), "-f", "WSIMIL_TIME %U %S %M", *cmd], capture_output=True, text=True,
                              cwd=work)
        out = proc.stdout + proc.stderr
        if proc.returncode != 0:
            raise SystemExit(f"snakemake -n failed for {n} slides:\n{out[-3000:]}")
        user, system, kb = re.search(r"WSIMIL_TIME (\S+) (\S+) (\d+)", out).groups()
        jobs = re.search(r"^total\s+(\d+)", out, re.M)
        return {"slides": n, "jobs": int(jobs.group(1)) if jobs else -1, "cpu_s": float(user) + float(system),
                "peak_mb": int(kb) / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slides", type=int, nargs="+", default=[100, 1000, 10000])
    ap.add_argument("--cluster", action="store_true", help="with the SLURM profile's job grouping")
    ap.add_argument("--slides-per-job", type=int, default=1, help="slides per patching and extraction job")
    args = ap.parse_args()
    print("| slides | jobs | CPU to plan (s) | CPU per 1,000 jobs (s) | peak memory (MB) |")
    print("|---:|---:|---:|---:|---:|")
    for n in args.slides:
        r = plan(n, args.cluster, args.slides_per_job)
        print(f"| {r['slides']:,} | {r['jobs']:,} | {r['cpu_s']:.1f} | {1000 * r['cpu_s'] / max(r['jobs'], 1):.2f} "
              f"| {r['peak_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
