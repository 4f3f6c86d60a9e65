"""A Snakemake logger plugin for wsimil runs: one readable line per finished job, a time left from stage times,
errors in full.

    snakemake --cores 2 --logger wsimil        # what `make reproduce` runs

Snakemake's default console prints every job's input and output lists (thousands of lines, some of 50,000
characters, for a run of a hundred jobs) and counts progress in jobs, not time. This handler prints:

- the planned jobs per stage, once (in a dry run, also one line per planned job);
- per finished job: ``[done/total pct] elapsed, ~left | stage  what (duration)``, what the job did in words from
  its wildcards and outputs (``train    standard · abmil · seeds 0–2``, ``synth    20 slides: test_077 … (+19)``);
- the time left (:func:`estimate_left`) from stage times: the mean duration of the stage's jobs finished in this
  run, before its first one the stage's time in the previous run's ``benchmark:`` records
  (``results/<dataset>/benchmarks/<stage>/**.tsv``) or else the embedded default's, over the cores Snakemake was
  given; ``estimating…`` while most of the work left would rest on the embedded default alone;
- a failed job in full: what it was, rule, log paths, the last lines of each log, the command;
- warnings and errors (each line cut at 500 characters), and a closing line.

Every line stays under 500 characters. Snakemake's own complete log (``.snakemake/log/``) is unchanged. The
claims' verdicts at the end come from the workflow's ``onsuccess:`` handler (wsimil.reporting.console), so that
they also show without this logger.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from snakemake_interface_logger_plugins.base import LogHandlerBase
from snakemake_interface_logger_plugins.common import LogEvent
from snakemake_interface_logger_plugins.settings import LogHandlerSettingsBase

MAX_LINE = 500
LOG_TAIL = 25
STAGE_WIDTH = 8  # "evaluate", "focusmil": the stage column
# Seconds per job of each stage on the embedded default on 2 cores: the stage means of a `make reproduce` from a
# fresh clone (155 jobs, 20 min 20 s of workflow, 2,421 s of job time; "score" jobs are scorings of trained
# models, "run"/"slide"/"ood" the small table and sheet jobs). The time left uses them for a stage before its
# first job has finished when no earlier run left benchmark records.
PRIOR_SECONDS = {"synth": 8.0, "patch": 1.5, "extract": 16.0, "poison": 10.0, "train": 30.0, "score": 8.0,
                 "evaluate": 5.0, "geojson": 3.0, "report": 7.0, "focusmil": 128.0, "milunit": 1.0, "run": 4.0,
                 "slide": 2.0, "ood": 1.0, "all": 0.0}
# A stage's earlier time (benchmark or prior) weighs as much as this many of its jobs finished in this run: the
# first, often cheapest, jobs of a stage (the MIL unit test's training, the toy study) do not swing the estimate.
PRIOR_WEIGHT = 3
# A job running past its stage's mean is assumed to need half as long again as it has run (a heavy tail: the
# FocusMIL study's slide problem takes four times its toy problem).
OVERRUN = 0.5
# The time left is shown once no more than this share of the work left rests on the embedded default alone.
GUESS_SHARE = 0.5

# How a wildcard reads on the console; an unknown one reads "<name> <value>".
WILDCARD_WORDS = {"cell": "{}", "method": "{}", "seed": "seed {}", "problem": "problem {}", "slide": "slide {}",
                  "tag": "{}", "rel": "{}"}
# The stages whose grouped jobs are named after their first slide (rules/common.smk, group_name): their line
# shows the slides of the job's outputs instead.
SLIDE_STAGES = ("synth", "patch", "extract", "poison", "import")
_SLIDE_SUFFIXES = (".tif", ".tiff", ".svs", ".h5")
_POISON_TAG = re.compile(r"poison_s([0-9.e+-]+)_f([0-9.e+-]+)_seed(\d+)")
_SEED_DIR = re.compile(r"(?:^|/)seed(\d+)(?:/|$)")
_QUIET_INFO = ("Select jobs to execute", "Execute ", "Building DAG", "Using shell", "Provided cores",
               "Rules claiming", "Assuming unrestricted", "Job stats", "Finished jobid", "Checking", "Waiting at most",
               "Nothing to be done", "Using profile", "host:", "Provided resources", "Singularity", "Conda",
               "Group jobs: inactive")


def stage_of(rule: str) -> str:
    """A rule's stage: its name up to the first underscore (``focusmil_sensitivity_run`` -> ``focusmil``)."""
    return rule.split("_", 1)[0]


def _cut(line: str) -> str:
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 30] + f" ... ({len(line)} characters)"


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _time_left(seconds: float) -> str:
    """A time left as precise as it can be: minutes above ten minutes, ten seconds above one."""
    if seconds >= 600:
        return _duration(round(seconds / 60) * 60).removesuffix("00s")
    return _duration(round(seconds / 10) * 10) if seconds >= 60 else f"{max(5, round(seconds / 5) * 5)}s"


# -- what a job does, in words


def _sanitized(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _poison_level(tag: str) -> str:
    """``poison_s0.1_f0.5_seed0`` -> ``strength 0.1, fraction 0.5``; any other value unchanged."""
    m = _POISON_TAG.fullmatch(tag)
    return f"strength {m.group(1)}, fraction {m.group(2)}" if m else tag


def _levels(output: Sequence[str]) -> list[str]:
    """The poison level of a job's outputs in words, or how many levels they span (a poison job writes every
    level of its slides)."""
    levels = list(dict.fromkeys(m.group(0) for o in output if (m := _POISON_TAG.search(o))))
    if not levels:
        return []
    return [_poison_level(levels[0])] if len(levels) == 1 else [f"{len(levels)} poison levels"]


def _seeds(seeds: Sequence[int]) -> str:
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    if len(seeds) > 2 and list(seeds) == list(range(seeds[0], seeds[-1] + 1)):
        return f"seeds {seeds[0]}–{seeds[-1]}"
    return "seeds " + ", ".join(map(str, seeds))


def _slides(ids: Sequence[str]) -> str:
    return f"slide {ids[0]}" if len(ids) == 1 else f"{len(ids)} slides: {ids[0]} … (+{len(ids) - 1})"


def describe(rule: str, wildcards: Optional[Mapping[str, Any]] = None, output: Iterable[Any] = ()) -> str:
    """What a job does, in words: its stage, then what the rule name adds, its wildcards, the poison level, slides
    and seeds of its outputs (``train    standard · abmil · seeds 0–2``)."""
    stage = stage_of(rule)
    wildcards = dict(wildcards or {})
    output = [str(o).split(" (")[0] for o in output or ()]  # Snakemake appends flags: "x.h5 (temp)"
    rest = rule
    parts: list[str] = []
    for name, value in wildcards.items():
        parts.append(WILDCARD_WORDS.get(name, name + " {}").format(_poison_level(str(value))))
    if stage in SLIDE_STAGES and "slide" not in wildcards:
        ids = list(dict.fromkeys(Path(o).stem for o in output if o.endswith(_SLIDE_SUFFIXES)))
        if ids:
            group = _sanitized(ids[0]) + (f"_and_{len(ids) - 1}" if len(ids) > 1 else "")
            rest = rest.removesuffix("_" + group)
            parts += _levels(output) if "tag" not in wildcards else []
            parts.append(_slides(ids))
    elif stage == "poison" and "tag" not in wildcards:
        parts = _levels(output) + parts
    if "seed" not in wildcards:
        seeds = sorted({int(m.group(1)) for o in output if (m := _SEED_DIR.search(o))})
        if seeds:
            parts.append(_seeds(seeds))
    what = rest.removeprefix(stage).strip("_")
    head = f"{stage:<{STAGE_WIDTH}} {what}" if what else f"{stage:<{STAGE_WIDTH}}"
    return " · ".join([head] + parts) if what else f"{head} {' · '.join(parts)}".rstrip()


# -- the time left


def benchmark_seconds(results_dir: str | os.PathLike) -> dict[str, float]:
    """Seconds per job of each stage in an earlier run: the mean ``s`` of the ``benchmark:`` records under
    ``<results_dir>/benchmarks/<stage folder>/``; {} when there are none. The scorings of trained models share
    ``train/`` with the trainings (one benchmark path per cell and method) and count as training."""
    times: dict[str, list[float]] = defaultdict(list)
    root = Path(results_dir) / "benchmarks"
    for tsv in sorted(root.rglob("*.tsv")) if root.is_dir() else ():
        try:
            with tsv.open(newline="") as f:
                rows = list(csv.DictReader(f, delimiter="\t"))
            seconds = float(rows[-1]["s"])
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            continue  # a half-written or foreign file: no reference for it
        times[stage_of(tsv.relative_to(root).parts[0])].append(seconds)
    return {stage: sum(v) / len(v) for stage, v in times.items()}


def estimate_left(planned: Mapping[str, int], finished: Mapping[str, Sequence[float]],
                  running: Sequence[tuple[str, float]], cores: int,
                  reference: Optional[Mapping[str, float]] = None,
                  prior: Mapping[str, float] = PRIOR_SECONDS,
                  threads: Optional[Mapping[str, int]] = None) -> Optional[float]:
    """Seconds of wall time left, or None while the estimate would be a guess.

    ``planned``: the run's jobs per stage; ``finished``: the durations of its finished jobs per stage;
    ``running``: (stage, seconds it has run) of each running job; ``cores``: the jobs Snakemake may run at once;
    ``reference``: seconds per job per stage in an earlier run (:func:`benchmark_seconds`); ``prior``: the
    embedded default's; ``threads``: threads per job of a stage (1 otherwise).

    A stage's time per job is the mean of its finished jobs, weighed with its earlier time (the reference, else
    the prior) as :data:`PRIOR_WEIGHT` jobs; a stage with neither takes the mean of every finished job. The work
    left (core-seconds) over ``cores``, at most as many as the jobs left, and never less than the longest single
    job left. None before any job has finished and while more than :data:`GUESS_SHARE` of that work rests only on
    the embedded prior or the run-wide mean.
    """
    reference, threads = reference or {}, threads or {}
    done = [d for ds in finished.values() for d in ds]
    if not done or not planned:
        return None
    per: dict[str, float] = {}
    guessed: set[str] = set()
    for stage in set(planned) | {s for s, _ in running}:
        ds = finished.get(stage, ())
        base = reference.get(stage, prior.get(stage))
        if base is None:
            per[stage] = sum(ds) / len(ds) if ds else sum(done) / len(done)
        else:
            per[stage] = (sum(ds) + PRIOR_WEIGHT * base) / (len(ds) + PRIOR_WEIGHT)
        if not ds and stage not in reference:
            guessed.add(stage)
    in_flight = Counter(s for s, _ in running)
    work = guess = longest = 0.0
    slots = 0
    for stage, n in planned.items():
        todo = max(0, n - len(finished.get(stage, ())) - in_flight[stage])
        w = todo * per[stage] * threads.get(stage, 1)
        work, slots = work + w, slots + todo * threads.get(stage, 1)
        guess += w if stage in guessed else 0.0
        longest = max(longest, per[stage] if todo else 0.0)
    for stage, ran in running:
        left = max(per[stage] - ran, OVERRUN * ran)
        work, slots = work + left * threads.get(stage, 1), slots + threads.get(stage, 1)
        guess += left if stage in guessed else 0.0
        longest = max(longest, left)
    if work and guess / work > GUESS_SHARE:
        return None
    return max(work / max(1, min(cores, slots)), longest)


def results_dir_of(paths: Iterable[Any]) -> Optional[Path]:
    """results/<dataset> from a job's log or benchmark path (``<results>/logs/...``, ``<results>/benchmarks/...``)."""
    for p in paths:
        parts = Path(str(p).split(" (")[0]).parts
        for folder in ("benchmarks", "logs"):
            if folder in parts[1:]:
                return Path(*parts[: parts.index(folder, 1)])
    return None


@dataclass
class Progress:
    """Jobs per stage planned, running and finished, and the time left (:func:`estimate_left`)."""

    planned: Counter = field(default_factory=Counter)
    durations: dict = field(default_factory=lambda: defaultdict(list))
    started: dict = field(default_factory=dict)  # jobid -> (rule, start time)
    threads: dict = field(default_factory=dict)  # stage -> threads per job
    reference: dict = field(default_factory=dict)  # stage -> seconds per job in an earlier run
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    t0: float = 0.0

    def start(self, jobid: int, rule: str, now: float, threads: int = 1) -> None:
        self.started[jobid] = (rule, now)
        self.threads[stage_of(rule)] = max(1, min(int(threads or 1), self.cores))

    def finish(self, jobid: int, now: float) -> tuple[str, float]:
        rule, t = self.started.pop(jobid, ("?", now))
        self.durations[stage_of(rule)].append(now - t)
        return rule, now - t

    def left(self, now: float) -> Optional[float]:
        running = [(stage_of(rule), now - t) for rule, t in self.started.values()]
        return estimate_left(self.planned, self.durations, running, self.cores, self.reference,
                             threads=self.threads)


class LogHandlerSettings(LogHandlerSettingsBase):
    pass


class LogHandler(LogHandlerBase):
    clock = staticmethod(time.monotonic)

    def __post_init__(self) -> None:
        self.progress = Progress(t0=self.clock())
        self.stream = sys.stderr
        self.done, self.total = 0, 0
        self.info: dict[int, dict[str, Any]] = {}
        self.announced = False
        self.results: Optional[Path] = None
        self._finished: tuple[str, float] = ("?", 0.0)

    # -- the plugin interface
    @property
    def writes_to_stream(self) -> bool:
        return True

    @property
    def writes_to_file(self) -> bool:
        return False

    @property
    def has_filter(self) -> bool:
        return True

    @property
    def has_formatter(self) -> bool:
        return True

    @property
    def needs_rulegraph(self) -> bool:
        return False

    def _print(self, text: str) -> None:
        for line in str(text).splitlines() or [""]:
            line = _cut(line) + "\n"
            try:
                self.stream.write(line)
            except UnicodeEncodeError:  # an ASCII terminal: "·" and "…" become "?"
                enc = getattr(self.stream, "encoding", None) or "ascii"
                self.stream.write(line.encode(enc, "replace").decode(enc))
        self.stream.flush()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._emit(record)
        except Exception:  # a console problem must never stop the workflow
            self.handleError(record)

    def _emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "event", None)
        now = self.clock()
        if event == LogEvent.RESOURCES_INFO:
            slots = getattr(record, "cores", None) or getattr(record, "nodes", None)
            if isinstance(slots, int) and slots > 0:
                self.progress.cores = slots
        elif event == LogEvent.RUN_INFO and getattr(record, "stats", None):
            if self.announced:  # a dry run reports its stats twice
                return
            self.announced = True
            stats = {k: int(v) for k, v in record.stats.items() if k != "total"}
            self.progress.planned = Counter()
            for rule, n in stats.items():
                self.progress.planned[stage_of(rule)] += n
            per = ", ".join(f"{s} {n}" for s, n in self.progress.planned.most_common())
            self._print(f"wsimil: {sum(stats.values())} jobs to run ({per})")
        elif event == LogEvent.JOB_INFO:
            self._job_info(record, now)
        elif event == LogEvent.JOB_FINISHED:
            rule, took = self.progress.finish(int(record.job_id), now)
            self._finished = (self.info.get(int(record.job_id), {}).get("what") or describe(rule), took)
        elif event == LogEvent.PROGRESS:
            self._progress(int(record.done), int(record.total), now)
        elif event in (LogEvent.JOB_ERROR, LogEvent.GROUP_ERROR):
            self._job_error(record)
        elif event == LogEvent.SHELLCMD:
            return
        elif record.levelno >= logging.WARNING:
            msg = record.getMessage() if record.msg is not None else ""
            if msg:
                self._print(msg)
        elif event is None and record.msg:
            msg = record.getMessage()
            if not msg.startswith(_QUIET_INFO) and "\n" not in msg.strip() and len(msg) < MAX_LINE:
                self._print(msg)

    def _job_info(self, record: logging.LogRecord, now: float) -> None:
        jobid, rule = int(record.jobid), record.rule_name
        what = describe(rule, getattr(record, "wildcards", None), getattr(record, "output", None) or ())
        self.info[jobid] = {"rule": rule, "what": what, "log": getattr(record, "log", None)}
        if getattr(self.common_settings, "dryrun", False):
            self._print(f"  {what}")
            return
        if self.results is None:  # the first job: the earlier run's stage times, before this run rewrites them
            paths = [getattr(record, "benchmark", None) or ""] + list(getattr(record, "log", None) or [])
            self.results = results_dir_of(paths)
            if self.results is not None:
                self.progress.reference = benchmark_seconds(self.results)
        self.progress.start(jobid, rule, now, getattr(record, "threads", 1) or 1)

    def _progress(self, done: int, total: int, now: float) -> None:
        self.done, self.total = done, total
        what, took = self._finished
        if done < total:
            left = self.progress.left(now)
            eta = f", ~{_time_left(left)} left" if left is not None else ", estimating…"
        else:
            eta = ""
        pct = 100 * done // max(1, total)
        self._print(f"[{done:>{len(str(total))}}/{total} {pct:3d}%] {_duration(now - self.progress.t0)} elapsed{eta}"
                    f" | {what} ({_duration(took)})")
        if done == total:
            self._print(f"wsimil: all {total} jobs done in {_duration(now - self.progress.t0)}")

    def _job_error(self, record: logging.LogRecord) -> None:
        jobid = getattr(record, "jobid", "?")
        rule = getattr(record, "rule_name", None) or "a job group"
        what = " ".join(str(self.info.get(jobid, {}).get("what", "")).split())  # the stage column closed up
        self._print(f"ERROR in rule {rule} (job {jobid})" + (f": {what}" if what else ""))
        logs = [str(p) for p in (getattr(record, "log", None) or [])]
        wc = getattr(record, "aux", {}) or {}
        if wc:
            self._print(f"  details: {wc}")
        for path in logs:
            self._print(f"  log: {path}")
            p = Path(path)
            if p.is_file():
                lines = p.read_text(errors="replace").splitlines()[-LOG_TAIL:]
                self._print("\n".join("    | " + ln for ln in lines) if lines else "    (empty)")
        cmd = getattr(record, "shellcmd", None)
        if cmd:
            self._print("  command: " + " ".join(str(cmd).split()))
