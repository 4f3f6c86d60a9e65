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
