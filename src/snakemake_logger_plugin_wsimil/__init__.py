"""A Snakemake logger plugin for wsimil runs: one short line per finished job, an ETA in time, errors in full.

    snakemake --cores 2 --logger wsimil        # what `make reproduce` runs

Snakemake's default console prints every job's input and output lists (thousands of lines, some of 50,000
characters, for a run of a hundred jobs) and counts progress in jobs, not time. This handler prints:

- the planned jobs per stage, once;
- per finished job: ``[done/total pct] elapsed, ~left | rule (duration)``, the time left estimated per stage
  from the jobs of that stage already finished (a prior from docs/performance.md before the first one),
  divided by the parallelism observed so far;
- a failed job in full: rule, wildcards, log paths, the last lines of each log, the command;
- warnings and errors (each line cut at 500 characters), and a closing line.

Every line stays under 500 characters. Snakemake's own complete log (``.snakemake/log/``) is unchanged.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from snakemake_interface_logger_plugins.base import LogHandlerBase
from snakemake_interface_logger_plugins.common import LogEvent
from snakemake_interface_logger_plugins.settings import LogHandlerSettingsBase

MAX_LINE = 500
LOG_TAIL = 25
# seconds per job of each stage on the embedded default, 2 cores (docs/performance.md): the ETA before a
# stage's first job has finished
PRIOR_SECONDS = {"synth": 30, "patch": 8, "extract": 60, "poison": 40, "train": 120, "score": 10, "evaluate": 5,
                 "report": 20, "focusmil": 300, "milunit": 5}
_QUIET_INFO = ("Select jobs to execute", "Execute ", "Building DAG", "Using shell", "Provided cores",
               "Rules claiming", "Assuming unrestricted", "Job stats", "Finished jobid", "Checking", "Waiting at most",
               "Nothing to be done", "Using profile", "host:", "Provided resources", "Singularity", "Conda")


def stage_of(rule: str) -> str:
    """A rule's stage: its name up to the first underscore (``train_standard_maxpool`` -> ``train``)."""
    return rule.split("_", 1)[0]


def _cut(line: str) -> str:
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 30] + f" ... ({len(line)} characters)"


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


@dataclass
class Progress:
    """Jobs per stage planned and finished, their durations, and the time-based estimate of what is left."""

    planned: Counter = field(default_factory=Counter)
    finished: Counter = field(default_factory=Counter)
    seconds: dict = field(default_factory=lambda: defaultdict(float))
    started: dict = field(default_factory=dict)  # jobid -> (rule, start time)
    t0: float = field(default_factory=time.monotonic)

    def start(self, jobid: int, rule: str, now: float) -> None:
        self.started[jobid] = (rule, now)

    def finish(self, jobid: int, now: float) -> tuple[str, float]:
        rule, t = self.started.pop(jobid, ("?", now))
        self.finished[stage_of(rule)] += 1
        self.seconds[stage_of(rule)] += now - t
        return rule, now - t

    def left(self, now: float) -> Optional[float]:
        """Seconds of wall time left: the work left per stage (mean finished duration, else the prior) over the
        parallelism observed so far (job-seconds done per wall second)."""
        done = sum(self.seconds.values())
        if not done:
            return None
        overall = done / max(1, sum(self.finished.values()))
        work = 0.0
        for stage, n in self.planned.items():
            todo = max(0, n - self.finished[stage])
            per = self.seconds[stage] / self.finished[stage] if self.finished[stage] else PRIOR_SECONDS.get(stage, overall)
            work += todo * per
        parallel = max(1.0, done / max(now - self.t0, 1e-9))
        return work / parallel


class LogHandlerSettings(LogHandlerSettingsBase):
    pass


class LogHandler(LogHandlerBase):
    def __post_init__(self) -> None:
        self.progress = Progress()
        self.stream = sys.stderr
        self.done, self.total = 0, 0
        self.info: dict[int, dict[str, Any]] = {}

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
            self.stream.write(_cut(line) + "\n")
        self.stream.flush()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._emit(record)
        except Exception:  # a console problem must never stop the workflow
            self.handleError(record)

    def _emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "event", None)
        now = time.monotonic()
        if event == LogEvent.RUN_INFO and getattr(record, "stats", None):
            stats = {k: int(v) for k, v in record.stats.items() if k != "total"}
            self.progress.planned = Counter()
            for rule, n in stats.items():
                self.progress.planned[stage_of(rule)] += n
            per = ", ".join(f"{s} {n}" for s, n in self.progress.planned.most_common())
            self._print(f"wsimil: {sum(stats.values())} jobs to run ({per})")
        elif event == LogEvent.JOB_INFO:
            jobid = int(record.jobid)
            self.info[jobid] = {"rule": record.rule_name, "log": getattr(record, "log", None),
                                "wildcards": getattr(record, "wildcards", None)}
            self.progress.start(jobid, record.rule_name, now)
        elif event == LogEvent.JOB_FINISHED:
            rule, took = self.progress.finish(int(record.job_id), now)
            self._finished_line = (rule, took)
        elif event == LogEvent.PROGRESS:
            self.done, self.total = int(record.done), int(record.total)
            rule, took = getattr(self, "_finished_line", ("?", 0.0))
            left = self.progress.left(now)
            eta = f", ~{_duration(left)} left" if left is not None and self.done < self.total else ""
            pct = 100 * self.done // max(1, self.total)
            self._print(f"[{self.done:>{len(str(self.total))}}/{self.total} {pct:3d}%] "
                        f"{_duration(now - self.progress.t0)} elapsed{eta} | {rule} ({_duration(took)})")
            if self.done == self.total:
                self._print(f"wsimil: all {self.total} jobs done in {_duration(now - self.progress.t0)}")
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

    def _job_error(self, record: logging.LogRecord) -> None:
        rule = getattr(record, "rule_name", None) or "a job group"
        self._print(f"ERROR in rule {rule} (job {getattr(record, 'jobid', '?')})")
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
