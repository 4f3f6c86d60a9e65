"""Wall time per stage of a finished workflow run, from Snakemake's own `benchmark:` files.

    python benchmarks/stage_times.py results/mini-camelyon [--md docs-table.md]

Groups results/<dataset>/benchmarks/<stage>/**.tsv by their first folder (synth, patch, extract, poison,
train, ...): jobs, mean and total wall seconds, peak RSS. Jobs run in parallel, so the totals add up to more
than the run's wall time on several cores. docs/performance.md records it for the embedded default.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def stage_times(results: Path) -> pd.DataFrame:
    rows = []
    for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
        t = pd.read_csv(tsv, sep="\t")
        stage = tsv.relative_to(results / "benchmarks").parts[0]
        rows.append({"stage": stage, "s": float(t["s"].iloc[-1]), "max_rss_mb": float(t["max_rss"].iloc[-1])})
    if not rows:
        raise SystemExit(f"no benchmark files under {results / 'benchmarks'}")
    df = pd.DataFrame(rows)
    out = df.groupby("stage", sort=False).agg(jobs=("s", "size"), mean_s=("s", "mean"), total_s=("s", "sum"),
                                              peak_rss_mb=("max_rss_mb", "max")).reset_index()
    return out.round({"mean_s": 1, "total_s": 0, "peak_rss_mb": 0})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="results/<dataset>")
    ap.add_argument("--md", type=Path, help="also write the table as markdown")
    args = ap.parse_args()
    table = stage_times(args.results)
    print(table.to_string(index=False))
    if args.md:
        args.md.write_text(table.to_markdown(index=False) + "\n")


if __name__ == "__main__":
    main()
