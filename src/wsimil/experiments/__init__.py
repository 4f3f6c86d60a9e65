"""The experiments of the reproduction: a registry of trials (:mod:`wsimil.experiments.registry`), one module
per built-in experiment, and the cells of runs they plan (:mod:`wsimil.experiments.cells`).

``EXPERIMENTS``: the built-in experiments in the order a run reports them; :func:`list_experiments` adds the
installed plugins' (entry points in the group ``wsimil.experiments``).
"""

from wsimil.experiments.cells import (Cell, cell_overrides, dose_cell, dose_levels, experiment_cells, feature_set,
                                      features_root, features_subdir, fmt_number, manifest_subpath, ood_sheet,
                                      patch_tag, poison_tag, reused_models, train_val_rows)
from wsimil.experiments.registry import (Experiment, ExperimentReport, configured, derived_sheet, experiments_markdown, figures,
                                         get_experiment, list_experiments, needs, plan_cells, register_experiment,
                                         tables)
from wsimil.names import BUILTIN_EXPERIMENTS

EXPERIMENTS = tuple(BUILTIN_EXPERIMENTS)

__all__ = ["EXPERIMENTS", "Cell", "Experiment", "ExperimentReport", "cell_overrides", "configured", "derived_sheet",
           "dose_cell", "dose_levels", "experiment_cells", "experiments_markdown", "feature_set", "features_root", "features_subdir",
           "figures", "fmt_number", "get_experiment", "list_experiments", "manifest_subpath", "needs", "ood_sheet",
           "patch_tag", "plan_cells", "poison_tag", "register_experiment", "reused_models", "tables",
           "train_val_rows"]
