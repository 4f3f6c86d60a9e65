"""The built-in method and extractor names are written once (wsimil.names): the registries register exactly them,
the config schema's enums are filled in from them without importing torch, and the docs' tables are generated."""

import fnmatch
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from wsimil.cli import main
from wsimil.config import load_schema, validate_config
from wsimil.features import extractors as ex
from wsimil.io import WsimilError
from wsimil.models import base
from wsimil.models.base import get_method, list_methods, methods_markdown, register_method
from wsimil.models.dtfd import DISTILL
from wsimil.names import BUILTIN_EXTRACTORS, BUILTIN_METHODS, builtin_methods, schema_enum

ROOT = Path(__file__).resolve().parents[1]
METHOD_ENUMS = (
    ("training", "methods", "items"),
    ("training", "overrides", "propertyNames"),
    ("minet_curves", "methods", "items"),
    ("dose_response", "methods", "items"),
)


def _registered_builtins() -> set[str]:
    return {name for name in list_methods() if get_method(name).origin == "built-in"}


def _section(schema: dict, *path: str) -> dict:
    node = schema
    for key in path:
        node = node["properties"][key] if key in node.get("properties", {}) else node[key]
    return node


def _python(code: str, pythonpath: tuple = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, pythonpath))}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def _table(text: str, header: str) -> str:
    start = text.index(header)
    end = text.find("\n\n", start)
    return text[start:end if end >= 0 else None].strip()


# -- the schema ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", METHOD_ENUMS, ids=".".join)
def test_schema_method_enums_are_the_registered_builtins(path):
    enum = _section(load_schema(), *path)["enum"]
    assert len(enum) == len(set(enum)) and set(enum) == _registered_builtins()


def test_schema_extractor_enum_is_the_extractor_registry():
    enum = load_schema()["properties"]["features"]["properties"]["extractor"]["enum"]
    assert set(enum) == set(ex.list_extractors()) and len(enum) == len(ex.EXTRACTORS)
    assert load_schema("features.schema.yaml")["properties"]["features"]["properties"]["extractor"]["enum"] == enum


def test_schema_dtfd_enum_is_the_dtfd_family():
    enum = load_schema()["properties"]["dtfd_ablation"]["properties"]["method"]["enum"]
    family = {n for n in _registered_builtins() if get_method(n).builder.__module__ == "wsimil.models.dtfd"}
    assert set(enum) == family and len(family) == 4
    assert load_schema()["properties"]["dtfd_ablation"]["properties"]["method"]["default"] in family


def _enums(node):
    if isinstance(node, dict):
        if "enum" in node:
            yield node["enum"]
        for value in node.values():
            yield from _enums(value)
    elif isinstance(node, list):
        for value in node:
            yield from _enums(value)


@pytest.mark.parametrize("path", sorted((ROOT / "schemas").glob("*.yaml")), ids=lambda p: p.name)
def test_no_schema_file_types_builtin_names(path):
    names = set(BUILTIN_METHODS) | set(BUILTIN_EXTRACTORS)
    for enum in _enums(yaml.safe_load(path.read_text())):
        if isinstance(enum, list):
            assert not names & set(map(str, enum)), f"{path.name}: {enum} (write enum: {{$wsimil: <list>}})"
        else:
            assert set(enum) == {"$wsimil"}, enum


def test_an_unknown_schema_list_is_refused(monkeypatch, tmp_path):
    from wsimil import config

    (tmp_path / "s.yaml").write_text("type: string\nenum: {$wsimil: method}\n")
    monkeypatch.setattr(config, "SCHEMA_DIR", tmp_path)
    with pytest.raises(WsimilError, match="unknown list; known: methods, dtfd_methods, extractors"):
        config.load_schema.__wrapped__("s.yaml")


def test_unknown_names_are_reported_with_the_builtins():
    builtins = re.escape(", ".join(sorted(BUILTIN_METHODS)))
    with pytest.raises(WsimilError, match=r"training\.methods\.1.*allowed values: " + builtins):
        validate_config({"training": {"methods": ["maxpool", "transformer9000"]}})
    with pytest.raises(WsimilError, match=r"dtfd_ablation\.method': 'abmil' is not allowed; allowed values: "
                       + re.escape(", ".join(schema_enum("dtfd_methods")))):
        validate_config({"dtfd_ablation": {"method": "abmil"}})
    with pytest.raises(WsimilError, match=r"training\.overrides.*allowed values: " + builtins):
        validate_config({"training": {"overrides": {"nomethod": {}}}})


def test_validating_a_config_imports_no_torch():
    code = textwrap.dedent(f"""
        import sys
        from wsimil.config import load_config, load_schema, validate_config
        from wsimil.io import WsimilError
        from wsimil.names import builtin_methods
        load_schema()
        validate_config({{"training": {{"methods": builtin_methods()}}, "dtfd_ablation": {{"method": "dtfd_mas"}},
                         "features": {{"extractor": "uni"}}, "minet_curves": {{"methods": ["minet"]}}}})
        load_config({str(ROOT / "config.yaml")!r})
        try:
            validate_config({{"features": {{"extractor": "vit_giant"}}}})
        except WsimilError as exc:
            assert "allowed values: ctranspath" in str(exc), exc
        else:
            raise AssertionError("an unknown extractor was accepted")
        assert "torch" not in sys.modules, sorted(m for m in sys.modules if m.startswith("wsimil"))
    """)
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_a_plugin_widens_the_method_enums_of_its_config_only(tmp_path):
    text = (ROOT / "examples" / "wsimil-example-plugin" / "src" / "wsimil_example_plugin" / "__init__.py").read_text()
    (tmp_path / "pooling.py").write_text(text.replace('"example_mixpool"', '"my_mixpool"'))
    code = textwrap.dedent("""
        from wsimil.config import load_schema, validate_config
        from wsimil.names import schema_enum
        c = validate_config({"training": {"methods": ["maxpool", "pooling:MixPool"], "overrides": {"my_mixpool": {}}},
                             "minet_curves": {"methods": ["my_mixpool"]}})
        assert c["training"]["methods"] == ["maxpool", "my_mixpool"], c["training"]
        methods = load_schema()["properties"]["training"]["properties"]["methods"]
        assert methods["items"]["enum"] == schema_enum("methods"), methods
        try:
            validate_config({"dtfd_ablation": {"method": "my_mixpool"}, "plugins": ["pooling:MixPool"]})
        except Exception as exc:
            assert "dtfd_ablation.method" in str(exc), exc
        else:
            raise AssertionError("a plugin method was accepted as a DTFD variant")
    """)
    proc = _python(code, (tmp_path,))
    assert proc.returncode == 0, proc.stderr[-2000:]


# -- the registries --------------------------------------------------------------------------------------------


def test_the_method_registry_registers_the_table():
    assert _registered_builtins() == set(BUILTIN_METHODS)
    for name, module in BUILTIN_METHODS.items():
        assert get_method(name).builder.__module__ == f"wsimil.models.{module}", name
    assert builtin_methods("dtfd") == [f"dtfd_{d}" for d in DISTILL]


def test_a_builtin_outside_the_table_is_refused():
    for module, name in (("wsimil.models.fake", "fake_mil"), ("wsimil.models.abmil", "maxpool")):
        code = compile("register_method(name, family='other', defaults={}, description='', source='')", module, "exec")
        with pytest.raises(WsimilError, match=f"built-in method '{name}' is not listed under module"):
            exec(code, {"__name__": module, "register_method": register_method, "name": name})
    assert "fake_mil" not in base.METHODS


def test_a_table_name_without_registration_is_refused(monkeypatch):
    monkeypatch.setattr(base, "BUILTIN_METHODS", {**BUILTIN_METHODS, "ghost_mil": "maxpool"})
    monkeypatch.setattr(base, "_builtins_loaded", False)
    with pytest.raises(WsimilError, match=r"lists names that no module registered: \['ghost_mil'\]"):
        list_methods()


def test_the_extractor_registry_registers_the_table():
    assert set(ex.EXTRACTORS) == set(BUILTIN_EXTRACTORS) and len(BUILTIN_EXTRACTORS) == len(set(BUILTIN_EXTRACTORS))
    with pytest.raises(ValueError, match="'vit_giant' is not listed in wsimil.names.BUILTIN_EXTRACTORS"):
        ex.register_extractor("vit_giant", dim=8, description="")(lambda **kw: None)
    assert "vit_giant" not in ex.EXTRACTORS


def test_every_builtin_has_a_fixed_colour():
    from wsimil.reporting.figures import _FIXED_COLOURS

    assert set(_FIXED_COLOURS) == set(BUILTIN_METHODS)


# -- the docs --------------------------------------------------------------------------------------------------


def test_readme_methods_table_is_generated():
    assert _table((ROOT / "README.md").read_text(), "| family | methods |") == methods_markdown()


def test_methods_doc_extractor_table_is_generated():
    text = (ROOT / "docs" / "methods.md").read_text()
    assert _table(text, "| extractor | network |") == ex.extractors_markdown()


def test_the_cli_prints_the_tables(capsys):
    assert main(["methods", "--markdown"]) == 0
    assert capsys.readouterr().out.strip() == methods_markdown()
    assert main(["extractors", "--markdown"]) == 0
    assert capsys.readouterr().out.strip() == ex.extractors_markdown()


def test_methods_doc_describes_and_tabulates_every_builtin_once():
    text = (ROOT / "docs" / "methods.md").read_text()
    described = re.findall(r"`([a-z0-9_]+)`", " ".join(re.findall(r"^\*\*.*?\*\* —", text, re.M)))
    assert sorted(n for n in described if n in BUILTIN_METHODS) == sorted(BUILTIN_METHODS)
    table = _table(text, "| method | optimiser, lr, weight decay |").splitlines()[2:]
    named = [n for row in table for pattern in re.findall(r"`([a-z0-9_*]+)`", row.split("|")[1])
             for n in fnmatch.filter(BUILTIN_METHODS, pattern)]
    assert sorted(named) == sorted(BUILTIN_METHODS)


def test_the_experiments_enum_and_default_are_the_experiment_registry():
    """`experiments:` accepts exactly the registered built-in experiments and defaults to all of them in registry
    order; an unknown name is refused with the list."""
    from wsimil.config import load_schema, validate_config
    from wsimil.experiments import EXPERIMENTS, list_experiments
    from wsimil.io import WsimilError

    exp = load_schema()["properties"]["experiments"]
    assert exp["items"]["enum"] == exp["default"] == list(EXPERIMENTS) == list_experiments(plugins=False)
    assert validate_config({})["experiments"] == list(EXPERIMENTS)
    with pytest.raises(WsimilError, match="'nope' is not allowed; allowed values: standard, ood, poison, dtfd_ablation"):
        validate_config({"experiments": ["nope"]})
