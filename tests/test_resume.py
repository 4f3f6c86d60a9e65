"""Interrupt and resume: a workflow stopped by SIGTERM, then killed with SIGKILL, completes on rerun without
redoing finished jobs, with results identical to an uninterrupted run (outputs are written atomically and
every job is deterministic)."""

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.workflow

CONFIG = {
    "dataset": {"name": "resume", "source": "synthetic"},
    "synthetic": {"seed": 5, "size_um": [1400, 1120],
                  "slides": {"train": {"normal": 2, "tumour": 2}, "val": {"normal": 1, "tumour": 1},
                             "test": {"normal": 1, "tumour": 1}}},
    "patching": {"target_mpp": 1.0, "patch_size": 128, "seg_downsample": 16, "slides_per_job": 1},
    "features": {"extractor": "efficientnet_lite0", "batch_size": 32, "num_workers": 0, "device": "cpu",
                 "slides_per_job": 2},
    "training": {"methods": ["maxpool"], "seeds": [0], "max_epochs": 3, "device": "cpu", "threads": 1},
    "experiments": ["standard"],
}


def _cmd(work: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(work),
            "--configfile", str(work / "run.yaml"), "--cores", "2", *args]


def _env(work: Path) -> dict:
    return {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(work)}


def _workdir(path: Path) -> Path:
    path.mkdir()
    (path / "config.yaml").write_text((ROOT / "config.yaml").read_text())
    (path / "run.yaml").write_text(yaml.safe_dump(CONFIG))
    return path


def _run(work: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(_cmd(work, *args), capture_output=True, text=True, env=_env(work), timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def _interrupt(work: Path, sig: int, ready, whole_group: bool,
               args: tuple[str, ...] = ()) -> tuple[subprocess.Popen, bool]:
    """Start the workflow, wait until ``ready()``, send ``sig`` (to snakemake alone, or its whole process group
    as a crash or an out-of-memory kill would), and wait for it to end. Returns the process and whether it had
    to be killed after a SIGTERM it did not act on."""
    log = open(work / f"interrupted_{sig}.log", "w")
    proc = subprocess.Popen(_cmd(work, *args), stdout=log, stderr=subprocess.STDOUT, env=_env(work), start_new_session=True)
    deadline = time.monotonic() + 300
    while not ready():
        assert proc.poll() is None, f"the workflow ended before it could be interrupted:\n{(work / log.name).read_text()[-3000:]}"
        assert time.monotonic() < deadline, "the workflow did not reach the point to interrupt"
        time.sleep(0.2)
    (os.killpg if whole_group else os.kill)(proc.pid, sig)
    killed = False
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        # Snakemake 9's SIGTERM handler (JobScheduler.exit_gracefully) takes the scheduler's threading.Lock,
        # which the main thread may be holding while it selects jobs (run_selector, the ILP solve): the
        # process then waits on itself for ever (observed here in 1 of ~10 runs, no job running). Kill it as
        # a user would; what the test is about, that an interrupted run resumes to the same results, holds.
        assert sig == signal.SIGTERM, f"the workflow did not end within 120 s of signal {sig}"
        warnings.warn("snakemake did not exit after SIGTERM (its signal handler deadlocked); killed")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        killed = True
    log.close()
    return proc, killed


def _mtimes(folder: Path, names=None) -> dict[str, int]:
    """Modification times of the patch files in ``folder`` (those in ``names`` only, if given)."""
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.h5") if names is None or p.name in names}


def test_sigterm_then_sigkill_then_resume_gives_the_uninterrupted_results(tmp_path):
    ref = _workdir(tmp_path / "ref")
    _run(ref)
    work = _workdir(tmp_path / "work")
    out = work / "results" / "resume"
    patches = out / "patches" / "1.0mpp_128px"

    # 1. SIGTERM (what a scheduler or Ctrl-C sends) once some slides are patched
    proc, killed = _interrupt(work, signal.SIGTERM, lambda: len(list(patches.glob("*.h5"))) >= 3, whole_group=False)
    assert proc.returncode != 0
    done = _mtimes(patches)
    assert 3 <= len(done) < 8
    if not killed:  # a graceful stop leaves no half-written file
        assert not list(out.rglob("*.tmp*")) and not list(out.rglob(".*.h5*"))
    else:  # killed: resume as the README says after a crash
        _run(work, "--unlock")

    # 2. SIGKILL of snakemake and every job (a crash) once a feature file exists
    feats = out / "features" / "1.0mpp_128px" / "efficientnet_lite0" / "clean"
    proc, _ = _interrupt(work, signal.SIGKILL, lambda: any(feats.glob("*.h5")), whole_group=True,
                         args=("--rerun-incomplete",) if killed else ())
    assert proc.returncode == -signal.SIGKILL
    kept = _mtimes(patches, done)
    if killed:  # a job still running at the kill was rightly redone (marked incomplete); the rest were not
        assert kept.keys() == done.keys()
        done = {name: t for name, t in done.items() if kept[name] == t}
    assert kept == done  # not redone

    # 3. the README's resume command after a crash
    _run(work, "--unlock")
    _run(work, "--rerun-incomplete")
    assert _mtimes(patches, done) == done
    for rel in ("tables/standard.csv", "runs/standard/maxpool/seed0/predictions.csv",
                "runs/standard/maxpool/seed0/history.csv"):
        assert (out / rel).read_bytes() == (ref / "results" / "resume" / rel).read_bytes(), rel
    assert "Nothing to be done" in _run(work, "-n").stdout
