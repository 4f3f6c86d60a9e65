"""Planning the experiments from the config: cells, shared points, overrides, the out-of-distribution sheet."""

import pandas as pd
import pytest

from wsimil.config import validate_config
from wsimil.experiments import cell_overrides, dose_cell, dose_levels, ood_sheet, plan_cells, poison_tag
from wsimil.io import WsimilError
from wsimil.reporting.experiments import all_outputs, experiment_outputs, needs


def _config(**over):
    cfg = {"training": {"methods": ["maxpool", "abmil"], "seeds": [0, 1]}, **over}
    return validate_config(cfg)


def test_every_experiment_is_planned_with_unique_cells_in_order():
    cfg = _config(dtfd_ablation={"pseudo_bags": [1, 4]}, minet_curves={"betas": [0.1]},
                  dose_response={"strengths": [0.5], "fractions": [1.0]})
    cells = plan_cells(cfg)
    names = [c.name for c in cells]
    assert names == ["standard", "ood", "poison", "dtfd_ablation_m1", "dtfd_ablation_m4", "minet_curves",
                     "minet_curves_beta0.1", "dose_s0.5_f0.5", "dose_s0.25_f1", "milunit"]
    by = {c.name: c for c in cells}
    assert by["poison"].features == poison_tag(0.25, 0.5, 0) == "poison_s0.25_f0.5_seed0"
    assert by["dose_s0.25_f1"].features == "poison_s0.25_f1_seed0" and by["dose_s0.25_f1"].methods == ("maxpool", "abmil")
    assert by["dtfd_ablation_m4"].methods == ("dtfd_afs",)
    assert by["dtfd_ablation_m4"].overrides == {"dtfd_afs": {"model": {"n_pseudo_bags": 4}}}
    assert by["minet_curves"].methods == ("minet", "focusmil_bs1", "focusmil_no_vib", "focusmil")
    assert by["ood"].sheet == "ood" and by["milunit"].features == "milunit"


def test_the_poison_point_of_the_dose_curves_is_the_poison_experiment_not_a_second_training():
    cfg = _config(dose_response={"strengths": [0.25, 0.5], "fractions": [0.5]})
    assert dose_levels(cfg) == [(0.25, 0.5), (0.5, 0.5)]
    assert dose_cell(cfg, 0.25, 0.5) == "poison"
    assert [c.name for c in plan_cells(cfg) if c.experiment == "dose_response"] == ["dose_s0.5_f0.5"]
    assert needs(cfg, "dose_response") == ["dose_s0.5_f0.5", "standard", "poison"]
    # without the poison experiment the point is trained by the dose-response experiment itself
    alone = _config(experiments=["standard", "dose_response"], dose_response={"strengths": [0.5], "fractions": []})
    assert [c.name for c in plan_cells(alone)] == ["standard", "dose_s0.5_f0.5", "dose_s0.25_f0.5"]


def test_cell_overrides_cap_the_published_epochs_and_add_the_swept_value():
    cfg = _config(training={"methods": ["maxpool", "dtfd_afs"], "max_epochs": 40,
                            "overrides": {"maxpool": {"epochs": 7}}},
                  dtfd_ablation={"pseudo_bags": [8]})
    cell = next(c for c in plan_cells(cfg) if c.name == "dtfd_ablation_m8")
    assert cell_overrides(cfg, cell, "dtfd_afs") == {"epochs": 40, "model": {"n_pseudo_bags": 8}}  # published 200
    standard = plan_cells(cfg)[0]
    assert cell_overrides(cfg, standard, "maxpool") == {"epochs": 7}  # an explicit override wins over the cap
    uncapped = _config(training={"methods": ["maxpool"]})
    assert cell_overrides(uncapped, plan_cells(uncapped)[0], "maxpool") == {}


def test_the_stop_rule_reaches_every_method_unless_overridden():
    rule = {"rule": "train_loss_plateau", "min_delta": 0.02, "patience": 5}
    cfg = _config(training={"methods": ["maxpool", "abmil"], "stop": rule,
                            "overrides": {"abmil": {"stop": None}}})
    standard = plan_cells(cfg)[0]
    assert cell_overrides(cfg, standard, "maxpool") == {"stop": rule}
    assert cell_overrides(cfg, standard, "abmil") == {"stop": None}  # a method's own setting wins


def _sheet():
    rows = []
    for split, n in (("train", 8), ("val", 4), ("test", 8)):
        for i in range(n):
            rows.append({"slide_id": f"{split}_{i}", "label": i % 2, "split": split, "center": i // 2 % 2,
                         "path": "", "annotation": ""})
    return pd.DataFrame(rows)


def test_ood_sheet_trains_on_the_chosen_centres_and_tests_on_the_others():
    sheet = _sheet()
    out = ood_sheet(sheet, [0])
    assert set(out.loc[out["split"].isin(["train", "val"]), "center"]) == {0}
    assert set(out.loc[out["split"] == "test", "center"]) == {1}
    held_out = sheet[sheet["center"] == 1]
    assert sorted(out.loc[out["split"] == "test", "slide_id"]) == sorted(held_out["slide_id"])  # every split
    assert len(out) == 4 + 2 + 10
    assert ood_sheet(sheet, None).equals(out)  # default: the first half of the centres
    with pytest.raises(WsimilError, match=r"ood.train_centers: \['7'\] not among"):
        ood_sheet(sheet, [7])
    with pytest.raises(WsimilError, match="none is left to test on"):
        ood_sheet(sheet, [0, 1])
    with pytest.raises(WsimilError, match="one centre"):
        ood_sheet(sheet.assign(center=0), None)
    one_class = sheet[~((sheet["center"] == 1) & (sheet["label"] == 1))]
    with pytest.raises(WsimilError, match="test slides of the held-out centres do not hold both classes"):
        ood_sheet(one_class, [0])


def test_declared_outputs_follow_the_experiments_and_the_slides():
    cfg = _config()
    std = experiment_outputs(cfg, "standard")
    assert "figures/heatmaps_standard.png" in std and "tables/standard.tex" in std
    assert "figures/heatmaps_standard.png" not in experiment_outputs(cfg, "standard", has_slides=False)
    assert "tables/poison_comparison.md" in experiment_outputs(cfg, "poison")
    only = _config(experiments=["poison"])
    assert "tables/poison_comparison.md" not in experiment_outputs(only, "poison")
    outs = all_outputs(cfg)
    assert "SUMMARY.md" in outs and len(outs) == len(set(outs))
    with pytest.raises(WsimilError, match="unknown experiment 'nope'"):
        experiment_outputs(cfg, "nope")


def _centre_sheet(centers):
    rows = [{"slide_id": f"s{i:02d}", "label": i % 2, "split": ("train", "val", "test")[i % 3], "center": c,
             "path": f"s{i:02d}.tif", "annotation": ""} for i, c in enumerate(centers)]
    return pd.DataFrame(rows)


def test_a_cell_reuses_the_standard_models_only_when_training_again_would_repeat_them():
    """reused_models (the workflow's `score` rule instead of `train`): the DTFD ablation's point at the default
    number of pseudo-bags and an ood cell with the same training slides score the standard cell's models; a
    point with other hyperparameters, or an ood cell whose training slides differ, trains its own."""
    from wsimil.experiments import reused_models

    cfg = _config(training={"methods": ["maxpool", "dtfd_afs"], "seeds": [0]}, experiments=["standard", "ood",
                  "dtfd_ablation"], dtfd_ablation={"pseudo_bags": [1, 4]}, ood={"train_centers": [0]})
    cells = {c.name: c for c in plan_cells(cfg)}
    default_m = validate_config({})["training"]  # the default M is whatever dtfd_afs publishes
    from wsimil.models.base import get_method

    published = get_method("dtfd_afs").hparams({})["model"]["n_pseudo_bags"]
    main = _centre_sheet([0] * 12)
    with_external = pd.concat([main, _centre_sheet([1] * 6).assign(slide_id=lambda d: "x" + d["slide_id"],
                                                            split="test")], ignore_index=True)
    got = reused_models(cfg, cells, with_external, main)
    assert got["standard"] is None and default_m
    assert got["dtfd_ablation_m4"] == ("standard" if published == 4 else None)
    assert got["dtfd_ablation_m1"] == ("standard" if published == 1 else None)
    assert got["ood"] == "standard"  # centre 1 holds only test slides: the training slides are the standard's
    mixed = _centre_sheet([0, 0, 1, 1] * 3)  # centre 1 now holds training slides too: ood trains on fewer
    assert reused_models(cfg, cells, mixed, mixed)["ood"] is None
    assert reused_models(cfg, {k: v for k, v in cells.items() if k != "standard"}, main, main) == {
        k: None for k in cells if k != "standard"}


def test_the_workflow_sheet_of_a_user_resolves_files_and_leaves_out_the_excluded(tmp_path):
    """workflow_sheet (what the rules read at parse time): a user's sheet, paths resolved against it for the jobs
    and relative to results/<dataset>/data/slides.csv in the copy, excluded slides named, unknown ones refused."""
    from wsimil.datasets.sheet import workflow_sheet

    (tmp_path / "in").mkdir()
    sheet = _centre_sheet([0] * 4).assign(annotation=["", "a/s01.xml", "", ""])
    sheet.to_csv(tmp_path / "in" / "slides.csv", index=False)
    cfg = validate_config({"dataset": {"name": "mine", "source": "sheet", "sheet": str(tmp_path / "in" / "slides.csv"),
                                       "exclude": ["s02"]}})
    ws = workflow_sheet(cfg, tmp_path / "results" / "mine")
    assert list(ws.sheet["slide_id"]) == ["s00", "s01", "s03"] and ws.left_out == {"s02": "dataset.exclude"}
    assert ws.files["s01"] == str(tmp_path / "in" / "s01.tif") and ws.notes["s01"] == str(tmp_path / "in" / "a/s01.xml")
    assert ws.notes["s00"] == "" and ws.plan is None
    assert ws.sheet.loc[0, "path"] == "../../../in/s00.tif"  # relative to results/mine/data/slides.csv
    cfg["dataset"]["exclude"] = ["nope"]
    with pytest.raises(WsimilError, match="dataset.exclude.*not in"):
        workflow_sheet(cfg, tmp_path / "results" / "mine")
    synthetic = workflow_sheet(validate_config({}), "results/x")
    assert synthetic.files[synthetic.sheet["slide_id"][0]].startswith("results/x/data/slides/")
