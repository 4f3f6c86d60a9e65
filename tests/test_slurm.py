"""The workflow on a real SLURM controller through profiles/slurm (tests/slurm_cluster.py starts one on
127.0.0.1): every job goes through sbatch, and the results equal a local run's.

The SLURM executor plugin is installed into .cache/slurm-plugin and put on PYTHONPATH for this test only:
with the plugin importable and SLURM tools on PATH but no controller, every snakemake call pays ~10 s
(../shared/SLURM.md), which the rest of the suite must not.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from slurm_cluster import SlurmCluster, unavailable

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = ROOT / ".cache" / "slurm-plugin"
pytestmark = [pytest.mark.slurm, pytest.mark.workflow]

# The standard and poison experiments of configs/ci.yaml on 10 slides, two methods, one seed: every stage.
OVERLAY = {"synthetic": {"slides": {"train": {"normal": 2, "tumour": 2}, "val": {"normal": 1, "tumour": 1},
                                    "test": {"normal": 2, "tumour": 2}}},
           "training": {"methods": ["maxpool", "abmil"], "seeds": [0]}, "experiments": ["standard", "poison"]}


def _plugin_path() -> str | None:
    """The plugin's folder (installed there with pip --target on first use); None when pip cannot get it."""
    if not (PLUGIN_DIR / "snakemake_executor_plugin_slurm").is_dir():
        res = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(PLUGIN_DIR),
                              "--no-deps", "snakemake-executor-plugin-slurm>=1.0",
                              "snakemake-executor-plugin-slurm-jobstep"], capture_output=True, text=True)
        if res.returncode != 0:
            return None
    return str(PLUGIN_DIR)


def _snakemake(work: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(work),
           "--configfile", str(ROOT / "configs" / "ci.yaml"), str(work / "overlay.yaml"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, f"{' '.join(args)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def _workdir(path: Path) -> Path:
    path.mkdir()
    (path / "config.yaml").write_text((ROOT / "config.yaml").read_text())
    (path / "overlay.yaml").write_text(yaml.safe_dump(OVERLAY))
    return path


def test_workflow_through_sbatch_equals_a_local_run(tmp_path):
    if os.environ.get("WSIMIL_SLURM_TEST") != "1":
        pytest.skip("opt-in (WSIMIL_SLURM_TEST=1): it starts SLURM daemons as root and takes ~6 min here, too long "
                    "for the 20-minute CI budget until its job count is cut (docs/cluster.md)")
    why = unavailable()
    if why:
        pytest.skip(f"no SLURM here: {why}")
    plugin = _plugin_path()
    if plugin is None:
        pytest.skip("snakemake-executor-plugin-slurm could not be installed (no package index?)")
    base_env = {"PATH": f"{Path(sys.executable).parent}:/usr/sbin:/usr/bin:/bin", "HOME": str(tmp_path)}

    local = _workdir(tmp_path / "local")
    _snakemake(local, base_env, "--cores", "2")

    with SlurmCluster(tmp_path / "cluster") as cluster:
        env = {**base_env, "SLURM_CONF": cluster.env["SLURM_CONF"], "PYTHONPATH": plugin}
        work = _workdir(tmp_path / "slurm")
        # the real profile, with the test cluster's differences (partition, no accounting) in a test profile
        proc = _snakemake(work, env, "--profile", str(ROOT / "profiles" / "slurm"),
                          "--workflow-profile", str(ROOT / "tests" / "profiles" / "slurm-test"))
        squeue = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True).stdout
    log = proc.stdout + proc.stderr
    job_ids = set(re.findall(r"SLURM jobid (\d+)", log)) | set(re.findall(r"with SLURM jobid (\d+)", log))
    n_jobs = len(re.findall(r"^rule |^localrule ", _snakemake(local, base_env, "-n", "-F").stdout, re.M))
    assert len(job_ids) >= 8, log[-3000:]  # synth, patch, extraction, poison, training, evaluation, reports
    assert squeue.strip() == ""  # nothing left queued
    slurm_logs = list((work / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert {re.search(r"(\d+)\.log$", p.name).group(1) for p in slurm_logs} <= job_ids | {""} or slurm_logs
    # the same numbers as the local run
    for table in ("standard.csv", "poison.csv", "poison_comparison.csv"):
        a = pd.read_csv(local / "results" / "ci" / "tables" / table)
        b = pd.read_csv(work / "results" / "ci" / "tables" / table)
        pd.testing.assert_frame_equal(a, b)
    runs = pd.read_csv(work / "results" / "ci" / "tables" / "runs.csv")
    assert (runs["device"] == "cpu").all() and len(runs) == 4
    print(f"{len(job_ids)} SLURM jobs of {n_jobs}")
