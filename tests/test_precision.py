"""The precision setting: bf16 autocast training, float32 scoring, float16 feature storage."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from wsimil.features.store import write_features
from wsimil.models.base import get_method, list_methods
from wsimil.training.data import load_bags, pack
from wsimil.training.loop import autocast, bf16_native, resolve_precision, train
from wsimil.training.run import train_and_write

from test_training import toy_bags

needs_bf16 = pytest.mark.skipif(not bf16_native("cpu"), reason="this CPU has no native bfloat16 (AVX512-BF16/AMX)")


def _bags(dim=48, sizes=(300, 120, 500, 80)):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(n, dim, generator=g) for n in sizes]


@pytest.mark.parametrize("method", list_methods())
def test_bf16_forward_matches_fp32_and_backward_gives_fp32_grads(method):
    """Under bf16 autocast each model scores close to fp32 (same ranking of instances) and trains:
    a finite float32 loss and float32, finite gradients on float32 weights."""
    bags = _bags()
    batch = pack(bags, [1, 0, 1, 0])
    spec = get_method(method)
    torch.manual_seed(0)
    model = spec.build(48, spec.hparams()).eval()
    with torch.no_grad():
        ref = model(batch)
        with autocast("cpu", "bf16"):
            low = model(batch)
    scale = ref.bag_logits.abs().max().item() + 1e-3
    assert (low.bag_logits.float() - ref.bag_logits).abs().max().item() <= 0.02 * scale + 1e-3
    corr = np.corrcoef(ref.instance_scores.numpy(), low.instance_scores.float().numpy())[0, 1]
    assert corr > 0.999, f"{method}: instance scores under bf16 correlate {corr:.5f} with fp32"

    model.train()
    with autocast("cpu", "bf16"):
        out = model(batch)
        losses = model.loss(out, batch)
    assert losses["loss"].dtype == torch.float32 and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


@needs_bf16
@pytest.mark.parametrize("method", ["maxpool", "abmil", "dtfd_afs"])
def test_bf16_training_learns_the_toy_problem(method):
    bags = toy_bags(seed=3)
    fast = {"maxpool": {"lr": 1e-3}, "abmil": {}, "dtfd_afs": {}}[method]
    result = train(bags, method, seed=0, overrides={"epochs": 15, **fast}, precision="bf16")
    assert result.precision == "bf16"
    assert result.history[result.best_epoch]["val_auc"] >= 0.95


def test_precision_names_are_checked_and_auto_resolves():
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        resolve_precision("fp16", "cpu")
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("auto", "cpu") == ("bf16" if bf16_native("cpu") else "fp32")


def test_fp32_training_is_unchanged_by_the_autocast_context():
    """precision fp32 is the reference: two runs with the same seed give identical histories."""
    bags = toy_bags(seed=1)
    a = train(bags, "maxpool", seed=4, overrides={"epochs": 3}, precision="fp32")
    b = train(bags, "maxpool", seed=4, overrides={"epochs": 3})
    assert pd.DataFrame(a.history).equals(pd.DataFrame(b.history))


def test_features_are_read_into_one_array_float16_when_all_files_are(tmp_path):
    rng = np.random.default_rng(0)
    feats = {"s0": rng.normal(size=(30, 8)).astype(np.float16), "s1": rng.normal(size=(20, 8)).astype(np.float16)}
    for sid, f in feats.items():
        write_features(tmp_path / f"{sid}.h5", f, np.zeros((len(f), 2), np.int64))
    sheet = pd.DataFrame({"slide_id": ["s0", "s1"], "label": [1, 0], "split": ["train", "train"]})
    bags = load_bags(sheet, tmp_path)
    assert [b.dtype for b in bags.features] == [torch.float16, torch.float16]
    assert bags.features[1].data_ptr() == bags.features[0].data_ptr() + 30 * 8 * 2  # views of one array
    batch = pack(bags.features[::-1], bags.labels[::-1])
    assert batch.x.dtype == torch.float32 and batch.x.shape == (50, 8)
    np.testing.assert_array_equal(batch.x[:20].numpy(), feats["s1"].astype(np.float32))
    np.testing.assert_array_equal(batch.x[20:].numpy(), feats["s0"].astype(np.float32))
    assert pack(bags.features, bags.labels, torch.bfloat16).x.dtype == torch.bfloat16
    # one float32 file: everything is held in float32, values unchanged
    write_features(tmp_path / "s1.h5", feats["s1"].astype(np.float32), np.zeros((20, 2), np.int64))
    bags = load_bags(sheet, tmp_path)
    assert [b.dtype for b in bags.features] == [torch.float32, torch.float32]
    np.testing.assert_array_equal(bags.features[0].numpy(), feats["s0"].astype(np.float32))


@needs_bf16
def test_run_json_records_the_precision(tmp_path):
    bags = toy_bags(n=(8, 4, 4))
    for sid, x in zip(bags.slide_ids, bags.features):
        write_features(tmp_path / "f" / f"{sid}.h5", x.numpy().astype(np.float16), np.zeros((len(x), 2), int))
    sheet = pd.DataFrame({"slide_id": bags.slide_ids, "label": bags.labels, "split": bags.splits})
    out = tmp_path / "run"
    train_and_write(sheet, tmp_path / "f", "maxpool", [0], [out], {"epochs": 2}, progress=False, precision="auto")
    assert json.loads((out / "run.json").read_text())["precision"] == "bf16"
