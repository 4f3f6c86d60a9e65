"""The workflow config: load, validate against ``schemas/``, fill defaults.

Used by the Snakefile before any job runs and by the CLI, so a wrong key, an unknown method or a bad
value stops everything at once with a message that names the key and the allowed values.
"""

from __future__ import annotations

import copy
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, validators

from wsimil.io import WsimilError, excerpt, schema_message
from wsimil.names import schema_enum, schema_list

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"


def _pointer(doc: Any, pointer: str) -> Any:
    for part in [p for p in pointer.split("/") if p]:
        doc = doc[part]
    return doc


def _resolve_refs(node: Any, base: Path, doc: Any) -> Any:
    """Inline every ``$ref`` (``file.yaml[#/pointer]`` or ``#/pointer`` within the current file).

    Our sections live in their own files; inlining gives one plain schema for the validator and keeps
    the keys written beside a ``$ref`` (description, default), which override the referenced ones.
    """
    if isinstance(node, dict):
        ref = node.get("$ref")
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        if isinstance(ref, str):
            fname, _, pointer = ref.partition("#")
            target_doc = yaml.safe_load((base / fname).read_text()) if fname else doc
            target = {k: v for k, v in _pointer(target_doc, pointer).items() if k != "$schema"}
            if fname and target.get("type") == "object":
                target.setdefault("default", {})  # so a section's own defaults are filled in
            merged = {**target, **siblings}
            return _resolve_refs(merged, base, target_doc)
        return {k: _resolve_refs(v, base, doc) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve_refs(v, base, doc) for v in node]
    return node


def _fill_enums(node: Any) -> Any:
    """Replace every ``enum: {$wsimil: <list>}`` with the built-in names it stands for, sorted, and every
    ``default: {$wsimil: <list>}`` with them in registry order (:mod:`wsimil.names`)."""
    if isinstance(node, dict):
        for key, names in (("enum", schema_enum), ("default", schema_list)):
            marker = node.get(key)
            if isinstance(marker, dict) and "$wsimil" in marker:
                if set(marker) != {"$wsimil"}:
                    raise WsimilError(f"schema: a {key} mapping must be {{$wsimil: <list>}}, got {marker!r}")
                try:
                    node = {**node, key: names(marker["$wsimil"])}
                except KeyError as exc:
                    raise WsimilError(str(exc.args[0])) from None
        return {k: _fill_enums(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill_enums(v) for v in node]
    return node


@lru_cache(maxsize=None)
def load_schema(name: str = "config.schema.yaml") -> dict:
    """The schema ``schemas/<name>`` with its ``$ref``s inlined and its enums of built-in names filled in."""
    doc = yaml.safe_load((SCHEMA_DIR / name).read_text())
    resolved = _fill_enums(_resolve_refs(doc, SCHEMA_DIR, doc))
    resolved.pop("$defs", None)
    return resolved


def _with_defaults(validator_class):
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if "default" in sub and prop not in instance:
                    instance[prop] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


_DefaultFiller = _with_defaults(Draft202012Validator)


def _describe(err) -> str:
    key = ".".join(str(p) for p in err.absolute_path) or "<top level>"
    msg = schema_message(err)
    if err.validator == "enum":
        msg = f"{excerpt(err.instance)} is not allowed; allowed values: {', '.join(map(str, err.validator_value))}"
    elif err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        msg = f"{msg}; allowed keys: {', '.join(allowed)}"
    elif err.validator == "propertyNames":
        msg = f"{msg}; allowed: {', '.join(map(str, err.schema.get('propertyNames', {}).get('enum', [])))}"
    return f"config key '{key}': {msg}"


_METHOD_LISTS = (("training", "methods"), ("minet_curves", "methods"), ("dose_response", "methods"))


def _with_plugin_methods(config: dict, schema: dict) -> dict:
    """Methods from other packages: resolve ``package.module:attribute`` entries of the method lists into the
    names they register, and let every enum of method names accept the installed plugins' methods. Touches
    nothing (and imports no model) when the config names built-in methods only."""
    builtin = schema_enum("methods")
    named = [m for a, b in _METHOD_LISTS for m in ((config.get(a) or {}).get(b) or []) if isinstance(m, str)]
    named += list(((config.get("training") or {}).get("overrides") or {}))
    plugins = config.get("plugins") or []
    if all(m in builtin for m in named) and not plugins:
        return schema
    from wsimil.models.base import list_methods, resolve_method

    if not isinstance(plugins, list) or not all(isinstance(r, str) for r in plugins):
        raise WsimilError(f"config key 'plugins': a list of package.module:attribute strings, got {plugins!r}")
    for ref in plugins:  # a run's record: the modules its methods came from, imported again in every job
        resolve_method(ref)
    for a, b in _METHOD_LISTS:
        section = config.get(a)
        if isinstance(section, dict) and isinstance(section.get(b), list):
            resolved = []
            for m in section[b]:
                if isinstance(m, str) and ":" in m:
                    resolved += resolve_method(m)
                    plugins.append(m) if m not in plugins else None
                else:
                    resolved.append(m)
            section[b] = list(dict.fromkeys(resolved))
    if plugins:
        config["plugins"] = plugins
    names = list_methods()
    schema = copy.deepcopy(schema)  # load_schema's cached copy keeps the built-in enums

    def widen(node):
        if isinstance(node, dict):
            if node.get("enum") == builtin:
                node["enum"] = names
            for v in node.values():
                widen(v)
        elif isinstance(node, list):
            for v in node:
                widen(v)

    widen(schema)
    return schema


def _with_plugin_experiments(config: dict, schema: dict) -> dict:
    """Experiments from other packages (entry points in the group ``wsimil.experiments``): when the config names
    one, or has a top-level key the built-in schema does not know, let ``experiments:`` accept every installed
    experiment and add each plugin's config section with its schema (defaults filled in like the built-ins')."""
    named = config.get("experiments")
    builtin = set(schema_list("experiments"))
    wants = (isinstance(named, list) and any(isinstance(e, str) and e not in builtin for e in named)) \
        or any(k not in schema["properties"] for k in config)
    if not wants:
        return schema
    from wsimil.experiments.registry import EXPERIMENT_REGISTRY, list_experiments

    names = list_experiments()
    plugins = [EXPERIMENT_REGISTRY[n] for n in names if EXPERIMENT_REGISTRY[n].origin != "built-in"]
    if not plugins:
        return schema
    schema = copy.deepcopy(schema)
    schema["properties"]["experiments"]["items"]["enum"] = names
    for e in plugins:
        if e.section is not None:
            section = copy.deepcopy(dict(e.section_schema or {}))
            section.setdefault("default", {})
            schema["properties"][e.section] = section
    return schema


def validate_config(config: dict, source: str | os.PathLike | None = None) -> dict:
    """Validate ``config`` in place (filling defaults, twice so nested defaults are validated too) and return it."""
    schema = _with_plugin_experiments(config, _with_plugin_methods(config, load_schema()))
    where = f" ({source})" if source else ""
    for _ in range(2):
        errors = sorted(_DefaultFiller(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
        if errors:
            lines = "\n  ".join(_describe(e) for e in errors[:10])
            raise WsimilError(f"invalid configuration{where}:\n  {lines}")
    _check_overrides(config)
    return config


def _check_overrides(config: dict) -> None:
    overrides = config.get("training", {}).get("overrides", {})
    if not overrides:
        return  # importing the model registry imports torch: ~1.5 s that synth and patch jobs need not pay
    from wsimil.models.base import get_method

    for method, over in overrides.items():
        try:
            hp = get_method(method).hparams(over)
        except WsimilError as exc:
            raise WsimilError(f"invalid configuration: config key 'training.overrides.{method}': {exc}") from None
        if over.get("stop") is None:
            continue
        from wsimil.training.loop import make_stop_rule  # (sklearn too: only for a config that sets one)

        try:  # a method's own stopping rule, checked here as the schema checks training.stop
            make_stop_rule(hp["stop"])
        except ValueError as exc:
            raise WsimilError(f"invalid configuration: config key 'training.overrides.{method}': {exc}") from None


def load_config(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise WsimilError(f"config file not found: {path}")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise WsimilError(f"cannot parse config {path}: {exc}") from exc
    return validate_config(config, path)


def merge_configs(base: dict, overlay: dict) -> dict:
    """``overlay`` on ``base`` the way Snakemake merges ``--configfile`` files: mappings update key by key,
    anything else (lists included) is replaced."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = merge_configs(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_merged_config(paths: "list[str | os.PathLike]") -> dict:
    """Read each YAML file (checked to exist and parse), merge them in order, validate the result."""
    merged: dict = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise WsimilError(f"config file not found: {path}")
        try:
            merged = merge_configs(merged, yaml.safe_load(path.read_text()) or {})
        except yaml.YAMLError as exc:
            raise WsimilError(f"cannot parse config {path}: {exc}") from exc
    return validate_config(merged, " + ".join(map(str, paths)))


def write_config(config: dict, path: str | os.PathLike) -> None:
    """Write a validated config as YAML (atomically), keys in schema order, loadable by :func:`load_config`."""
    from wsimil.io import write_text_atomic

    plain = json.loads(json.dumps(config, default=str))  # Snakemake's config may hold non-plain mappings
    write_text_atomic(path, yaml.safe_dump(plain, sort_keys=False, default_flow_style=None, width=110))


def write_software(path: str | os.PathLike) -> None:
    """Write the versions of Python and the packages the workflow runs with, and the git commit, as YAML."""
    from wsimil.io import write_text_atomic
    from wsimil.training.run import git_commit, software_versions

    info = {"git_commit": git_commit(), **{k: str(v) for k, v in software_versions().items()}}
    write_text_atomic(path, yaml.safe_dump(info, sort_keys=False))


def write_run_record(config: dict, config_path: str | os.PathLike, software_path: str | os.PathLike,
                     log_path: str | os.PathLike) -> None:
    """The workflow's record of a run: its merged config and its software (what `rule run_config` writes)."""
    write_config(config, config_path)
    write_software(software_path)
    Path(log_path).write_text(f"wrote {config_path} and {software_path}\n")


def default_config() -> dict:
    return validate_config({})


# Keys that change how a run is executed, never what it computes: a config differing only in them may reuse
# (and resume) another's results folder. dataset.exclude changes what is computed, but leaving out a slide that
# cannot be read and running again is the documented recovery (docs/data.md), and SUMMARY.md lists it.
EXECUTION_KEYS = frozenset({
    "dataset.exclude",
    "synthetic.slides_per_job", "patching.slides_per_job", "features.slides_per_job", "features.num_workers",
    "features.batch_size", "training.threads", "download.parallel",
    "results_dir", "replace_results", "limits",
})


def config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two validated configs, execution-only keys and keys the old
    config does not have (a newer schema's additions at their defaults) left out."""
    out: list[str] = []
    for key, value in new.items():
        dotted = f"{prefix}{key}"
        if dotted in EXECUTION_KEYS or key not in old:
            continue
        if isinstance(value, dict) and isinstance(old[key], dict):
            out += config_differences(old[key], value, dotted + ".")
        elif json.dumps(old[key], sort_keys=True, default=str) != json.dumps(value, sort_keys=True, default=str):
            out.append(dotted)
    return out


def check_results_folder(config: dict, out_dir: str | os.PathLike) -> None:
    """Refuse a configuration that would overwrite another's results in ``out_dir`` (its ``config.yaml``, the
    run record of the configuration that wrote it), saying how to run it elsewhere."""
    path = Path(out_dir) / "config.yaml"
    if str(config.get("replace_results")).lower() == "true" or not path.is_file():
        return
    try:
        old = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return  # an unreadable record is rewritten by the run; nothing to compare
    diff = config_differences(old, json.loads(json.dumps(config, default=str)))
    if diff:
        shown = ", ".join(diff[:8]) + (f" and {len(diff) - 8} more" if len(diff) > 8 else "")
        raise WsimilError(
            f"{out_dir} holds the results of another configuration ({path} differs in {shown}); this run would "
            f"replace them. Give it its own folder: results_dir: {Path(out_dir).parent}/<name> in your overlay "
            "(or --config results_dir=...); or, to replace them on purpose, --config replace_results=true"
        )
