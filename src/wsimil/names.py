"""The names of the built-in methods, patch encoders and experiments, written once and readable without importing torch.

The registries read them: ``wsimil.models.base`` imports the modules named here and refuses a built-in method
registered under a name (or from a module) not listed; ``wsimil.features.extractors`` refuses an encoder not
listed. The config schema's enums of method and extractor names (``enum: {$wsimil: <list>}`` in ``schemas/``)
are filled in from here by ``wsimil.config.load_schema``, so a config is validated without any model import.
"""

from __future__ import annotations

#: built-in method -> the module of ``wsimil.models`` that registers it, in the order the docs show them
BUILTIN_METHODS: dict[str, str] = {
    "maxpool": "maxpool",
    "minet": "maxpool",
    "meanpool": "maxpool",
    "causalmil": "causalmil",
    "focusmil": "focusmil",
    "focusmil_no_vib": "focusmil",
    "focusmil_bs1": "focusmil",
    "abmil": "abmil",
    "dsmil": "dsmil",
    "transmil": "transmil",
    "clam_sb": "clam",
    "clam_mb": "clam",
    "dtfd_maxs": "dtfd",
    "dtfd_maxmins": "dtfd",
    "dtfd_mas": "dtfd",
    "dtfd_afs": "dtfd",
}

#: built-in patch encoders of ``wsimil.features.extractors``, in the order the docs show them
BUILTIN_EXTRACTORS: tuple[str, ...] = ("efficientnet_lite0", "resnet18", "resnet50_trunc", "ctranspath", "uni")


#: built-in experiment -> its module of ``wsimil.experiments``, in the order a run reports them
BUILTIN_EXPERIMENTS: dict[str, str] = {
    "standard": "standard",
    "ood": "ood",
    "poison": "poison",
    "dtfd_ablation": "dtfd_ablation",
    "minet_curves": "minet_curves",
    "dose_response": "dose_response",
    "milunit": "milunit",
    "focusmil_sensitivity": "focusmil_sensitivity",
}


def builtin_methods(module: str | None = None) -> list[str]:
    """The built-in methods, or those one module of ``wsimil.models`` registers (``"dtfd"``), in table order."""
    return [name for name, mod in BUILTIN_METHODS.items() if module is None or mod == module]


def schema_list(key: str) -> list[str]:
    """The names that ``{$wsimil: key}`` stands for in a schema, in registry order: ``methods`` (every built-in
    method), ``dtfd_methods`` (the DTFD-MIL variants), ``extractors`` or ``experiments``
    (:data:`BUILTIN_EXPERIMENTS`, the order a run reports them in)."""
    lists = {
        "methods": builtin_methods(),
        "dtfd_methods": builtin_methods("dtfd"),
        "extractors": list(BUILTIN_EXTRACTORS),
        "experiments": list(BUILTIN_EXPERIMENTS),
    }
    if key not in lists:
        raise KeyError(f"schema enum {{$wsimil: {key}}}: unknown list; known: {', '.join(lists)}")
    return lists[key]


def schema_enum(key: str) -> list[str]:
    """The ``enum:`` of a schema, as error messages list it: names sorted, the experiments in the order a run
    reports them."""
    names = schema_list(key)
    return names if key == "experiments" else sorted(names)
