"""The config schema: defaults, closed sections, clear errors, and no drift from the registries."""

from pathlib import Path

import pytest
import yaml

from wsimil.config import load_config, load_schema, validate_config
from wsimil.features.extractors import list_extractors
from wsimil.io import WsimilError
from wsimil.models.base import list_methods

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", [ROOT / "config.yaml", *sorted((ROOT / "configs").glob("*.yaml"))])
def test_shipped_configs_are_valid(path):
    cfg = load_config(path)
    assert cfg["training"]["methods"] and cfg["features"]["extractor"] in list_extractors()


def test_defaults_are_filled_in_nested_sections():
    cfg = validate_config({"patching": {"patch_size": 64}})
    assert cfg["patching"]["patch_size"] == 64 and cfg["patching"]["target_mpp"] == 1.0
    assert cfg["training"]["seeds"] == [0, 1, 2]
    assert cfg["synthetic"]["slides"]["train"]["normal"] >= 1
    assert cfg["poison"]["targets"] == [{"split": ["train", "val"], "label": [0]}, {"split": ["test"], "label": [1]}]


def test_schema_enums_match_the_registries():
    props = load_schema()["properties"]
    assert sorted(props["training"]["properties"]["methods"]["items"]["enum"]) == list_methods()
    assert sorted(props["training"]["properties"]["overrides"]["propertyNames"]["enum"]) == list_methods()
    assert sorted(props["features"]["properties"]["extractor"]["enum"]) == sorted(list_extractors())


def _every_key_documented(schema, path="config"):
    for key, sub in schema.get("properties", {}).items():
        assert "description" in sub, f"{path}.{key} has no description"
        if path != "config":
            assert "default" in sub or key in schema.get("required", []), f"{path}.{key} has no default"
        if sub.get("type") == "object":
            assert sub.get("additionalProperties") is False or "propertyNames" in sub, f"{path}.{key} is open"
            _every_key_documented(sub, f"{path}.{key}")


def test_every_key_is_documented_closed_and_defaulted():
    _every_key_documented(load_schema())


@pytest.mark.parametrize(
    "config, expected",
    [
        ({"training": {"methods": ["maxpool", "transformer9000"]}}, r"training\.methods\.1.*allowed values: abmil"),
        ({"training": {"method": ["maxpool"]}}, r"'training'.*'method' was unexpected.*allowed keys: .*methods"),
        ({"features": {"extractor": "vit_giant"}}, r"features\.extractor.*allowed values: " + ", ".join(list_extractors())),
        ({"patching": {"target_mpp": -1}}, r"patching\.target_mpp"),
        ({"poison": {"fraction": 1.5}}, r"poison\.fraction"),
        ({"training": {"overrides": {"focusmil": {"model": {"gamma": 1}}}}}, r"training\.overrides\.focusmil.*model\.beta"),
        ({"experiments": ["standard", "odd"]}, r"experiments\.1.*allowed values: standard, ood, poison"),
        ({"dataset": {"name": "../etc"}}, r"dataset\.name"),
    ],
)
def test_bad_values_name_the_key_and_the_choices(config, expected):
    with pytest.raises(WsimilError, match=expected):
        validate_config(config)


def test_load_config_errors_name_the_file(tmp_path):
    with pytest.raises(WsimilError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"trainng": {}}))
    with pytest.raises(WsimilError, match=r"(?s)bad\.yaml.*'trainng' was unexpected"):
        load_config(bad)


def test_write_config_round_trips_and_software_lists_versions(tmp_path):
    from wsimil.config import default_config, load_config, write_config, write_software

    cfg = default_config()
    write_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    write_software(tmp_path / "software.yaml")
    import torch
    import yaml

    info = yaml.safe_load((tmp_path / "software.yaml").read_text())
    assert info["torch"] == str(torch.__version__) and "wsimil" in info and "git_commit" in info


def test_results_folder_guard(tmp_path):
    from wsimil.config import check_results_folder, config_differences, default_config, write_config
    from wsimil.io import WsimilError

    base = default_config()
    check_results_folder(base, tmp_path)  # no record yet: nothing to protect
    write_config(base, tmp_path / "config.yaml")
    check_results_folder(base, tmp_path)  # the same configuration resumes
    faster = {**base, "training": {**base["training"], "threads": 4}}
    check_results_folder(faster, tmp_path)  # execution-only keys do not count
    other = {**base, "training": {**base["training"], "seeds": [0]}}
    with pytest.raises(WsimilError, match=r"holds the results of another configuration .*training\.seeds.*results_dir"):
        check_results_folder(other, tmp_path)
    check_results_folder({**other, "replace_results": True}, tmp_path)
    newer = {**base, "added_section": {"x": 1}}  # a newer schema's key the record lacks
    assert config_differences(base, newer) == []
