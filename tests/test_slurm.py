"""The workflow on a real SLURM controller through profiles/slurm (tests/slurm_cluster.py starts one on
127.0.0.1): every job goes through sbatch, and the results equal a local run's.

Skipped, with the reason, where SLURM cannot be started (not root, no apt-get, no package index, another
test cluster running, WSIMIL_SLURM_TEST=0). `make test` (and so .ci/run) runs it: about 5 minutes on 2 cores.

The SLURM executor plugin is installed into .cache/slurm-plugin and put on PYTHONPATH for this test only:
with the plugin importable and SLURM tools on PATH but no controller, every snakemake call pays ~10 s
(measured here), which the rest of the suite must not.

profiles/slurm is passed as it is, as the --workflow-profile. The test cluster's differences live in
tests/profiles/slurm-test/config.yaml; as a workflow profile beats every --profile key by key, they are passed
as command-line options (which beat both).
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from slurm_cluster import SlurmCluster, unavailable

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = ROOT / ".cache" / "slurm-plugin"
# the plugin and what it needs that the project's environment does not have; --no-deps keeps numpy, pandas
# and snakemake's interfaces those of the venv
PLUGIN_PACKAGES = ["snakemake-executor-plugin-slurm>=1.0", "snakemake-executor-plugin-slurm-jobstep", "throttler"]
TEST_PROFILE = ROOT / "tests" / "profiles" / "slurm-test" / "config.yaml"
pytestmark = [pytest.mark.slurm, pytest.mark.workflow]

# configs/ci.yaml's standard and poison experiments on 10 slides, two methods, one seed: every stage (synthesis,
# patching, extraction, poison, training, evaluation, tables, figures, summary) in ~1 min locally. The full
# ci.yaml (7 experiments, 12 slides, 3 methods x 2 seeds) spends its time in training, which the scheduler
# does not change, and would not fit the 5-minute budget twice.
OVERLAY = {"synthetic": {"slides": {"train": {"normal": 2, "tumour": 2}, "val": {"normal": 1, "tumour": 1},
                                    "test": {"normal": 2, "tumour": 2}}},
           "training": {"methods": ["maxpool", "abmil"], "seeds": [0]}, "experiments": ["standard", "poison"]}


def _plugin_path() -> str | None:
    """The plugin's folder (installed there with pip --target on first use); None when pip cannot get it."""
    if not all((PLUGIN_DIR / m).is_dir() for m in ("snakemake_executor_plugin_slurm", "throttler")):
        res = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--upgrade", "--target",
                              str(PLUGIN_DIR), "--no-deps", *PLUGIN_PACKAGES], capture_output=True, text=True)
        if res.returncode != 0:
            return None
    return str(PLUGIN_DIR)


def profile_options(path: Path) -> list[str]:
    """A profile's keys as snakemake command-line options (what Snakemake itself does with a profile)."""
    args = []
    for key, value in yaml.safe_load(path.read_text()).items():
        if isinstance(value, dict):
            args += [f"--{key}", *(f"{k}={v}" for k, v in value.items())]
        elif value is True:
            args.append(f"--{key}")
        elif value is not False and value is not None:
            args += [f"--{key}", str(value)]
    return args


def _command(work: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(work),
            "--configfile", str(ROOT / "configs" / "ci.yaml"), str(work / "overlay.yaml"), *args]


def _snakemake(work: Path, env: dict, *args: str, cluster: SlurmCluster, timeout: float = 1200) -> str:
    """Run Snakemake through the cluster; its output. A job SLURM could not launch (held after a failed
    launch: Snakemake would wait on it for ever) fails the test at once with slurmd's log."""
    log_path = work / "snakemake.out"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(_command(work, *args), stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None:
                queue = subprocess.run(["squeue", "-h", "-o", "%i|%r"], env=env, capture_output=True, text=True).stdout
                # the reason of a job SLURM will not start by itself: "launch failed requeued held", JobHeldAdmin/User
                held = [ln for ln in queue.splitlines() if "held" in ln.partition("|")[2].lower()]
                if held:
                    slurmd = (cluster.root / "log" / "slurmd.log").read_text()[-3000:]
                    jobs = "\n".join(held)
                    raise AssertionError(f"SLURM could not launch a job:\n{jobs}\nslurmd.log:\n{slurmd}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"the SLURM run took over {timeout:.0f} s:\n{log_path.read_text()[-5000:]}")
                time.sleep(3)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    out = log_path.read_text()
    assert proc.returncode == 0, f"{' '.join(args)}:\n{out[-8000:]}"
    return out


def _workdir(path: Path) -> Path:
    path.mkdir()
    (path / "config.yaml").write_text((ROOT / "config.yaml").read_text())
    (path / "overlay.yaml").write_text(yaml.safe_dump(OVERLAY))
    return path


def test_profile_options_cover_the_test_profile():
    args = profile_options(TEST_PROFILE)
    assert args[:2] == ["--default-resources", "slurm_partition=debug"]
    assert "--slurm-status-command" in args and "--slurm-keep-successful-logs" in args


def test_workflow_through_sbatch_equals_a_local_run(tmp_path):
    if os.environ.get("WSIMIL_SLURM_TEST") == "0":
        pytest.skip("WSIMIL_SLURM_TEST=0")
    why = unavailable()
    if why:
        pytest.skip(f"no SLURM here: {why}")
    plugin = _plugin_path()
    if plugin is None:
        pytest.skip("snakemake-executor-plugin-slurm could not be installed (no package index?)")
    base_env = {"PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/bin", "HOME": str(tmp_path)}
    t0 = time.monotonic()

    # the local run goes on beside the SLURM run (which mostly waits on the scheduler's status checks)
    local = _workdir(tmp_path / "local")
    # its output goes to a file: a pipe nobody reads until the SLURM run ends would stall it at 64 KB
    local_log = open(tmp_path / "local.log", "w")
    local_run = subprocess.Popen(_command(local, "--cores", "1"), stdout=local_log, stderr=subprocess.STDOUT,
                                 text=True, env=base_env)
    try:
        try:
            cluster = SlurmCluster(tmp_path / "cluster").start()
        except RuntimeError as err:  # e.g. another test cluster holds the lock
            pytest.skip(f"no SLURM here: {err}")
        try:
            env = {**base_env, "SLURM_CONF": cluster.env["SLURM_CONF"], "PYTHONPATH": plugin}
            work = _workdir(tmp_path / "slurm")
            log = _snakemake(work, env, "--workflow-profile", str(ROOT / "profiles" / "slurm"),
                             *profile_options(TEST_PROFILE), cluster=cluster)
            t_slurm = time.monotonic() - t0
            squeue = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True).stdout
            # what the controller ran: every job id it knows (finished jobs stay for MinJobAge: an hour in
            # this cluster; at the default 300 s the first jobs of a 400 s run were gone)
            known = subprocess.run(["scontrol", "show", "job", "-o"], env=env, capture_output=True, text=True).stdout
        finally:
            cluster.stop()
        local_run.wait(timeout=1200)
        assert local_run.returncode == 0, (tmp_path / "local.log").read_text()[-5000:]
    finally:
        if local_run.poll() is None:
            local_run.kill()
        local_log.close()
    submitted = set(re.findall(r"submitted with SLURM jobid (\d+)", log))
    ran = set(re.findall(r"JobId=(\d+) .*?JobState=COMPLETED", known))
    log_files = list((work / ".snakemake" / "slurm_logs").rglob("*.log"))
    slurm_logs = {p.stem for p in log_files}
    total = re.search(r"^total\s+(\d+)", log, re.M)
    print(f"SLURM run {t_slurm:.0f} s (the local run beside it): {total.group(1) if total else '?'} Snakemake jobs "
          f"in {len(submitted)} SLURM jobs, ids {sorted(submitted, key=int)}")
    assert len(submitted) >= 6, log[-3000:]  # synth sheet, slides group, extraction, poison, train, evaluate, reports
    assert submitted <= ran, (submitted - ran, known[-2000:])  # each went through sbatch and completed
    assert submitted <= slurm_logs, (submitted, slurm_logs)  # each left its SLURM log, named by its id
    # grouped jobs were submitted (profiles/slurm: groups, group-components): the slides, train, evaluate and
    # reports groups each ran as SLURM jobs of their own
    groups = {p.parent.name.split("_")[1] for p in log_files if p.parent.name.startswith("group_")}
    assert {"slides", "train", "evaluate", "reports"} <= groups, groups
    assert squeue.strip() == ""  # nothing left queued
    # the same numbers as the local run
    for table in ("standard.csv", "poison.csv", "poison_comparison.csv", "slides.csv"):
        a = pd.read_csv(local / "results" / "ci" / "tables" / table)
        b = pd.read_csv(work / "results" / "ci" / "tables" / table)
        pd.testing.assert_frame_equal(a, b)
    runs = pd.read_csv(work / "results" / "ci" / "tables" / "runs.csv")
    assert (runs["device"] == "cpu").all() and len(runs) == 4
