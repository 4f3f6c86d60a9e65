# What the rules share: the validated config, the sample sheet, path helpers and input functions.

import json
from pathlib import Path

from wsimil.config import validate_config
from wsimil.datasets.sheet import read_sheet, resolve
from wsimil.io import SLIDE_ID_PATTERN

validate_config(config, "config")

DATASET = config["dataset"]["name"]
OUT = f"results/{DATASET}"
LOGS = f"{OUT}/logs"
BENCH = f"{OUT}/benchmarks"
# Parameters that change a result are part of its path (a changed resolution or extractor never
# reuses old files).
PATCH_TAG = f"{config['patching']['target_mpp']}mpp_{config['patching']['patch_size']}px"
PATCHES = f"{OUT}/patches/{PATCH_TAG}"
FEATURES = f"{OUT}/features/{PATCH_TAG}/{config['features']['extractor']}"
POISON_TAG = f"poison_s{config['poison']['strength']}_f{config['poison']['fraction']}_seed{config['poison']['seed']}"
METHODS = config["training"]["methods"]
SEEDS = config["training"]["seeds"]
EXPERIMENTS = config["experiments"]


def load_sheet():
    """The sample sheet at parse time: planned from the config (synthetic) or read from the user's file."""
    if config["dataset"]["source"] == "synthetic":
        from wsimil.slides.synthetic import plan_dataset

        return plan_dataset(config["synthetic"]), f"{OUT}/data/slides.csv", f"{OUT}/data"
    sheet_path = config["dataset"]["sheet"]
    if not sheet_path:
        raise ValueError("config key 'dataset.sheet': required when dataset.source is 'sheet'")
    return read_sheet(sheet_path), sheet_path, None


SHEET, SHEET_PATH, SYNTH_DIR = load_sheet()
SLIDES = list(SHEET["slide_id"])
_ROWS = SHEET.set_index("slide_id")
TUMOUR_SYNTH = [s for s in SLIDES if str(_ROWS.loc[s, "annotation"])]


wildcard_constraints:
    slide=SLIDE_ID_PATTERN.strip("^$"),
    experiment="|".join(EXPERIMENTS),
    method="|".join(METHODS),


def get_dataset_dir(wildcards, output):
    """The synthetic dataset folder, from data/slides.csv or data/slides/<id>.tif (the rule's first output)."""
    first = Path(output[0])
    return str(first.parent if first.name == "slides.csv" else first.parent.parent)


def get_milunit_dir(wildcards, output):
    """The unit-test folder, from its slides.csv (the rule's first output)."""
    return str(Path(output[0]).parent)


def get_results_dir(wildcards, output):
    """results/<dataset>, from the report rule's first output (tables/<name>.md)."""
    return str(Path(output[0]).parent.parent)


def as_json(section):
    return json.dumps(config[section], sort_keys=True)


def get_slide(wildcards):
    if SYNTH_DIR:
        return f"{SYNTH_DIR}/slides/{wildcards.slide}.tif"
    return str(resolve(SHEET_PATH, _ROWS.loc[wildcards.slide, "path"]))


def get_annotation_path(wildcards):
    value = str(_ROWS.loc[wildcards.slide, "annotation"])
    if not value:
        return ""
    if SYNTH_DIR:
        return f"{SYNTH_DIR}/annotations/{wildcards.slide}.xml"
    return str(resolve(SHEET_PATH, value))


def get_annotation(wildcards):
    path = get_annotation_path(wildcards)
    return [path] if path else []


def get_label(wildcards):
    return int(_ROWS.loc[wildcards.slide, "label"])


MILUNIT = f"{OUT}/milunit/seed{config['milunit']['seed']}"


def milunit_ids():
    """Bag ids of the MIL unit test, as wsimil.datasets.milunit names them."""
    return [f"{split}_{i:04d}" for split, n in config["milunit"]["bags"].items() for i in range(n)]


def features_dir(experiment):
    if experiment == "milunit":
        return f"{MILUNIT}/features"
    return f"{FEATURES}/{POISON_TAG}" if experiment == "poison" else f"{FEATURES}/clean"


def get_experiment_sheet(wildcards):
    return f"{MILUNIT}/slides.csv" if wildcards.experiment == "milunit" else SHEET_PATH


def get_features_dir(wildcards):
    return features_dir(wildcards.experiment)


def get_experiment_features(wildcards):
    ids = milunit_ids() if wildcards.experiment == "milunit" else SLIDES
    return expand("{dir}/{slide}.h5", dir=features_dir(wildcards.experiment), slide=ids)


RUN_FILES = ["predictions.csv", "instance_scores.h5", "history.csv", "model.pt", "run.json"]


def run_dir(experiment, method, seed):
    return f"{OUT}/runs/{experiment}/{method}/seed{seed}"


def get_run_template(wildcards):
    """The run directory of every seed; the CLI fills in {seed}."""
    return run_dir(wildcards.experiment, wildcards.method, "{seed}")


def get_overrides(wildcards):
    return json.dumps(config["training"]["overrides"].get(wildcards.method, {}), sort_keys=True)


def get_experiment_run_dirs(wildcards):
    return " ".join(run_dir(wildcards.experiment, m, s) for m in METHODS for s in SEEDS)


def get_experiment_runs(wildcards):
    return [f"{run_dir(wildcards.experiment, m, s)}/predictions.csv" for m in METHODS for s in SEEDS]


def get_all_metrics(wildcards=None):
    return [f"{run_dir(e, m, s)}/metrics.json" for e in EXPERIMENTS for m in METHODS for s in SEEDS]


def report_outputs():
    tables = [f"{OUT}/tables/{e}.{ext}" for e in EXPERIMENTS for ext in ("csv", "md")]
    figures = [f"{OUT}/figures/slide_auc.png"]
    if {"standard", "poison"} <= set(EXPERIMENTS):
        tables += [f"{OUT}/tables/poison_comparison.{ext}" for ext in ("csv", "md")]
        figures += [f"{OUT}/figures/poison_comparison.png"]
    return tables, figures


def get_final_output():
    """Tables and figures, and every run directory in full (a deleted model.pt is rebuilt too)."""
    tables, figures = report_outputs()
    runs = [f"{run_dir(e, m, s)}/{f}" for e in EXPERIMENTS for m in METHODS for s in SEEDS for f in RUN_FILES]
    return tables + figures + runs + get_all_metrics()
