"""wsimil: max-pooling vs attention multiple-instance learning on whole-slide images, from slides to figures.

The public API for a method of your own (docs/methods.md, "Your own method"): ``MILModel``, ``MILBatch``,
``MILOutput``, ``register_method``, ``list_methods``, ``get_method``, ``check_method``; for an experiment of your
own (docs/architecture.md, "Add an experiment"): ``Experiment``, ``ExperimentReport``, ``Cell``,
``register_experiment``, ``list_experiments``, ``get_experiment``, ``tables``, ``figures``. They are imported on
first use, so ``import wsimil`` (and the command line) stays light.
"""

__version__ = "0.1.0"

_METHODS = ("MILModel", "MILBatch", "MILOutput", "register_method", "list_methods", "get_method", "check_method")
_EXPERIMENTS = ("Experiment", "ExperimentReport", "Cell", "register_experiment", "list_experiments", "get_experiment",
                "tables", "figures")
_PUBLIC = _METHODS + _EXPERIMENTS
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _METHODS:
        from wsimil.models import base

        return getattr(base, name)
    if name in _EXPERIMENTS:
        import wsimil.experiments as experiments

        return getattr(experiments, name)
    raise AttributeError(f"module 'wsimil' has no attribute {name!r}")
