"""The experiment registry (wsimil.experiments): one module per built-in experiment, what a registration is
refused for, and how an experiment from another package enters the config, the plan and the derived sheets.

An experiment registered here is removed again after its test (``registry`` fixture): registration is
process-wide. The example package's experiment through the whole workflow: tests/test_plugins.py.
"""

import pandas as pd
import pytest

from wsimil.config import default_config, validate_config
from wsimil.experiments import registry
from wsimil.experiments import (Cell, Experiment, derived_sheet, get_experiment, list_experiments, needs, plan_cells,
                                register_experiment, reused_models)
from wsimil.io import WsimilError
from wsimil.names import BUILTIN_EXPERIMENTS


@pytest.fixture
def registry_copy(monkeypatch):
    """The registry as it is, restored after the test (a plugin registered here does not leak)."""
    list_experiments()
    saved = dict(registry.EXPERIMENT_REGISTRY)
    yield registry.EXPERIMENT_REGISTRY
    registry.EXPERIMENT_REGISTRY.clear()
    registry.EXPERIMENT_REGISTRY.update(saved)


def _as_plugin(monkeypatch, origin="plugin test (tests, package tests)"):
    monkeypatch.setattr(registry, "_origin", [origin])


class Shuffled(Experiment):
    """Labels of the training slides reversed in order (a made-up trial): cells on clean features, a derived sheet."""

    name = "shuffled"
    description = "made-up trial"
    section = "shuffled"
    section_schema = {"type": "object", "additionalProperties": False,
                      "properties": {"keep": {"type": "integer", "minimum": 0, "default": 2}}}
    derives_sheet = True
    report_rule = False  # these tests plan it; they write no report

    def cells(self, config):
        return [Cell("shuffled", "shuffled", "clean", "shuffled", tuple(config["training"]["methods"]))]

    def sheet(self, config, sheet):
        out = sheet.copy()
        fit = out["split"] == "train"
        out.loc[fit, "label"] = list(reversed(out.loc[fit, "label"].tolist()))
        return out.iloc[: len(out) - config["shuffled"]["keep"] + 2]

    def reads(self, config, planned):
        return ["shuffled", "standard", "no_such_cell"]


def test_every_builtin_experiment_is_its_own_module_in_registry_order():
    assert list_experiments(plugins=False) == list(BUILTIN_EXPERIMENTS)
    for name, module in BUILTIN_EXPERIMENTS.items():
        exp = get_experiment(name)
        assert type(exp).__module__ == f"wsimil.experiments.{module}" and exp.origin == "built-in"
        assert exp.name == name and exp.description
    assert [c.experiment for c in plan_cells(default_config())] == sorted(
        (c.experiment for c in plan_cells(default_config())), key=list(BUILTIN_EXPERIMENTS).index)


def test_unknown_experiment_names_the_close_one():
    with pytest.raises(WsimilError, match="unknown experiment 'standrad'; did you mean 'standard'"):
        get_experiment("standrad")


@pytest.mark.parametrize("attrs, message", [
    ({"name": "Bad-Name"}, "experiment name 'Bad-Name' must be lower case"),
    ({"name": "standard"}, "experiment 'standard' is registered twice \\(first by built-in\\)"),
    ({"name": "x1", "section": "training", "section_schema": {"type": "object"}}, "config section 'training' is wsimil's own"),
    ({"name": "x2", "section": "poison", "section_schema": {"type": "object"}}, "config section 'poison' is wsimil's own"),
    ({"name": "x3", "section": "x3"}, "section 'x3' needs a section_schema"),
    ({"name": "x4", "derives_sheet": True}, "derives_sheet but defines no sheet\\(\\)"),
    ({"name": "x5", "report_rule": True}, "has a report_<name> job \\(report_rule\\) but defines no write\\(\\)"),
])
def test_a_plugin_registration_is_refused_with_its_origin_and_problem(registry_copy, monkeypatch, attrs, message):
    _as_plugin(monkeypatch)
    cls = type("Bad", (Experiment,), {"description": "x", **attrs})
    with pytest.raises(WsimilError, match=f"plugin test \\(tests, package tests\\).*{message}|{message}"):
        register_experiment(cls)
    assert attrs["name"] not in registry_copy or registry_copy[attrs["name"]].origin == "built-in"


def test_a_builtin_experiment_must_be_listed_in_names():
    cls = type("Unlisted", (Experiment,), {"name": "unlisted", "__module__": "wsimil.experiments.unlisted"})
    with pytest.raises(WsimilError, match="'unlisted' is not listed under module 'unlisted'"):
        register_experiment(cls)


def test_a_plugin_experiment_enters_the_config_the_plan_and_its_sheet(registry_copy, monkeypatch):
    _as_plugin(monkeypatch)
    register_experiment(Shuffled)
    assert list_experiments()[-1] == "shuffled" and get_experiment("shuffled").origin.startswith("plugin test")
    config = validate_config({"experiments": ["shuffled", "standard"], "training": {"methods": ["maxpool"]}})
    assert config["shuffled"] == {"keep": 2}  # the section's defaults, filled in like a built-in section's
    with pytest.raises(WsimilError, match="config key 'shuffled.keep': -1 is less than the minimum of 0"):
        validate_config({"experiments": ["shuffled"], "shuffled": {"keep": -1}})
    # registry order, not the config's: the built-ins first
    assert [c.name for c in plan_cells(config)] == ["standard", "shuffled"]
    assert needs(config, "shuffled") == ["shuffled", "standard"]  # a cell the plan does not hold is left out
    sheet = pd.DataFrame({"slide_id": ["a", "b", "c", "d"], "label": [0, 1, 1, 0],
                          "split": ["train", "train", "train", "test"]})
    out = derived_sheet(config, "shuffled", sheet)
    assert list(out["label"]) == [1, 1, 0, 0]
    with pytest.raises(WsimilError, match="experiment standard derives no sample sheet"):
        derived_sheet(config, "standard", sheet)
    # the derived sheet's training labels differ from the main sheet's: its cell trains its own models
    cells = {c.name: c for c in plan_cells(config)}
    assert reused_models(config, cells, sheet, sheet) == {"standard": None, "shuffled": None}
    # with the same training and validation rows it would repeat the standard cell: it scores those models
    monkeypatch.setattr(Shuffled, "sheet", lambda self, config, sheet: sheet)
    assert reused_models(config, cells, sheet, sheet) == {"standard": None, "shuffled": "standard"}


def test_a_derived_sheet_may_not_invent_slides_or_drop_columns(registry_copy, monkeypatch):
    _as_plugin(monkeypatch)
    register_experiment(Shuffled)
    config = validate_config({"experiments": ["shuffled"], "shuffled": {"keep": 0}})
    sheet = pd.DataFrame({"slide_id": ["a", "b"], "label": [0, 1], "split": ["train", "test"]})
    monkeypatch.setattr(Shuffled, "sheet", lambda self, c, s: pd.concat([s, s.assign(slide_id=["x", "y"])]))
    with pytest.raises(WsimilError, match="its sheet\\(\\) returned 2 slides the sample sheet does not list"):
        derived_sheet(config, "shuffled", sheet)
    monkeypatch.setattr(Shuffled, "sheet", lambda self, c, s: s.drop(columns=["split"]))
    with pytest.raises(WsimilError, match="returned no columns \\['split'\\]"):
        derived_sheet(config, "shuffled", sheet)


def test_the_cli_lists_every_experiment_and_the_docs_table(capsys):
    from wsimil.cli import main

    main(["experiments"])
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed[: len(BUILTIN_EXPERIMENTS)] == list(BUILTIN_EXPERIMENTS)
    main(["experiments", "--markdown"])
    table = capsys.readouterr().out
    assert all(f"| `{n}` |" in table for n in BUILTIN_EXPERIMENTS)


def test_cell_sheet_writes_the_ood_sheet_as_ood_sheet_did(tmp_path):
    """`wsimil cell-sheet --experiment ood` (the workflow's cell_sheet job) gives the file `wsimil ood-sheet`
    gives, the held-out hospital's slides included through --external."""
    from wsimil.cli import main

    rows = [{"slide_id": f"s{i}", "label": i % 2, "split": ["train", "val", "test"][i % 3], "center": (i // 2) % 2,
             "path": f"s{i}.tif", "annotation": ""} for i in range(12)]
    pd.DataFrame(rows).to_csv(tmp_path / "slides.csv", index=False)
    ext = [{**r, "slide_id": f"{r['slide_id']}_h2", "center": 2, "split": "test"} for r in rows[:6]]
    pd.DataFrame(ext).to_csv(tmp_path / "slides_external.csv", index=False)
    main(["ood-sheet", "--sheet", str(tmp_path / "slides.csv"), "--external", str(tmp_path / "slides_external.csv"),
          "--train-centers", "0", "--out", str(tmp_path / "old.csv")])
    main(["cell-sheet", "--experiment", "ood", "--section", '{"ood": {"train_centers": [0]}}',
          "--sheet", str(tmp_path / "slides.csv"), "--external", str(tmp_path / "slides_external.csv"),
          "--out", str(tmp_path / "new.csv")])
    assert (tmp_path / "new.csv").read_bytes() == (tmp_path / "old.csv").read_bytes()
    assert "s0_h2" in (tmp_path / "new.csv").read_text()


def test_the_architecture_docs_show_the_registry_as_the_cli_prints_it():
    from pathlib import Path

    from wsimil.experiments import experiments_markdown

    text = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text()
    assert experiments_markdown() in text
