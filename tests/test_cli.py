"""The command line: what the rules call and what users type."""

import json

import numpy as np
import pandas as pd
import pytest

from wsimil.cli import _parse_sets, main
from wsimil.features.store import write_features
from wsimil.io import WsimilError
from wsimil.models.base import list_methods


def test_methods_lists_every_method_with_its_defaults(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in list_methods():
        assert f"{name}  [" in out
    assert "bags_per_batch=1" in out and "beta=0.01" in out


def test_extractors_lists_the_registry(capsys):
    assert main(["extractors"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet_lite0  dim=1280" in out and "resnet50_trunc  dim=1024" in out


def test_set_values_are_parsed_as_yaml():
    assert _parse_sets(["lr=1e-3", "model.hidden=[64, 32]", "nesterov=true"]) == {
        "lr": 1e-3, "model.hidden": [64, 32], "nesterov": True}
    with pytest.raises(WsimilError, match="key=value"):
        _parse_sets(["lr"])


def test_unsafe_slide_id_is_refused_before_touching_a_path(tmp_path, capsys):
    code = main(["patch", "--slide", str(tmp_path / "x.tif"), "--slide-id", "../../etc/passwd", "--out", str(tmp_path / "o.h5")])
    assert code == 2
    assert "invalid slide id '../../etc/passwd'" in capsys.readouterr().err
    assert not (tmp_path / "o.h5").exists()


def test_bad_params_name_the_key(tmp_path, capsys):
    code = main(["patch", "--slide", str(tmp_path / "x.tif"), "--slide-id", "s1", "--out", str(tmp_path / "o.h5"),
                 "--params", json.dumps({"patch_sise": 64})])
    assert code == 2
    assert "'patch_sise' was unexpected" in capsys.readouterr().err


@pytest.fixture
def tiny_features(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        split = ("train", "train", "val", "test")[i % 4]
        label = (i // 4) % 2
        x = rng.normal(size=(10, 8)) + (3.0 if label else 0.0) * (np.arange(10) < 2)[:, None]
        write_features(tmp_path / "f" / f"s{i}.h5", x.astype(np.float16), np.zeros((10, 2), int))
        rows.append({"slide_id": f"s{i}", "label": label, "split": split, "center": 0, "path": "", "annotation": ""})
    pd.DataFrame(rows).to_csv(tmp_path / "slides.csv", index=False)
    return tmp_path


def test_train_then_evaluate_by_hand(tiny_features, capsys):
    t = tiny_features
    code = main(["train", "--features", str(t / "f"), "--slides", str(t / "slides.csv"), "--method", "maxpool",
                 "--seed", "0", "1", "--set", "epochs=2", "--out", str(t / "runs" / "seed{seed}"), "--no-progress"])
    assert code == 0
    for s in (0, 1):
        meta = json.loads((t / "runs" / f"seed{s}" / "run.json").read_text())
        assert meta["hparams"]["epochs"] == 2 and meta["seed"] == s and meta["precision"] == "fp32"
    assert main(["evaluate", str(t / "runs" / "seed0"), "--features", str(t / "f")]) == 0
    metrics = json.loads((t / "runs" / "seed0" / "metrics.json").read_text())
    assert 0 <= metrics["slide_auc"] <= 1


def test_train_with_several_seeds_needs_a_template(tiny_features, capsys):
    t = tiny_features
    code = main(["train", "--features", str(t / "f"), "--slides", str(t / "slides.csv"), "--method", "maxpool",
                 "--seed", "0", "1", "--out", str(t / "run")])
    assert code == 2 and "{seed}" in capsys.readouterr().err


def test_train_with_unknown_parameter_fails_with_the_allowed_ones(tiny_features, capsys):
    t = tiny_features
    code = main(["train", "--features", str(t / "f"), "--slides", str(t / "slides.csv"), "--method", "abmil",
                 "--set", "model.heads=8", "--out", str(t / "run")])
    assert code == 2
    assert "model.attention_hidden" in capsys.readouterr().err
    assert not (t / "run").exists()


def test_train_precision_is_checked_by_the_parser(tiny_features, capsys):
    t = tiny_features
    with pytest.raises(SystemExit):
        main(["train", "--features", str(t / "f"), "--slides", str(t / "slides.csv"), "--method", "maxpool",
              "--precision", "fp16", "--out", str(t / "run")])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


def test_extract_needs_one_value_per_slide(tmp_path, capsys):
    """Several slides per job: --slide, --slide-id, --patches and --out are aligned lists."""
    code = main(["extract", "--slide", "a.tif", "b.tif", "--slide-id", "a", "b", "--patches", "a.h5",
                 "--out", "a_f.h5", "b_f.h5"])
    assert code == 2
    assert "give one value per slide to each of --slide 2, --slide-id 2, --patches 1, --out 2" in capsys.readouterr().err


def test_extract_rejects_a_bad_slide_id_before_reading_anything(capsys):
    assert main(["extract", "--slide", "a.tif", "--slide-id", "../etc", "--patches", "p.h5", "--out", "o.h5"]) == 2
    assert "../etc" in capsys.readouterr().err
