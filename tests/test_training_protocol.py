"""The training protocol shared by every method: earliest-epoch ties, selection blindness, the fit gate, the
loss-plateau convergence test and the pre-registered stopping rule (docs/methods.md, "Model selection")."""

import json
import math

import numpy as np
import pytest

from wsimil.config import validate_config
from wsimil.datasets.toy import separable_bags
from wsimil.io import WsimilError
from wsimil.models.base import get_method, list_methods
from wsimil.training.loop import (FIT_BAR, PLATEAU_MIN_DELTA, PLATEAU_WINDOW, PlateauStop, TrainResult,
                                  loss_plateaued, make_stop_rule, predict, safe_auc, select_epoch, selection_blind,
                                  train)
from wsimil.training.run import write_run


def toy_bags(seed=0, n=(40, 12, 24)):
    return separable_bags(seed, n, 32, 6.0)


def rows(val_auc=None, val_loss=None, train_bce=None):
    n = len(next(v for v in (val_auc, val_loss, train_bce) if v is not None))
    out = []
    for i in range(n):
        r = {"epoch": i, "train_loss": 1.0, "train_bce": 1.0 if train_bce is None else train_bce[i]}
        if val_auc is not None:
            r["val_auc"] = val_auc[i]
        r["val_loss"] = 0.5 if val_loss is None else val_loss[i]
        out.append(r)
    return out


# -- 1. ties go to the earliest epoch -------------------------------------------------------------------------

def test_val_auc_selection_is_the_auc_alone_and_ties_keep_the_earliest_epoch():
    # epoch 2 ties epoch 1's AUC with a lower validation loss: the AUC alone decides, so epoch 1 stays
    hist = rows(val_auc=[0.8, 0.9, 0.9, 0.85], val_loss=[0.6, 0.5, 0.1, 0.4])
    assert select_epoch("val_auc", hist) == 1
    assert select_epoch("val_auc", rows(val_auc=[0.7, 0.7, 0.7])) == 0
    assert select_epoch("val_loss", rows(val_auc=[0.5] * 4, val_loss=[0.6, 0.4, 0.4, 0.5])) == 1
    assert select_epoch("last", rows(val_auc=[0.9, 0.8, 0.7])) == 2
    # validation of one class (AUC undefined every epoch): the validation loss decides, ties still earliest
    nan = float("nan")
    assert select_epoch("val_auc", rows(val_auc=[nan] * 4, val_loss=[0.6, 0.3, 0.3, 0.5])) == 1
    with pytest.raises(ValueError, match="unknown selection"):
        select_epoch("val_f1", rows(val_auc=[0.5]))


def test_training_keeps_the_earliest_of_tied_epochs():
    # lr 0: the model never changes, so every epoch ties on validation AUC (and loss): epoch 0 is kept
    bags = toy_bags()
    for selection in ("val_auc", "val_loss"):
        res = train(bags, "maxpool", 0, {"epochs": 4, "lr": 0.0, "selection": selection})
        assert len({r["val_auc"] for r in res.history}) == 1
        assert res.best_epoch == 0 and res.val_auc_ties == 3, selection
    last = train(bags, "maxpool", 0, {"epochs": 4, "lr": 0.0, "selection": "last"})
    assert last.best_epoch == 3 and last.selected_last_epoch


# -- 2. selection blindness -----------------------------------------------------------------------------------

def test_selection_blind_needs_the_ceiling_and_another_epoch_at_it():
    assert selection_blind(rows(val_auc=[0.8, 1.0, 1.0, 0.9]), 1)
    assert selection_blind(rows(val_auc=[0.8, 1.0 - 1e-12, 1.0]), 1)  # within the tolerance
    assert not selection_blind(rows(val_auc=[0.8, 1.0, 0.9]), 1)  # at the ceiling alone: validation told
    assert not selection_blind(rows(val_auc=[0.9, 0.95, 0.95]), 1)  # a tie below the ceiling
    assert not selection_blind(rows(val_auc=[0.99, 0.999999]), 1)
    assert not selection_blind(rows(val_auc=[float("nan")] * 3), 0)
    assert not selection_blind([], 0)
    res = TrainResult(None, {}, rows(val_auc=[0.7, 1.0, 1.0]), 1, 0.0)
    assert res.selection_blind and res.val_auc_ties == 1


# -- 3. the fit gate ------------------------------------------------------------------------------------------

def test_fit_gate_an_untrained_run_does_not_fit_a_trained_one_does():
    bags = toy_bags()
    untrained = train(bags, "maxpool", 0, {"epochs": 1, "lr": 0.0})
    assert math.isfinite(untrained.final_train_auc) and untrained.final_train_auc < FIT_BAR
    assert not untrained.fits and math.isfinite(untrained.final_train_loss)
    trained = train(bags, "maxpool", 0, {"epochs": 10, "lr": 1e-3})
    assert trained.final_train_auc >= FIT_BAR and trained.fits
    assert trained.final_train_loss < untrained.final_train_loss


def test_fit_gate_scores_the_last_epoch_model_not_the_selected_one():
    bags = toy_bags()
    over = {"epochs": 6, "lr": 1e-3}
    selected = train(bags, "maxpool", 0, {**over, "selection": "val_auc"})
    last = train(bags, "maxpool", 0, {**over, "selection": "last"})  # same trajectory, returns the last model
    assert selected.best_epoch < len(selected.history) - 1  # selection kept an earlier epoch
    train_idx = bags.indices("train")
    pred = predict(last.model, bags, train_idx)
    assert selected.final_train_auc == pytest.approx(safe_auc(bags.labels[train_idx], pred.probs), abs=1e-12)
    assert selected.final_train_loss == pytest.approx(pred.loss, rel=1e-9)
    # ... and not the selected model, which train() returns
    assert predict(selected.model, bags, train_idx).loss != pytest.approx(selected.final_train_loss, rel=1e-6)


def test_fits_is_false_when_the_training_auc_is_undefined():
    res = TrainResult(None, {}, rows(val_auc=[0.5]), 0, 0.0, final_train_auc=float("nan"))
    assert not res.fits
    assert TrainResult(None, {}, [], 0, 0.0, final_train_auc=FIT_BAR).fits


# -- 4. convergence from the loss trajectory ------------------------------------------------------------------

def test_loss_plateaued_on_synthetic_curves():
    w, d = PLATEAU_WINDOW, PLATEAU_MIN_DELTA
    falling = [0.9 ** k for k in range(30)]  # ~41% lower over a window
    assert not loss_plateaued(falling, w, d)
    assert loss_plateaued([0.3] * 20, w, d)
    assert loss_plateaued([0.3 + 0.001 * k for k in range(20)], w, d)  # rising: not still falling
    slow = [1.0 - 0.001 * k for k in range(20)]  # 0.5% lower than the window before: within min_delta
    assert loss_plateaued(slow, w, d) and not loss_plateaued(slow, w, 0.001)
    assert not loss_plateaued([0.3] * (2 * w - 1), w, d)  # too short: cannot tell
    assert not loss_plateaued([], w, d)
    assert not loss_plateaued([1.0, 0.5, 0.5, 0.5], 2, d) and loss_plateaued([1.0, 0.5, 0.5, 0.5], 1, d)
    with pytest.raises(ValueError, match="window"):
        loss_plateaued([1.0] * 4, 0, d)
    with pytest.raises(ValueError, match="min_delta"):
        loss_plateaued([1.0] * 4, 1, -0.1)


def test_trainresult_loss_plateaued_reads_train_bce_before_train_loss():
    flat_bce = [{"train_loss": 1.0 - 0.05 * k, "train_bce": 0.2} for k in range(10)]
    assert TrainResult(None, {}, flat_bce, 9, 0.0).loss_plateaued  # judged on the flat data term
    no_bce = [{"train_loss": 1.0 - 0.05 * k} for k in range(10)]
    assert not TrainResult(None, {}, no_bce, 9, 0.0).loss_plateaued


# -- 5. the pre-registered stopping rule ----------------------------------------------------------------------

def stop_epoch(losses, **kw):
    rule = PlateauStop(**kw)
    for epoch, v in enumerate(losses):
        if rule.step(epoch, {"train_loss": 9.0, "train_bce": v}):
            return epoch
    return None


def test_plateau_stop_stops_after_patience_epochs_without_a_relative_improvement():
    # best 0.7 at epoch 2; 0.698, 0.699, 0.697 are within 1% of it: the third of them (epoch 5) stops the run
    curve = [1.0, 0.8, 0.7, 0.698, 0.699, 0.697, 0.5]
    assert stop_epoch(curve, min_delta=0.01, patience=3) == 5
    assert stop_epoch(curve, min_delta=0.001, patience=3) is None  # 0.698 and 0.697 now count as improvements
    assert stop_epoch([1.0, 0.995, 0.992, 0.5], min_delta=0.01, patience=2) == 2
    # an improvement resets the count
    assert stop_epoch([1.0, 0.995, 0.9, 0.899, 0.898], min_delta=0.01, patience=2) == 4
    assert stop_epoch([1.0, 0.5, 0.25, 0.125], min_delta=0.01, patience=1) is None


def test_stop_rule_is_validated_naming_the_key():
    assert make_stop_rule(None) is None
    assert isinstance(make_stop_rule({"rule": "train_loss_plateau", "min_delta": 0.01, "patience": 10}), PlateauStop)
    for bad, key in [({"rule": "val_plateau"}, "stop.rule"), ({"rule": "train_loss_plateau", "patience": 0}, "stop.patience"),
                     ({"rule": "train_loss_plateau", "patience": 2.5}, "stop.patience"),
                     ({"rule": "train_loss_plateau", "min_delta": -0.1}, "stop.min_delta"),
                     ({"rule": "train_loss_plateau", "min_delta": float("nan")}, "stop.min_delta"),
                     ({"rule": "train_loss_plateau", "window": 3}, "stop.window"), ({"patience": 3}, "stop.rule"),
                     ("plateau", "stop")]:
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            make_stop_rule(bad)


def test_every_method_defaults_to_no_stop_rule():
    assert all(get_method(m).hparams()["stop"] is None for m in list_methods())


def test_training_stops_on_a_plateau_and_records_why():
    bags = toy_bags()
    stop = {"rule": "train_loss_plateau", "min_delta": 0.01, "patience": 2}
    # lr 0: the training loss is flat, so the rule stops after epoch 2 (epochs 1 and 2 did not improve)
    flat = train(bags, "maxpool", 0, {"epochs": 20, "lr": 0.0, "stop": stop})
    assert len(flat.history) == 3 and flat.stopped_by == "plateau"
    # the run stops where the rule, replayed on its own history, says
    learning = train(bags, "maxpool", 0, {"epochs": 40, "lr": 1e-2, "stop": stop})
    replay = stop_epoch([r["train_bce"] for r in learning.history], min_delta=0.01, patience=2)
    if learning.stopped_by == "plateau":
        assert replay == len(learning.history) - 1
    else:
        assert learning.stopped_by == "schedule" and replay in (None, 39) and len(learning.history) == 40
    # never beyond the published epochs, and max_steps first when it comes first
    assert train(bags, "maxpool", 0, {"epochs": 2, "lr": 0.0, "stop": stop}).stopped_by == "schedule"
    capped = train(bags, "maxpool", 0, {"epochs": 20, "lr": 0.0, "stop": {**stop, "patience": 5}, "max_steps": 10})
    assert capped.stopped_by == "max_steps" and capped.steps == 10 and len(capped.history) == 2
    # a method's own early stopping still runs beside it (lr 0: validation loss never improves)
    early = train(bags, "maxpool", 0, {"epochs": 20, "lr": 0.0, "stop": {**stop, "patience": 5},
                                       "early_stopping": {"monitor": "val_loss", "patience": 1, "min_epochs": 0}})
    assert early.stopped_by == "early_stopping" and len(early.history) == 2
    with pytest.raises(ValueError, match=r"stop\.rule"):
        train(bags, "maxpool", 0, {"epochs": 2, "stop": {"rule": "nope"}})


def test_schema_accepts_and_refuses_training_stop():
    assert validate_config({})["training"]["stop"] is None
    cfg = validate_config({"training": {"stop": {"rule": "train_loss_plateau"}}})
    assert cfg["training"]["stop"] == {"rule": "train_loss_plateau", "min_delta": 0.01, "patience": 10}
    for bad, where in [({"rule": "val_auc"}, r"training\.stop\.rule"), ({"rule": "train_loss_plateau", "patience": 0},
                                                                      r"training\.stop\.patience"),
                       ({"rule": "train_loss_plateau", "min_delta": -1}, r"training\.stop\.min_delta"),
                       ({"rule": "train_loss_plateau", "every": 2}, r"training\.stop.*every"), ({}, r"training\.stop")]:
        with pytest.raises(WsimilError, match=where):
            validate_config({"training": {"stop": bad}})
    with pytest.raises(WsimilError, match=r"training\.overrides\.maxpool.*stop\.patience"):
        validate_config({"training": {"overrides": {"maxpool": {"stop": {"rule": "train_loss_plateau", "patience": 0}}}}})


# -- run.json -------------------------------------------------------------------------------------------------

def test_run_json_records_the_protocol(tmp_path):
    bags = toy_bags(n=(16, 6, 6))
    res = train(bags, "maxpool", 0, {"epochs": 3, "lr": 1e-3})
    write_run(tmp_path / "run", bags, res, {"method": "maxpool", "seed": 0})
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["selection_blind"] == res.selection_blind and isinstance(meta["selection_blind"], bool)
    assert meta["final_train_auc"] == pytest.approx(res.final_train_auc)
    assert meta["final_train_loss"] == pytest.approx(res.final_train_loss)
    assert meta["fits_training_set"] == res.fits and meta["fit_bar"] == FIT_BAR
    assert meta["loss_plateaued"] is False  # 3 epochs: too short to tell
    assert meta["stopped_by"] == "schedule" and "selected_last_epoch" in meta
    assert meta["hparams"]["stop"] is None
    # JSON has no NaN: an undefined training AUC is written as null
    nan = TrainResult(res.model, res.hparams, res.history, res.best_epoch, 0.0, final_train_auc=float("nan"))
    write_run(tmp_path / "nan", bags, nan, {"method": "maxpool", "seed": 0})
    meta = json.loads((tmp_path / "nan" / "run.json").read_text())
    assert meta["final_train_auc"] is None and meta["fits_training_set"] is False
