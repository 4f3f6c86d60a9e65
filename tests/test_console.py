"""The console of a run: the logger plugin's lines (src/snakemake_logger_plugin_wsimil) fed the log records
Snakemake emits, its time left on a replay of a real run, and the verdicts a successful run ends with."""

import csv
import io
import logging
from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
from snakemake_interface_logger_plugins.common import LogEvent

from snakemake_logger_plugin_wsimil import (PRIOR_SECONDS, LogHandler, benchmark_seconds, describe, estimate_left,
                                            results_dir_of)
from wsimil.reporting.console import print_verdicts, verdict_lines

DATA = Path(__file__).parent / "data"


# -- the handler, fed synthetic records


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(msg=None, level=logging.INFO, **extra) -> logging.LogRecord:
    """A log record as Snakemake emits it: the message, and the event and its fields as attributes."""
    rec = logging.LogRecord("snakemake.logging", level, __file__, 0, msg, None, None)
    rec.__dict__.update(extra)
    return rec


def handler(dryrun: bool = False) -> tuple[LogHandler, io.StringIO, Clock]:
    clock = Clock()
    h = LogHandler(SimpleNamespace(dryrun=dryrun, quiet=None, verbose=False), None)
    h.clock, h.progress.t0, h.stream = clock, 0.0, io.StringIO()
    return h, h.stream, clock


def train_job(jobid: int, cell: str, method: str, root: str = "results/ci") -> logging.LogRecord:
    return record(f" Rule: train, Jobid: {jobid}", event=LogEvent.JOB_INFO, jobid=jobid, rule_name="train",
                  wildcards={"cell": cell, "method": method}, threads=1,
                  output=[f"{root}/runs/{cell}/{method}/seed{s}/{f}" for s in (0, 1, 2) for f in ("model.pt", "run.json")],
                  log=[f"{root}/logs/train/{cell}/{method}.log"], benchmark=f"{root}/benchmarks/train/{cell}/{method}.tsv")


def synth_job(jobid: int) -> logging.LogRecord:
    slides = [f"test_{i:03d}" for i in range(77, 97)]
    return record(" Rule: synth_test_077_and_19", event=LogEvent.JOB_INFO, jobid=jobid, rule_name="synth_test_077_and_19",
                  wildcards={}, threads=1, log=["results/ci/logs/synth/test_077_and_19.log"],
                  output=[f"results/ci/data/annotations/{s}.xml" for s in slides[3:5]]
                  + [f"results/ci/data/slides/{s}.tif" for s in slides])


def test_one_line_per_job_says_what_it_ran():
    h, out, clock = handler()
    h.emit(record("Provided cores: 2", event=LogEvent.RESOURCES_INFO, cores=2))
    h.emit(record("Job stats: ...", event=LogEvent.RUN_INFO,
                  stats={"synth_test_077_and_19": 1, "train": 2, "all": 1, "total": 4}))
    h.emit(synth_job(7))
    h.emit(train_job(3, "standard", "abmil"))
    clock.now = 9.0
    h.emit(record("Finished jobid: 7", event=LogEvent.JOB_FINISHED, job_id=7))
    h.emit(record(None, event=LogEvent.PROGRESS, done=1, total=4))
    clock.now = 30.0
    h.emit(train_job(4, "dose_s0.1_f0.5", "maxpool"))
    clock.now = 50.0
    h.emit(record("Finished jobid: 3", event=LogEvent.JOB_FINISHED, job_id=3))
    h.emit(record(None, event=LogEvent.PROGRESS, done=2, total=4))
    lines = out.getvalue().splitlines()
    assert lines[0] == "wsimil: 4 jobs to run (train 2, synth 1, all 1)"
    # after the first job most of the work left rests on the embedded prior alone: no number yet
    assert lines[1] == "[1/4  25%] 9s elapsed, estimating… | synth    20 slides: test_077 … (+19) (9s)"
    # train: (50 s + 3 x 30 s prior) / 4 = 35 s a job; the one running for 20 s has 15 s left
    assert lines[2] == "[2/4  50%] 50s elapsed, ~15s left | train    standard · abmil · seeds 0–2 (50s)"


def test_the_time_left_uses_the_cores_snakemake_was_given_and_the_earlier_benchmarks(tmp_path):
    results = tmp_path / "results" / "ci"
    for cell, method, s in (("standard", "abmil", 100.0), ("standard", "maxpool", 60.0)):
        (results / "benchmarks" / "train" / cell).mkdir(parents=True, exist_ok=True)
        (results / "benchmarks" / "train" / cell / f"{method}.tsv").write_text(f"s\th:m:s\tmax_rss\n{s}\t0:01:00\t900\n")
    h, out, clock = handler()
    h.emit(record("Provided cores: 1", event=LogEvent.RESOURCES_INFO, cores=1))
    h.emit(record("Job stats: ...", event=LogEvent.RUN_INFO, stats={"train": 4, "total": 4}))
    h.emit(train_job(1, "standard", "abmil", root=str(results)))
    assert h.progress.reference == {"train": 80.0} and h.results == results
    clock.now = 50.0
    h.emit(record("Finished jobid: 1", event=LogEvent.JOB_FINISHED, job_id=1))
    h.emit(record(None, event=LogEvent.PROGRESS, done=1, total=4))
    # (50 + 3 x 80) / 4 = 72.5 s a job, 3 jobs left one after another: 217.5 s, shown to 10 s
    assert out.getvalue().splitlines()[-1] == ("[1/4  25%] 50s elapsed, ~3m40s left | train    standard · abmil · "
                                               "seeds 0–2 (50s)")


def test_the_last_job_closes_the_run_and_a_failed_job_is_shown_in_full(tmp_path):
    log = tmp_path / "results" / "ci" / "logs" / "train" / "standard" / "abmil.log"
    log.parent.mkdir(parents=True)
    log.write_text("epoch 1\nRuntimeError: out of memory\n")
    h, out, clock = handler()
    h.emit(record("Job stats: ...", event=LogEvent.RUN_INFO, stats={"train": 1, "total": 1}))
    h.emit(train_job(5, "standard", "abmil", root=str(tmp_path / "results" / "ci")))
    clock.now = 61.0
    h.emit(record("Error in rule train, jobid: 5", level=logging.ERROR, event=LogEvent.JOB_ERROR, rule_name="train",
                  jobid=5, log=[str(log)], aux={}, shellcmd="wsimil train   --method abmil"))
    lines = out.getvalue().splitlines()
    assert lines[1] == "ERROR in rule train (job 5): train standard · abmil · seeds 0–2"
    assert lines[2:] == [f"  log: {log}", "    | epoch 1", "    | RuntimeError: out of memory",
                         "  command: wsimil train --method abmil"]
    h2, out2, clock2 = handler()
    h2.emit(record("Job stats: ...", event=LogEvent.RUN_INFO, stats={"all": 1, "total": 1}))
    clock2.now = 75.0
    h2.emit(record(" Rule: all", event=LogEvent.JOB_INFO, jobid=0, rule_name="all", wildcards={}, output=[], log=[]))
    h2.emit(record("Finished jobid: 0", event=LogEvent.JOB_FINISHED, job_id=0))
    h2.emit(record(None, event=LogEvent.PROGRESS, done=1, total=1))
    assert out2.getvalue().splitlines()[1:] == ["[1/1 100%] 1m15s elapsed | all (0s)", "wsimil: all 1 jobs done in 1m15s"]


def test_a_dry_run_lists_every_planned_job_once():
    h, out, _ = handler(dryrun=True)
    stats = {"synth_test_077_and_19": 1, "train": 1, "total": 2}
    h.emit(record("Job stats: ...", event=LogEvent.RUN_INFO, stats=stats))
    h.emit(synth_job(1))
    h.emit(train_job(2, "poison", "maxpool"))
    h.emit(record("Job stats: ...", event=LogEvent.RUN_INFO, stats=stats))  # a dry run reports its stats twice
    h.emit(record("This was a dry-run (flag -n). The order of jobs does not reflect the order of execution."))
    assert out.getvalue().splitlines() == [
        "wsimil: 2 jobs to run (synth 1, train 1)", "  synth    20 slides: test_077 … (+19)",
        "  train    poison · maxpool · seeds 0–2",
        "This was a dry-run (flag -n). The order of jobs does not reflect the order of execution."]


@pytest.mark.parametrize("rule, wildcards, output, line", [
    ("poison_normal_021_and_18", {},
     [f"r/features/p/e/poison_s{s}_f0.5_seed0/normal_{i:03d}.h5" for s in (0.1, 0.5) for i in range(21, 40)],
     "poison   2 poison levels · 19 slides: normal_021 … (+18)"),
    ("poison_normal_021", {}, ["r/features/p/e/poison_s0.1_f0.5_seed0/normal_021.h5"],
     "poison   strength 0.1, fraction 0.5 · slide normal_021"),
    ("poison_extract", {"slide": "test_001"}, [f"r/f/poison_s{s}_f1_seed0/test_001.h5" for s in (0.5, 1, 2)],
     "poison   extract · 3 poison levels · slide test_001"),
    ("extract", {"slide": "tumor_001"}, ["r/features/p/e/clean/tumor_001.h5"], "extract  slide tumor_001"),
    ("patch_normal_001", {}, ["r/patches/p/normal_001.h5", "r/patches/p/qc/normal_001.png"], "patch    slide normal_001"),
    ("evaluate", {"cell": "ood", "method": "dsmil"}, ["r/runs/ood/dsmil/seed0/metrics.json", "r/runs/ood/dsmil/seed2/metrics.json"],
     "evaluate ood · dsmil · seeds 0, 2"),
    ("score", {"cell": "ood", "method": "abmil"}, ["r/runs/ood/abmil/seed1/model.pt"], "score    ood · abmil · seed 1"),
    ("geojson", {"cell": "standard", "method": "maxpool"}, ["r/geojson/standard/maxpool/seed0"],
     "geojson  standard · maxpool · seed 0"),
    ("focusmil_sensitivity_run", {"problem": "toy", "seed": "1"}, ["r/studies/focusmil_sensitivity/toy_seed1.csv"],
     "focusmil sensitivity_run · problem toy · seed 1"),
    ("report_dtfd_ablation", {}, ["r/tables/dtfd_ablation.csv"], "report   dtfd_ablation"),
    ("synth_sheet", {}, ["r/data/slides.csv"], "synth    sheet"),
    ("all", {}, [], "all"),
    ("my_rule", {"batch": "3"}, ["x.txt (temp)"], "my       rule · batch 3"),  # an unknown rule and wildcard
])
def test_describe_reads_rules_wildcards_and_outputs(rule, wildcards, output, line):
    assert describe(rule, wildcards, output) == line


def test_results_dir_and_benchmarks_of_an_earlier_run(tmp_path):
    assert results_dir_of(["", "results/mini-camelyon/logs/synth/a.log"]) == Path("results/mini-camelyon")
    assert results_dir_of(["results/x/benchmarks/train/standard/abmil.tsv"]) == Path("results/x")
    assert results_dir_of(["logs/a.log", "out.txt"]) is None
    bench = tmp_path / "benchmarks"
    for rel, s in (("synth/a.tsv", "8.0"), ("synth/b.tsv", "12.0"), ("focusmil_sensitivity/toy_seed0.tsv", "60"),
                   ("extract/bad.tsv", "not a number")):
        (bench / rel).parent.mkdir(parents=True, exist_ok=True)
        (bench / rel).write_text(f"s\th:m:s\n{s}\t0:00:10\n")
    (bench / "extract" / "empty.tsv").write_text("")
    assert benchmark_seconds(tmp_path) == {"synth": 10.0, "focusmil": 60.0}
    assert benchmark_seconds(tmp_path / "none") == {}


# -- the time left


def test_estimate_left_on_a_synthetic_run():
    planned = {"a": 4, "b": 2}
    prior = {"a": 10.0, "b": 100.0}
    assert estimate_left(planned, {}, [("a", 5.0)], 2, prior=prior) is None  # nothing finished yet
    # a: (10 + 10 + 3 x 10) / 5 = 10 s, 2 left; b: the prior alone is most of the work left: a guess
    assert estimate_left(planned, {"a": [10.0, 10.0]}, [], 2, prior=prior) is None
    # ... unless an earlier run measured b
    assert estimate_left(planned, {"a": [10.0, 10.0]}, [], 2, reference={"b": 100.0}, prior=prior) == 110.0
    assert estimate_left(planned, {"a": [10.0, 10.0]}, [], 1, reference={"b": 100.0}, prior=prior) == 220.0
    # never less than the longest single job left: 80 s of a and one b of 100 s on 8 cores
    assert estimate_left({"a": 12, "b": 1}, {"a": [10.0] * 4}, [], 8, reference={"b": 100.0}, prior=prior) == 100.0
    # a running job past its stage's mean needs half as long again as it has run
    assert estimate_left({"a": 2}, {"a": [10.0]}, [("a", 40.0)], 2, prior=prior) == 20.0
    # two threads a job on two cores: one job at a time
    assert estimate_left({"a": 3}, {"a": [10.0]}, [], 2, prior=prior, threads={"a": 2}) == 20.0


def replay(rows, cores=2, **kwargs) -> list[tuple[int, float, float, float | None]]:
    """At each job's end: (jobs done, time, true time left, estimate) from the jobs started and finished by then."""
    planned = Counter(stage for stage, _, _ in rows)
    end = max(e for _, _, e in rows)
    out = []
    for t in sorted(e for _, _, e in rows):
        finished, running = defaultdict(list), []
        for stage, s, e in rows:
            if e <= t:
                finished[stage].append(e - s)
            elif s <= t:
                running.append((stage, t - s))
        out.append((sum(map(len, finished.values())), t, end - t, estimate_left(planned, finished, running, cores, **kwargs)))
    return out


@pytest.fixture(scope="module")
def reproduce_jobs() -> list[tuple[str, float, float]]:
    with (DATA / "reproduce_jobs.csv").open() as f:
        rows = csv.DictReader(line for line in f if not line.startswith("#"))
        return [(r["stage"], float(r["start_s"]), float(r["end_s"])) for r in rows]


def test_the_time_left_stays_sane_on_a_replay_of_a_real_run(reproduce_jobs):
    """`make reproduce` on 2 cores, 155 jobs in 1220 s: no number while it would be a guess, then within a factor
    of 1.5 of the truth from 16 % to 95 % of the jobs, and never a jump of more than 1.5x from one job to the next
    (the old estimate said 1h58m after the first job, 18 min after the twentieth)."""
    steps = replay(reproduce_jobs)
    assert len(steps) == 155 and steps[-1][1] == 1220
    assert steps[0][3] is None  # nothing but the embedded prior after the first one-second job
    shown = [(n, est, true) for n, _, true, est in steps if 25 <= n <= 147]
    assert all(est is not None for _, est, _ in shown)
    ratios = [est / true for _, est, true in shown]
    assert 0.5 <= min(ratios) and max(ratios) <= 1.5, [(n, round(est / true, 2)) for n, est, true in shown]
    assert all(max(a / b, b / a) <= 1.5 for (_, a, _), (_, b, _) in zip(shown, shown[1:]))
    # on 1 core the same work takes about twice as long
    one_core = replay(reproduce_jobs, cores=1)
    assert all(1.6 <= a[3] / b[3] <= 2.0 for a, b in zip(one_core[25:120], steps[25:120]))


def test_an_earlier_runs_benchmarks_give_a_time_left_from_the_first_job(reproduce_jobs):
    durations = defaultdict(list)
    for stage, s, e in reproduce_jobs:
        durations[stage].append(e - s)
    reference = {stage: sum(d) / len(d) for stage, d in durations.items()}  # what its benchmark records say
    n, _, true, est = replay(reproduce_jobs, reference=reference)[0]
    assert n == 1 and 0.85 <= est / true <= 1.15
    assert set(reference) <= set(PRIOR_SECONDS)  # every stage of the default has an embedded prior


# -- the verdicts a successful run ends with


CLAIMS = ("claim,statement,contrast,estimate,ci_low,ci_high,margin,claimed_sign,verdict,rule\n"
          "patch,max-pooling localises tumour patches better,x,0.0939,0.0811,0.1070,0.05,positive,supported,r\n"
          "ood,'-robust to an unseen hospital,x,-0.016,-0.05,0.02,0.05,positive,inconclusive,r\n")


def test_verdict_lines_show_each_claim_with_its_interval(tmp_path):
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "claims.csv").write_text(CLAIMS)
    (tmp_path / "SUMMARY.md").write_text("# Summary\n")
    assert verdict_lines(tmp_path) == [
        f"wsimil: 2 claims, each with its verdict and the estimate's 95% interval ({tmp_path}/tables/claims.csv):",
        "  patch  supported     +0.094 [+0.081, +0.107]  max-pooling localises tumour patches better",
        "  ood    inconclusive  -0.016 [-0.050, +0.020]  -robust to an unseen hospital",  # spreadsheet quote undone
        f"wsimil: summary: {tmp_path}/SUMMARY.md",
        "wsimil: HTML report: `make report` writes results/report.html (or `snakemake --report results/report.html`); "
        "open it in a browser"]


@pytest.mark.parametrize("content, says", [
    (None, "tables/claims.csv is missing"),
    ("", "tables/claims.csv is empty"),
    ("claim,statement,verdict\npatch,x,supported\n", "lacks the column(s) estimate, ci_low, ci_high"),
    ("claim,statement,estimate,ci_low,ci_high,verdict\n", "lists no claim"),
])
def test_verdict_lines_say_what_is_missing(tmp_path, content, says):
    if content is not None:
        (tmp_path / "tables").mkdir()
        (tmp_path / "tables" / "claims.csv").write_text(content)
    lines = verdict_lines(tmp_path)
    assert lines[0].startswith("wsimil: no verdicts: ") and says in lines[0]
    assert lines[1] == f"wsimil: no summary: {tmp_path}/SUMMARY.md is missing" and len(lines) == 3


def test_a_partial_row_and_a_broken_file_never_raise(tmp_path, capsys):
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "claims.csv").write_text("claim,statement,estimate,ci_low,ci_high,verdict\npatch,half a row\n")
    assert verdict_lines(tmp_path)[1] == "  patch  ?  ? [?, ?]  half a row"
    (tmp_path / "tables" / "claims.csv").write_bytes(b"\xff\xfe\x00not utf-8")
    print_verdicts(tmp_path)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"wsimil: no verdicts: {tmp_path}/tables/claims.csv cannot be read: ") and len(out) == 3


def test_verdict_lines_show_the_claims_not_their_pairs(tmp_path):
    (tmp_path / "tables").mkdir()
    (tmp_path / "tables" / "claims.csv").write_text(
        "claim,level,pair,statement,estimate,ci_low,ci_high,verdict\n"
        "poison,claim,family (2 pairs),attention follows the poison,0.5,0.4,0.6,inconclusive\n"
        "poison,pair,maxpool vs abmil,attention follows the poison,0.9,0.8,1.0,supported\n"
        "poison,pair,maxpool vs dsmil,attention follows the poison,0.1,0.0,0.2,inconclusive\n")
    lines = verdict_lines(tmp_path)
    assert lines[0].startswith("wsimil: 1 claims, each with its verdict") and "poison  inconclusive  +0.500 [+0.400, +0.600]" in lines[1]
    assert not any("supported" in ln for ln in lines)
