"""The oracle ceiling of DTFD-MIL's Tier-1 AUC: a hand-made slide's exact ceiling, input checks, and the
``pseudo_bag`` map of a real (random-weight) DTFD model matching the pseudo-bags ``group_scores`` gives."""

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from wsimil.evaluation.ceiling import oracle_rows, pseudo_bag_tumour, tier1_ceiling
from wsimil.features.store import write_features
from wsimil.io import WsimilError
from wsimil.models.base import get_method
from wsimil.training.data import BagSet, pack
from wsimil.training.loop import predict

# slide "t": 8 patches, tumour in patches 1 (a trace: any tumour counts) and 6; M = 4 pseudo-bags of two patches
T_FRACTION = np.array([0, 1e-6, 0, 0, 0, 0, 1.0, 0])
T_ASSIGN = np.array([0, 0, 1, 1, 2, 2, 3, 3])  # tumour in pseudo-bags 0 and 3
N_ASSIGN = np.array([3, 2, 1, 0, 0, 1, 2, 3])  # slide "n": normal, 8 patches, 4 pseudo-bags


def _write_run(run, maps=True, normal_fraction=True, feats=None):
    """A run folder (pseudo_bags.csv, score_maps.h5) and feature files for slides t (tumour) and n (normal)."""
    run.mkdir(parents=True, exist_ok=True)
    rows = [{"slide_id": s, "label": lab, "split": "test", "pseudo_bag": k, "score": 0.5}
            for s, lab in (("t", 1), ("n", 0)) for k in range(4)]
    rows.append({"slide_id": "v", "label": 1, "split": "val", "pseudo_bag": 0, "score": 0.5})  # another split
    pd.DataFrame(rows).to_csv(run / "pseudo_bags.csv", index=False)
    with h5py.File(run / "score_maps.h5", "w") as f:
        g = f.create_group("attention")
        for s in ("t", "n", "v"):
            g.create_dataset(s, data=np.full(8, 0.125, np.float32))
        if maps:
            g = f.create_group("pseudo_bag")
            g.create_dataset("t", data=T_ASSIGN.astype(np.float32))
            g.create_dataset("n", data=N_ASSIGN.astype(np.float32))
    feats = feats or run.parent / "features"
    feats.mkdir(exist_ok=True)
    coords = np.stack([np.arange(8) * 256, np.zeros(8)], 1).astype(np.int64)
    write_features(feats / "t.h5", np.zeros((8, 3), np.float32), coords, T_FRACTION)
    write_features(feats / "n.h5", np.zeros((8, 3), np.float32), coords, np.zeros(8) if normal_fraction else None)
    return lambda sid: feats / f"{sid}.h5"


def test_pseudo_bag_tumour_on_a_hand_made_slide():
    assert pseudo_bag_tumour(T_ASSIGN, T_FRACTION, 4).tolist() == [True, False, False, True]
    assert pseudo_bag_tumour(T_ASSIGN.astype(np.float32), T_FRACTION, 5).tolist() == [True, False, False, True, False]
    assert pseudo_bag_tumour(N_ASSIGN, np.zeros(8), 4).tolist() == [False] * 4


def test_pseudo_bag_tumour_refuses_bad_input():
    with pytest.raises(ValueError, match="8 pseudo-bag indices but 7 tumour fractions"):
        pseudo_bag_tumour(T_ASSIGN, T_FRACTION[:7], 4)
    with pytest.raises(ValueError, match=r"integers in \[0, 3\)"):
        pseudo_bag_tumour(T_ASSIGN, T_FRACTION, 3)
    with pytest.raises(ValueError, match="integers"):
        pseudo_bag_tumour(T_ASSIGN + 0.5, T_FRACTION, 4)
    with pytest.raises(ValueError, match="NaN"):
        pseudo_bag_tumour(T_ASSIGN, np.where(T_ASSIGN == 1, np.nan, 0.0), 4)


def test_hand_made_run_gives_the_ceiling_by_hand(tmp_path):
    path_of = _write_run(tmp_path / "run")
    rows = oracle_rows(tmp_path / "run", path_of)
    assert list(rows.columns) == ["slide_id", "pseudo_bag", "label", "oracle"]
    assert rows["slide_id"].tolist() == ["t"] * 4 + ["n"] * 4  # the test split only
    assert rows["oracle"].tolist() == [1, 0, 0, 1, 0, 0, 0, 0]
    # 4 positive pseudo-bags x 4 negative: the 2 with tumour beat every negative (8 pairs), the 2 without tie
    # every negative (8 pairs x 1/2): (8 + 4) / 16
    assert tier1_ceiling(rows) == 0.75
    assert tier1_ceiling(rows) == roc_auc_score(rows["label"], rows["oracle"])
    assert np.isnan(tier1_ceiling(rows[rows["label"] == 1]))  # one class


def test_oracle_rows_errors_name_the_file(tmp_path):
    path_of = _write_run(tmp_path / "old", maps=False)
    with pytest.raises(WsimilError, match=r"old/score_maps\.h5: no 'pseudo_bag' map.*retrain"):
        oracle_rows(tmp_path / "old", path_of)
    path_of = _write_run(tmp_path / "nofrac", normal_fraction=False, feats=tmp_path / "f2")
    with pytest.raises(WsimilError, match=r"f2/n\.h5: no tumor_fraction"):
        oracle_rows(tmp_path / "nofrac", path_of)
    path_of = _write_run(tmp_path / "run", feats=tmp_path / "f3")
    with pytest.raises(WsimilError, match=r"run/score_maps\.h5: map 'pseudo_bag' has no entry for slide 'v'"):
        oracle_rows(tmp_path / "run", path_of, split="val")
    with h5py.File(tmp_path / "run" / "score_maps.h5", "a") as f:  # the map and the features disagree
        del f["pseudo_bag/t"]
        f["pseudo_bag"].create_dataset("t", data=np.zeros(7, np.float32))
    with pytest.raises(WsimilError, match=r"score_maps\.h5 / .*t\.h5: slide 't': 7 pseudo-bag indices but 8"):
        oracle_rows(tmp_path / "run", path_of)
    with pytest.raises(WsimilError, match=r"pseudo-bag file not found: .*nothing/pseudo_bags\.csv"):
        oracle_rows(tmp_path / "nothing", path_of)


def test_dtfd_pseudo_bag_map_matches_group_scores(tmp_path):
    """A random-weight DTFD-MIL: every patch is assigned, each slide's map holds as many distinct pseudo-bags as
    group_scores gives it rows, and map index k is group_scores' k-th non-empty pseudo-bag."""
    torch.manual_seed(0)
    sizes = (9, 2, 12, 4, 1, 7)  # bags smaller than M = 4 have fewer (non-empty) pseudo-bags
    feats = [torch.randn(n, 6) for n in sizes]
    ids = [f"s{i}" for i in range(len(sizes))]
    labels = np.array([1, 0, 1, 0, 1, 0])
    bags = BagSet(ids, labels, np.array(["test"] * len(sizes)), feats)
    spec = get_method("dtfd_afs")
    model = spec.build(6, spec.hparams({"model": {"n_pseudo_bags": 4, "hidden": 8, "attention_hidden": 4}}))
    pred = predict(model, bags, np.arange(len(sizes)))
    assert set(pred.score_maps) == {"attention", "pseudo_bag"}
    for i, n in enumerate(sizes):
        pb = pred.score_maps["pseudo_bag"][i]
        assert pb.shape == (n,) and np.isfinite(pb).all() and (pb == np.round(pb)).all()
        assert sorted(np.unique(pb).astype(int).tolist()) == list(range(len(pred.group_scores[i])))
        assert len(pred.group_scores[i]) == min(n, 4)
    # the numbering: bag alone, global pseudo-bag ids from the forward pass, Tier-1 score of the k-th kept one
    model.eval()
    with torch.no_grad():
        for i in (0, 1, 2):
            out = model(pack([feats[i]], [int(labels[i])]))
            group = out.extras["pseudo_bag"].numpy()
            kept = np.flatnonzero(out.extras["tier1_valid"].numpy())
            pb = pred.score_maps["pseudo_bag"][i].astype(int)
            np.testing.assert_array_equal(kept[pb], group)  # k -> the k-th non-empty global pseudo-bag
            tier1 = torch.sigmoid(out.extras["tier1_logits"]).numpy()[kept]
            np.testing.assert_allclose(pred.group_scores[i], tier1, rtol=1e-5, atol=1e-6)

    # end to end through write_run: the run's own files give the oracle rows
    from wsimil.training.loop import TrainResult
    from wsimil.training.run import write_run

    rng = np.random.default_rng(1)
    fdir = tmp_path / "features"
    fdir.mkdir()
    fractions = {}
    for sid, x, lab in zip(ids, feats, labels):
        tf = (rng.random(len(x)) < 0.3).astype(np.float32) * lab  # tumour patches on positive slides only
        fractions[sid] = tf
        write_features(fdir / f"{sid}.h5", x.numpy(), np.zeros((len(x), 2), np.int64), tf)
    result = TrainResult(model=model, hparams=spec.hparams({}), history=[], best_epoch=0, seconds=0.0)
    write_run(tmp_path / "run", bags, result, {"method": "dtfd_afs", "seed": 0})
    rows = oracle_rows(tmp_path / "run", lambda s: fdir / f"{s}.h5")
    assert rows.groupby("slide_id", sort=False).size().tolist() == [len(g) for g in pred.group_scores]
    for i, sid in enumerate(ids):
        pb = pred.score_maps["pseudo_bag"][i].astype(int)
        want = [int((fractions[sid][pb == k] > 0).any()) for k in range(len(pred.group_scores[i]))]
        assert rows.loc[rows["slide_id"] == sid, "oracle"].tolist() == want
    assert tier1_ceiling(rows) == roc_auc_score(rows["label"], rows["oracle"])


def test_heatmaps_leave_out_the_pseudo_bag_assignment(monkeypatch):
    from wsimil.reporting import heatmaps

    seen = {}

    class Stop(Exception):
        pass

    def check(slides, methods, scores):
        seen["methods"] = list(methods)
        raise Stop

    monkeypatch.setattr(heatmaps, "_check", check)
    with pytest.raises(Stop):
        heatmaps.plot_heatmaps([], ["dtfd_afs (Grad-CAM probability)", "dtfd_afs (attention)",
                                    "dtfd_afs (pseudo_bag)"], {}, "x.png")
    assert seen["methods"] == ["dtfd_afs (Grad-CAM probability)", "dtfd_afs (attention)"]
