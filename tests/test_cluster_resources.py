"""What each job asks a scheduler for (rules/*.smk resources, read from `snakemake -n --verbose`): a GPU only
for the torch stages whose device is not cpu, as `gpu` or as `gres` (cluster.gpu_request), memory and runtime
per stage, and the groups that pack small jobs into one SLURM job (profiles/slurm, docs/cluster.md)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.workflow


def planned(tmp_path: Path, *config: str) -> dict[str, dict[str, str]]:
    """Rule name -> its first job's resources (a dict of strings), from a verbose dry run of configs/ci.yaml."""
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    cmd = [sys.executable, "-m", "snakemake", "-n", "--verbose", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(tmp_path), "--configfile", str(ROOT / "configs" / "ci.yaml")]
    if config:
        cmd += ["--config", *config]
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs: dict[str, dict[str, str]] = {}
    for rule, res in re.findall(r"^\s*(?:local)?rule (\S+):\n(?:.*\n)*?\s*resources: (.*)$", proc.stdout + proc.stderr,
                                re.M):
        jobs.setdefault(rule, dict(kv.split("=", 1) for kv in res.split(", ")))
    return jobs


def first(jobs: dict, prefix: str) -> dict[str, str]:
    name = next(n for n in jobs if n.startswith(prefix))
    return jobs[name]


def test_cpu_run_asks_for_no_gpu(tmp_path):
    jobs = planned(tmp_path, 'features={"device": "cpu"}', 'training={"device": "cpu"}')
    for prefix in ("extract_", "poison_", "train"):
        assert first(jobs, prefix)["gpu"] == "0" and first(jobs, prefix)["gres"] == "", prefix
    extract, train, evaluate = first(jobs, "extract_"), first(jobs, "train"), first(jobs, "evaluate")
    assert (extract["mem_mb"], extract["runtime"]) == ("8000", "120")
    assert (train["mem_mb"], train["runtime"]) == ("8000", "240")
    assert (evaluate["mem_mb"], evaluate["runtime"]) == ("4000", "30")
    assert first(jobs, "patch_")["mem_mb"] == "4000" and first(jobs, "synth_n")["mem_mb"] == "2000"


def test_gpu_requested_per_stage_as_gpus_or_gres(tmp_path):
    jobs = planned(tmp_path, 'features={"device": "cuda"}', 'training={"device": "cpu"}')
    assert first(jobs, "extract_")["gpu"] == "1" and first(jobs, "poison_")["gpu"] == "1"
    assert first(jobs, "train")["gpu"] == "0"  # training stays on the CPU: no GPU asked
    assert "gpu" not in first(jobs, "evaluate") and "gpu" not in first(jobs, "patch_")

    gres = tmp_path / "gres"
    gres.mkdir()
    jobs = planned(gres, 'training={"device": "auto"}', 'cluster={"gpu_request": "gres"}')
    assert first(jobs, "train")["gpu"] == "0" and first(jobs, "train")["gres"] == "gpu:1"
    # ci.yaml extracts on the cpu: no GPU in either form
    assert first(jobs, "extract_")["gpu"] == "0" and first(jobs, "extract_")["gres"] == ""


def test_slurm_profile_names_existing_rules_and_groups(tmp_path):
    """Every rule the SLURM profile groups or sets resources for exists (a renamed rule would silently drop out):
    the rules written by name in the rule files, and those generated for configs/ci.yaml (`snakemake -l`)."""
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
    rules = set(re.findall(r"^\s*(?:rule|checkpoint) (\w+):", "".join(
        p.read_text() for p in [ROOT / "Snakefile", *(ROOT / "rules").glob("*.smk")]), re.M))
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    listed = subprocess.run([sys.executable, "-m", "snakemake", "-l", "--snakefile", str(ROOT / "Snakefile"),
                             "--directory", str(tmp_path), "--configfile", str(ROOT / "configs" / "ci.yaml")],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr[-2000:]
    rules |= set(listed.stdout.split())
    assert {"report_standard", "report_summary", "download"} <= rules and any(r.startswith("patch_") for r in rules)
    for key in ("groups", "set-resources", "set-threads"):
        unknown = set(profile.get(key, {})) - rules
        assert not unknown, f"profiles/slurm {key} names rules that do not exist: {unknown}"
    # every table, figure and card job rides in the reports group (alone, each would be a SLURM job of its own)
    reporting = {r for r in rules if r.startswith("report_") or r in ("slide_table", "run_table", "geojson")}
    assert reporting <= set(profile["groups"]), f"not in a profiles/slurm group: {reporting - set(profile['groups'])}"
    grouped = set(profile["groups"].values()) | {"extract", "poison", "train", "evaluate"}
    assert grouped <= set(profile["group-components"]), grouped - set(profile["group-components"])
    assert profile["set-resource-scopes"]["group_slot"] == "local"
    assert profile["default-resources"]["group_slot"] == 1 and profile["resources"]["group_slot"] == 1


def test_stage_rules_are_addressable_by_name(tmp_path):
    """`train` and `evaluate` are one named rule each: --set-resources reaches every training job (and so can a
    profile's set-resources)."""
    jobs = planned(tmp_path, 'training={"device": "cpu"}')
    assert "train" in jobs and "evaluate" in jobs and not any(n.startswith(("train_", "evaluate_")) for n in jobs)
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    cmd = [sys.executable, "-m", "snakemake", "-n", "--verbose", "--snakefile", str(ROOT / "Snakefile"), "--directory",
           str(tmp_path), "--configfile", str(ROOT / "configs" / "ci.yaml"), "--set-resources", "train:mem_mb=16000"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path)})
    out = proc.stdout + proc.stderr
    train = re.findall(r"^\s*rule train:\n(?:.*\n)*?\s*resources: (.*)$", out, re.M)
    assert proc.returncode == 0 and train, out[-2000:]
    assert all("mem_mb=16000" in r for r in train)


def test_per_slide_stages_are_named_rules_at_one_slide_per_job(tmp_path):
    """With one slide per job (the real-data configs), patching, extraction and poison re-extraction are the
    named rules patch, extract and poison_extract: --set-resources reaches them."""
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    overlay = tmp_path / "one.yaml"
    overlay.write_text("features:\n  slides_per_job: 1\npatching:\n  slides_per_job: 1\n")
    cmd = [sys.executable, "-m", "snakemake", "-n", "--verbose", "--snakefile", str(ROOT / "Snakefile"), "--directory",
           str(tmp_path), "--configfile", str(ROOT / "configs" / "ci.yaml"), str(overlay), "--set-resources",
           "extract:mem_mb=12345", "poison_extract:mem_mb=23456", "patch:mem_mb=3456"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path)})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-2000:]
    for rule, mem in (("extract", "12345"), ("poison_extract", "23456"), ("patch", "3456")):
        res = re.findall(rf"^\s*rule {rule}:\n(?:.*\n)*?\s*resources: (.*)$", out, re.M)
        assert res and all(f"mem_mb={mem}" in r for r in res), (rule, res[:2])
    assert not re.search(r"^\s*rule (extract|patch)_\w+:", out, re.M)


def test_rules_generated_per_slide_group_take_their_stage_names_settings(tmp_path):
    """At several slides per job (the synthetic default) synthesis, patching, extraction and poisoning run as
    rules generated per slide group (synth_<group>, patch_<group>, ...): --set-resources and --set-threads of the
    stage's name reach every one of them (rules/common.smk, address_as_stage), as a profile's set-resources do."""
    jobs = planned(tmp_path, 'training={"device": "cpu"}')
    assert any(n.startswith("extract_") for n in jobs) and "extract" not in jobs  # ci.yaml: one group per stage
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    cmd = [sys.executable, "-m", "snakemake", "-n", "--verbose", "--cores", "4", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(tmp_path), "--configfile", str(ROOT / "configs" / "ci.yaml"), "--set-resources",
           "synth:mem_mb=1111", "patch:mem_mb=2222", "extract:mem_mb=3333", "poison_extract:mem_mb=4444",
           "--set-threads", "extract=3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path)})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-2000:]
    for prefix, mem in (("synth_", "1111"), ("patch_", "2222"), ("extract_", "3333"), ("poison_", "4444")):
        res = re.findall(rf"^\s*rule ({prefix}\w+):\n(?:.*\n)*?\s*resources: (.*)$", out, re.M)
        res = [r for name, r in res if name != "synth_sheet"]
        assert res and all(f"mem_mb={mem}" in r for r in res), (prefix, res[:2])
    threads = re.findall(r"^\s*rule extract_\w+:\n(?:.*\n)*?\s*threads: (\d+)$", out, re.M)
    assert threads and set(threads) == {"3"}, threads
