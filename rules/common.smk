# What the rules share: the validated config, the sample sheet, path helpers and input functions.

import json
import os
import re
import shlex

import pandas as pd
from pathlib import Path

from wsimil.config import check_results_folder, validate_config, write_run_record
from wsimil.datasets.sheet import workflow_sheet
from wsimil.experiments import (cell_overrides, configured, derived_sheet, feature_set, features_root, features_subdir,
                                get_experiment, list_experiments, manifest_subpath, patch_tag, plan_cells,
                                reused_models, train_val_rows)
from wsimil.io import SLIDE_ID_PATTERN, spreadsheet_safe_frame, write_text_atomic
from wsimil.limits import ENV as LIMITS_ENV, Limits
from wsimil.models.base import list_methods
from snakemake.exceptions import WorkflowError
from wsimil.poison import select_poisoned_slides
from wsimil.reporting.experiments import all_outputs, card_outputs, experiment_outputs, heatmap_slide_ids, needs, summary_outputs

validate_config(config, "config")
# every job's `wsimil` reads the bounds on files from outside from here (wsimil.limits); set in the job's own
# process too, since a cluster job parses this file again
os.environ[LIMITS_ENV] = Limits.from_mapping(config["limits"], "config key 'limits'").to_json()
PLUGIN_ARGS = " ".join(f"--plugin {shlex.quote(r)}" for r in config["plugins"])  # for the jobs' `wsimil` calls


def _check_plugin_methods():
    """A method from another package is built and run on a tiny batch now: a broken one stops the workflow
    before any job, with its origin named (wsimil.models.base.check_method)."""
    from wsimil.models.base import check_method, get_method

    for name in dict.fromkeys(config["training"]["methods"] + (config["dose_response"]["methods"] or [])
                              + config["minet_curves"]["methods"]):
        if get_method(name).origin != "built-in":
            check_method(name)


_check_plugin_methods()

DATASET = config["dataset"]["name"]
OUT = config["results_dir"] or f"results/{DATASET}"
LOGS = f"{OUT}/logs"
BENCH = f"{OUT}/benchmarks"
# Parameters that change a result are part of its path (a changed resolution or extractor never
# reuses old files).
PATCHES = f"{OUT}/patches/{patch_tag(config)}"
FEATURES = f"{OUT}/{features_root(config)}"
SEEDS = config["training"]["seeds"]
EXPERIMENTS = config["experiments"]


SOURCE = config["dataset"]["source"]
EXCLUDE = config["dataset"]["exclude"]
# Where the sheet the rules read lives: the synthetic generator writes it, every other source gets a copy
# written by the sample_sheet job (excluded slides out, paths relative to it).
SHEET_PATH = f"{OUT}/data/slides.csv"
EXCLUDED_PATH = f"{OUT}/data/excluded.csv"


def report_text():
    """The report's description: the claims beside their verdicts (``report_landing.rst``, written by the summary
    job) once they exist, else report/workflow.rst; relative to the Snakefile's folder, as ``report:`` wants."""
    landing = Path(OUT) / "report_landing.rst"
    if not landing.is_file():
        return "report/workflow.rst"
    return os.path.relpath(landing.resolve(), workflow.basedir)


_WS = workflow_sheet(config, OUT)  # wsimil.datasets.sheet: the synthetic plan, a public dataset's, or the user's sheet
SHEET, SLIDE_FILES, ANNOTATION_FILES, PLAN, LEFT_OUT = _WS.sheet, _WS.files, _WS.notes, _WS.plan, _WS.left_out


def write_sample_sheet(output, params, log):
    """The sample_sheet job: the sheet, the left-out slides, and the dataset's notes in the log."""
    write_text_atomic(output.sheet, params.sheet)
    write_text_atomic(output.excluded, params.excluded)
    notes = PLAN.notes if PLAN else []
    Path(log).write_text("".join(f"{n}\n" for n in notes) + f"{len(SHEET)} slides, {len(LEFT_OUT)} left out\n")
SYNTH_DIR = f"{OUT}/data" if SOURCE == "synthetic" else None
# ALL_SLIDES: every slide that is made, patched and extracted; SLIDES: those of data/slides.csv (the sheet of
# every experiment but ood). They differ only for a synthetic dataset with held-out hospitals, whose copies of
# the test slides are in data/slides_external.csv (wsimil.slides.synthetic.plan_dataset).
EXTERNAL = SHEET["external"].astype(bool) if "external" in SHEET.columns else pd.Series(False, index=SHEET.index)
EXTERNAL_SHEET_PATH = f"{OUT}/data/slides_external.csv" if EXTERNAL.any() else None
ALL_SLIDES = list(SHEET["slide_id"])
MAIN_SHEET = SHEET[~EXTERNAL].reset_index(drop=True)
SLIDES = list(MAIN_SHEET["slide_id"])
TUMOUR_SYNTH = [s for s in ALL_SLIDES if ANNOTATION_FILES[s]] if SYNTH_DIR else []


wildcard_constraints:
    slide=SLIDE_ID_PATTERN.strip("^$"),


def get_dataset_dir(wildcards, output):
    """The synthetic dataset folder, from data/slides.csv or data/slides/<id>.tif (the rule's first output)."""
    first = Path(output[0])
    return str(first.parent if first.name == "slides.csv" else first.parent.parent)


def get_milunit_dir(wildcards, output):
    """The unit-test folder, from its slides.csv (the rule's first output)."""
    return str(Path(output[0]).parent)


def get_results_dir(wildcards, output):
    """results/<dataset>, from a report rule's first output (tables/<name>.csv, cards/cards.csv or SUMMARY.md)."""
    first = Path(output[0])
    return str(first.parent.parent if first.parent.name in ("tables", "figures", "cards") else first.parent)


def table_stem(wildcards, output):
    """tables/<name> of a table rule whose second output is tables/<name>.csv (the CLI adds the suffixes)."""
    return output[1].removesuffix(".csv")


def patch_folder(wildcards, input):
    """The folder of the patch files (slide_table reads every slide's)."""
    return str(Path(input.patches[0]).parent)


def study_table_stem(wildcards, output):
    return next(f for f in output if f.endswith(".csv")).removesuffix(".csv")


def study_figure(wildcards, output):
    return next(f for f in output if f.endswith("focusmil_sensitivity.png"))


def download_url(wildcards):
    return PLAN.files[wildcards.rel].url


def download_md5(wildcards):
    return PLAN.files[wildcards.rel].md5 or "-"


def download_size(wildcards):
    return PLAN.files[wildcards.rel].size or "-"


# Cluster resources (profiles/slurm; docs/cluster.md). A stage asks for a GPU only when its device may use
# one; memory grows with each retry (`--retries`), so a job killed for memory is resubmitted with more.
def may_use_gpu(section):
    """Whether the torch stages of ``section`` (features, training) may run on a GPU: device not cpu."""
    return config[section]["device"] != "cpu"


def gpus(section):
    """1 GPU for the torch stages of ``section`` unless its device is cpu (0 with cluster.gpu_request gres:
    then gres() asks)."""
    return int(may_use_gpu(section) and config["cluster"]["gpu_request"] == "gpus")


def gres(section):
    """``gpu:1`` as a generic resource where the cluster wants GPUs that way (cluster.gpu_request: gres)."""
    return "gpu:1" if may_use_gpu(section) and config["cluster"]["gpu_request"] == "gres" else ""


def mem_mb(base):
    """``base`` MB on the first attempt, ``base`` x attempt on each retry."""
    return lambda wildcards, attempt: base * attempt


def conda_env(section=None):
    """The conda environment of a job (with `--sdm conda`); the CUDA one for a torch stage whose device may be a
    GPU, the CPU one otherwise."""
    return "../envs/wsimil-gpu.yaml" if section and may_use_gpu(section) else "../envs/wsimil.yaml"


def as_json(section):
    return json.dumps(config[section], sort_keys=True)


def stage_params(section):
    """A config section as its per-slide jobs get it: without slides_per_job, which changes no output (a new
    grouping must not redo the slides)."""
    return json.dumps({k: v for k, v in config[section].items() if k != "slides_per_job"}, sort_keys=True)


def patch_slides_per_job():
    """`patching.slides_per_job`, with auto resolved: 20 for the synthetic slides, 1 for slides a user brings."""
    per_job = config["patching"]["slides_per_job"]
    if per_job == "auto":
        return 20 if SOURCE == "synthetic" else 1
    return per_job


def groups_of(items, per_job):
    """``items`` (slides, methods) in consecutive groups of at most ``per_job``, as equal as possible."""
    n = -(-len(items) // max(1, per_job)) if items else 0
    size, extra = divmod(len(items), n) if n else (0, 0)
    groups, start = [], 0
    for i in range(n):
        k = size + (i < extra)
        groups.append(items[start : start + k])
        start += k
    return groups


def address_as_stage(rule_name, stage):
    """Give a rule generated per slide group (patch_<group>, extract_<group>, ...) the --set-resources and
    --set-threads of its stage's name, a profile's set-resources and set-threads included, as Snakemake gives them
    to the one-slide rule of that name (snakemake/workflow.py, `Workflow.rule`, `_parsed_overwrite_resources`), so
    `extract:mem_mb=16000` reaches every extraction job whatever `features.slides_per_job`. A setting for the
    generated name itself still wins (Snakemake applied it when the rule was defined; it is applied again here)."""
    settings = workflow.resource_settings
    generated = workflow.get_rule(rule_name)
    for name in (stage, rule_name):
        generated.resources.update(settings._parsed_overwrite_resources.get(name, {}))
        threads = settings._parsed_overwrite_threads.get(name)
        if threads is not None:
            generated.resources["_cores"] = threads


def group_name(group):
    """Rule-name-safe name of a group of slides: its first slide id, and the count when several."""
    first = re.sub(r"[^A-Za-z0-9_]", "_", group[0])
    return first if len(group) == 1 else f"{first}_and_{len(group) - 1}"


def slide_path(slide):
    """The image file of a slide id."""
    return SLIDE_FILES[slide]


def annotation_path(slide):
    """The annotation XML of a slide id, or "" when it has none."""
    return ANNOTATION_FILES[slide]


def as_input(path):
    """A user's file as an input of a job. A missing one is left out of the DAG so that only the jobs of its slide
    fail (naming it) and the other slides go on under --keep-going; files the workflow makes are always inputs."""
    return [path] if path and (SOURCE != "sheet" or Path(path).exists()) else []


def slide_inputs(slides):
    return [f for s in slides for f in as_input(slide_path(s))]


def imported_source(slide):
    """The user's feature file of a slide (dataset.source features; DSMIL also <class>/<slide>.csv); [] when
    there is none, so that only its import job fails, naming the path it expected."""
    fmt, folder = config["imported_features"]["format"], Path(config["imported_features"]["dir"])
    hits = [folder / f"{slide}.{fmt}"] + (sorted(folder.glob(f"*/{slide}.csv")) if fmt == "csv" else [])
    return [str(h) for h in hits if h.is_file()][:1]


LABELS = dict(zip(SHEET["slide_id"], SHEET["label"].astype(int)))
SPLITS = dict(zip(SHEET["slide_id"], SHEET["split"]))


# Input functions of the per-slide rules. Their `slide` wildcard takes any id (SLIDE_ID_PATTERN): a constraint
# listing every slide would be a regular expression as long as the sheet, which Snakemake substitutes into the
# rule's paths on every lookup (snakemake/io/__init__.py, apply_wildcards), so planning grew with slides x jobs.
# A job asked for a slide the sheet does not list is refused here instead.

def known_slide(wildcards):
    """The slide of a per-slide job; refused unless the sheet lists it."""
    if wildcards.slide not in SLIDE_FILES:
        raise WorkflowError(f"slide {wildcards.slide!r} is not in the sample sheet ({SHEET_PATH})")
    return wildcards.slide


def get_slide(wildcards):
    return as_input(slide_path(known_slide(wildcards)))


def get_annotation(wildcards):
    return as_input(annotation_path(known_slide(wildcards)))


def quoted_slide_path(wildcards):
    return shlex.quote(slide_path(known_slide(wildcards)))


def quoted_annotation_path(wildcards):
    return shlex.quote(annotation_path(known_slide(wildcards)))


def get_label(wildcards):
    return str(LABELS[known_slide(wildcards)])


def cell_test_slides(wildcards):
    """The test slides of a cell, as one argument list."""
    return " ".join(s for s in cell_slides(wildcards.cell) if SPLITS.get(s) == "test")


MILUNIT = f"{OUT}/milunit/seed{config['milunit']['seed']}"


def milunit_ids():
    """Bag ids of the MIL unit test, as wsimil.datasets.milunit names them."""
    return [f"{split}_{i:04d}" for split, n in config["milunit"]["bags"].items() for i in range(n)]


# Cells: the sets of runs of every experiment (wsimil.experiments; docs/experiments.md).
CELLS = {c.name: c for c in plan_cells(config)}
# The sheets experiments derive from the main one (ood: train on some hospitals, test on the others; a plugin's
# trial), by the experiment's name, each written to data/slides_<name>.csv by the cell_sheet job. The main sheet
# (SHEET_PATH) and the external one together are SHEET: a derived sheet sees every slide.
DERIVED_SHEETS = {c.sheet: derived_sheet(config, c.sheet, SHEET) for c in CELLS.values()
                  if c.sheet not in ("main", "milunit")}


# A cell whose training would repeat another's scores that cell's models instead (wsimil.experiments.reused_models).
MODELS_FROM = reused_models(config, CELLS, SHEET, MAIN_SHEET)


def models_from(cell):
    """The cell whose trained models ``cell`` scores instead of training its own, or None."""
    return MODELS_FROM[cell]


def features_dir(cell):
    kind = CELLS[cell].features
    return f"{MILUNIT}/features" if kind == "milunit" else f"{OUT}/{features_subdir(config, kind)}"


def derived_sheet_path(name):
    return f"{OUT}/data/slides_{name}.csv"


def cell_sheet(cell):
    name = CELLS[cell].sheet
    return {"main": SHEET_PATH, "milunit": f"{MILUNIT}/slides.csv"}.get(name) or derived_sheet_path(name)


def cell_slides(cell):
    name = CELLS[cell].sheet
    if name in DERIVED_SHEETS:
        return list(DERIVED_SHEETS[name]["slide_id"])
    return {"main": SLIDES, "milunit": milunit_ids()}[name]


def derived_sheet_section(wildcards):
    """The config section of the experiment that derives sheet ``wildcards.sheet``, as one JSON argument: its
    sheet() reads only that section, so only a change of it rewrites the sheet."""
    section = get_experiment(wildcards.sheet).section
    return shlex.quote(json.dumps({section: config[section]} if section else {}, sort_keys=True))


RUN_FILES = ["predictions.csv", "instance_scores.h5", "score_maps.h5", "pseudo_bags.csv", "history.csv", "model.pt",
             "run.json"]


def run_dir(cell, method, seed):
    return f"{OUT}/runs/{cell}/{method}/seed{seed}"


def cell_runs(cell):
    return [(m, s) for m in CELLS[cell].methods for s in SEEDS]


def train_outputs(cell):
    return [f"{run_dir(cell, m, s)}/{f}" for m, s in cell_runs(cell) for f in RUN_FILES]


def metrics_files(cells):
    return [f"{run_dir(c, m, s)}/metrics.json" for c in cells for m, s in cell_runs(c)]


def experiment_inputs(experiment):
    """What an experiment's tables and figures are made from: the metrics of its cells and of the cells it
    compares with (wsimil.reporting.experiments.needs)."""
    return metrics_files(needs(config, experiment))


REPORTED_RUN_FILES = [f for f in RUN_FILES if f != "model.pt"]


def run_files(cells):
    """What the report jobs read of the runs of ``cells`` besides their metrics (predictions for the intervals,
    instance scores and score maps for patch AUCs and heatmaps, DTFD's pseudo-bags for the Tier-1 claim,
    histories and run records for the curves), so that a changed run makes its tables and figures stale."""
    return [f"{run_dir(c, m, s)}/{f}" for c in cells for m, s in cell_runs(c) for f in REPORTED_RUN_FILES]


def annotation_files():
    """Every slide's annotation XML that exists (or is made): the FROC of the cards and the summary reads the
    lesions of the test slides."""
    return [f for s in ALL_SLIDES for f in as_input(annotation_path(s))]


def manifest_files(cells):
    """The feature manifests of ``cells``: the report jobs read patch labels and coordinates through them."""
    return list(dict.fromkeys(f"{OUT}/{manifest_subpath(CELLS[c])}" for c in cells))


def get_final_output():
    """Every experiment's tables and figures, the summary, and every run directory in full."""
    runs = [f for c in CELLS for f in train_outputs(c)]
    extra = [f"{OUT}/tables/runs.md"] + ([f"{OUT}/tables/slides.md"] if SOURCE != "features" else [])
    extra += [f"{OUT}/{f}" for f in card_outputs(config)]
    if "standard" in CELLS and SOURCE != "features":  # QuPath tiles of the test slides, the heatmaps' seed
        extra += [f"{OUT}/geojson/standard/{m}/seed{SEEDS[0]}" for m in CELLS["standard"].methods]
    return [f"{OUT}/{f}" for f in all_outputs(config, HAS_SLIDES)] + extra + runs + metrics_files(CELLS)


# Reports: which files the HTML report shows, and the slides the heatmaps show.

HAS_SLIDES = SOURCE != "features" and all(SLIDE_FILES.values())
HEATMAP_SLIDES = heatmap_slide_ids(MAIN_SHEET)  # two tumour and one normal test slide, the first in sheet order


CAPTIONS_DIR = str(Path(workflow.basedir) / "report" / "captions")  # figure captions of the experiments' pages
# the config's experiments first (its order), then any other an always-defined rule reports (none requested)
REPORT_ORDER = (["SUMMARY"] + list(EXPERIMENTS) + [e for e in list_experiments() if e not in EXPERIMENTS]
                + ["cards", "run records"])
# the experiments whose report_<name> job writes their tables and figures (wsimil.experiments.Experiment.write);
# the FocusMIL sensitivity study has rules of its own (rules/studies.smk)
REPORTED_EXPERIMENTS = ([e for e in list_experiments(plugins=False) if get_experiment(e).report_rule]
                        + [e.name for e in configured(config) if e.origin != "built-in" and e.report_rule])


def report_category(name):
    """The report's menu sorts categories by name: SUMMARY first, the experiments in config order, the run
    records last."""
    return f"{REPORT_ORDER.index(name) + 1:02d} {name}"


def _caption(stem, category):
    """The .rst caption of a reported table or figure: an experiment's own captions_dir (a plugin's), else the
    workflow's report/captions (a path relative to rules/, as report() wants)."""
    exp = get_experiment(category) if category in list_experiments() else None
    if exp is not None and exp.captions_dir is not None:
        return str(Path(exp.captions_dir) / f"{stem}.rst")
    return f"../report/captions/{stem}.rst"


def _reported(files, category):
    """report() for what the HTML report shows (each experiment's page, its HTML tables and PNG figures, in
    the experiment's category), plain paths for the rest."""
    out = []
    for f in files:
        stem, ext = Path(f).stem, Path(f).suffix
        if f.startswith("cards/"):
            if ext == ".html":  # the card rendered, its figure embedded
                out.append(report(f"{OUT}/{f}", caption="../report/captions/card.rst",
                                  category=report_category(category)))
            else:
                out.append(f"{OUT}/{f}")
        elif f.startswith("pages/"):
            out.append(report(f"{OUT}/{f}", caption="../report/captions/page.rst", category=report_category(category),
                              subcategory="1 page: everything with its caption"))
        elif f.startswith("tables/") and ext == ".html":
            out.append(report(f"{OUT}/{f}", caption=_caption(stem, category),
                              category=report_category(category), subcategory="2 tables"))
        elif ext == ".png":
            out.append(report(f"{OUT}/{f}", caption=_caption(stem, category),
                              category=report_category(category), subcategory="3 figures"))
        else:
            out.append(f"{OUT}/{f}")
    return out


def heatmap_inputs(experiment):
    if f"figures/heatmaps_{experiment}.png" not in experiment_outputs(config, experiment, HAS_SLIDES):
        return []
    return slide_inputs(HEATMAP_SLIDES) + [f for s in HEATMAP_SLIDES for f in as_input(annotation_path(s))]


# Training, scoring and evaluation (rules/train.smk, evaluate.smk): one named rule each, wildcards cell and method.

TRAINED_CELLS = [c for c in CELLS if not models_from(c)]
SCORED_CELLS = [c for c in CELLS if models_from(c)]


def _alternatives(names):
    return "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)) or "^$"


# one cell standing for each feature set (wsimil.experiments.feature_set): the manifests' wildcard
FEATURE_SETS = {}
for _c in CELLS.values():
    FEATURE_SETS.setdefault(feature_set(_c), _c.name)


def cell_feature_files(cell):
    """Slide id -> the feature file a cell's runs read: in the cell's feature folder, except that a poison level
    takes the clean file of every slide the poison does not target (rules/poison.smk)."""
    folder = features_dir(cell)
    if not CELLS[cell].features.startswith("poison_"):
        return {s: f"{folder}/{s}.h5" for s in cell_slides(cell)}
    clean = f"{OUT}/{features_subdir(config, 'clean')}"
    return {s: f"{folder if s in _TARGETS else clean}/{s}.h5" for s in cell_slides(cell)}


def set_features(wildcards):
    """Every feature file of a feature set (the feature_manifest job's inputs), in its slide order."""
    return list(cell_feature_files(FEATURE_SETS[wildcards.feature_set]).values())


def _cell_inputs(wildcards):
    # the cell's feature manifest (written by feature_manifest in rules/train.smk) stands for its feature files,
    # one input instead of one per slide, which keeps planning linear in the slides (benchmarks/planning.py)
    return {"features": f"{OUT}/{manifest_subpath(CELLS[wildcards.cell])}", "sheet": cell_sheet(wildcards.cell)}


def _check_method(wildcards):
    if wildcards.method not in CELLS[wildcards.cell].methods:
        raise WorkflowError(f"cell {wildcards.cell} does not train {wildcards.method}")
    return wildcards.method


def _train_overrides(wildcards):
    return json.dumps({_check_method(wildcards): cell_overrides(config, CELLS[wildcards.cell], wildcards.method)},
                      sort_keys=True)


def _run_outputs():
    return [f"{OUT}/runs/{{cell}}/{{method}}/seed{s}/{f}" for s in SEEDS for f in RUN_FILES]


def quoted_run_dirs(wildcards):
    """The run folders of a cell and method, every seed, as shell arguments."""
    return " ".join(shlex.quote(run_dir(wildcards.cell, _check_method(wildcards), s)) for s in SEEDS)


def quoted_source_run_dirs(wildcards):
    """The run folders whose models a scored cell takes (models_from), every seed, as shell arguments."""
    return " ".join(shlex.quote(run_dir(models_from(wildcards.cell), _check_method(wildcards), s)) for s in SEEDS)


def run_dir_template(wildcards):
    """A training job's run folder with ``{seed}`` left for the CLI to fill in."""
    return f"{OUT}/runs/{wildcards.cell}/{wildcards.method}/seed{{seed}}"


def parent_of_run_input(wildcards, input):
    return str(Path(input.run).parent)


def _source_runs(wildcards):
    return [f"{run_dir(models_from(wildcards.cell), wildcards.method, s)}/{f}" for s in SEEDS for f in RUN_FILES]


ANNOTATION_MANIFEST = f"{OUT}/manifests/annotations.tsv"
HAS_ANNOTATIONS = bool(annotation_files())


def _annotated(cell):
    """Whether a cell's slides have lesion annotations (the unit test's bags have none)."""
    return HAS_ANNOTATIONS and CELLS[cell].sheet != "milunit"


def _evaluate_inputs(wildcards):
    _check_method(wildcards)
    out = {
        "runs": [f"{run_dir(wildcards.cell, wildcards.method, s)}/predictions.csv" for s in SEEDS],
        **_cell_inputs(wildcards),
    }
    if _annotated(wildcards.cell):  # the lesions of the FROC, through one manifest (rules/evaluate.smk)
        out["annotations"] = ANNOTATION_MANIFEST
    return out


def evaluate_annotations(wildcards, input):
    """`--annotations <manifest>` where the cell's slides are annotated, else `--sheet` (no lesions: no FROC)."""
    if "annotations" in input.keys():
        return f"--annotations {shlex.quote(input.annotations)}"
    return f"--sheet {shlex.quote(input.sheet)}"


# The FocusMIL sensitivity study (rules/studies.smk).

def sensitivity_inputs(wildcards):
    """A problem's sheet and its training and validation feature files (none for the generated toy)."""
    if wildcards.problem == "milunit":
        ids = [b for b in milunit_ids() if not b.startswith("test_")]
        return {"sheet": f"{MILUNIT}/slides.csv", "features": [f"{MILUNIT}/features/{b}.h5" for b in ids]}
    if wildcards.problem == "standard":
        ids = [s for s, _, _ in train_val_rows(MAIN_SHEET)]
        return {"sheet": SHEET_PATH, "features": [f"{OUT}/{features_subdir(config, 'clean')}/{s}.h5" for s in ids]}
    return {}


def sensitivity_args(wildcards, input):
    if wildcards.problem == "toy":
        return ""
    return f"--slides {input.sheet} --features {Path(input.features[0]).parent}"


# The poison (rules/poison.smk): the slides it targets and its levels (the poison cell's and the dose-response
# points'), none without slides.
POISON_TARGETS = select_poisoned_slides(MAIN_SHEET, config["poison"]["targets"]) if SOURCE != "features" else []
_TARGETS = set(POISON_TARGETS)
POISON_LEVELS = {c.features: c.params for c in CELLS.values() if c.features.startswith("poison_")
                 and SOURCE != "features"}
_LEVEL_TAGS = list(POISON_LEVELS)


def poison_target(wildcards):
    """The slide of a poison job; refused unless the poison targets it."""
    if known_slide(wildcards) not in _TARGETS:
        raise WorkflowError(f"slide {wildcards.slide!r} is not a poison target: its clean features are used")
    return wildcards.slide


def get_poison_target(wildcards):
    return as_input(slide_path(poison_target(wildcards)))


def poison_params(levels):
    """Every poison level's config section as one JSON argument each, in ``levels`` order."""
    return " ".join(shlex.quote(json.dumps({**config["poison"], "strength": float(POISON_LEVELS[t]["strength"]),
                                            "fraction": float(POISON_LEVELS[t]["fraction"])}, sort_keys=True))
                    for t in levels)


def poison_outputs(slides):
    """The poisoned feature files of ``slides`` (ids or a wildcard pattern), level by level: the order of
    `wsimil poison --out`."""
    return [f"{FEATURES}/{t}/{s}.h5" for t in _LEVEL_TAGS for s in slides]


# Last, after every check of the config itself: an overlay never silently replaces another configuration's
# results (wsimil.config.check_results_folder).
check_results_folder(config, OUT)
