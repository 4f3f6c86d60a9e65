"""wsimil: max-pooling vs attention multiple-instance learning on whole-slide images, from slides to figures.

The public API for a method of your own (docs/methods.md, "Your own method"): ``MILModel``, ``MILBatch``,
``MILOutput``, ``register_method``, ``list_methods``, ``get_method``, ``check_method``. They are imported on first
use, so ``import wsimil`` (and the command line) stays light.
"""

__version__ = "0.1.0"

_PUBLIC = ("MILModel", "MILBatch", "MILOutput", "register_method", "list_methods", "get_method", "check_method")
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        from wsimil.models import base

        return getattr(base, name)
    raise AttributeError(f"module 'wsimil' has no attribute {name!r}")
