"""The command line: what the rules call and what users type."""

import json
from pathlib import Path

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


def test_version_and_a_misspelt_command(capsys):
    from wsimil import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"wsimil {__version__}"
    with pytest.raises(SystemExit) as exc:
        main(["tran", "--method", "abmil"])
    assert exc.value.code == 2 and "unknown command 'tran'; did you mean 'train'?" in capsys.readouterr().err


def test_a_wrong_method_name_is_reported_before_any_missing_file(tmp_path, capsys):
    code = main(["train", "--features", str(tmp_path / "none"), "--slides", str(tmp_path / "none.csv"),
                 "--method", "abmill", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "unknown method 'abmill'; did you mean 'abmil'?" in err and "none.csv" not in err


def test_section_help_lists_the_keys_with_their_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["patch", "--help"])
    from wsimil.config import load_schema

    out = capsys.readouterr().out
    size = load_schema()["properties"]["patching"]["properties"]["patch_size"]["default"]
    assert "`patching:` keys" in out and f"patch_size = {size}: Side of a patch" in out and "target_mpp = " in out


def test_methods_into_a_closed_pipe_exits_quietly():
    """`wsimil methods | head`: the reader is gone before the listing is written (read end closed first)."""
    import os
    import subprocess
    import sys

    r, w = os.pipe()
    os.close(r)
    try:
        proc = subprocess.run([sys.executable, "-m", "wsimil", "methods"], stdout=w, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(w)
    assert proc.returncode == 141 and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


def test_validate_config_prints_the_merged_config_of_an_overlay(tmp_path, capsys):
    import yaml

    root = Path(__file__).resolve().parents[1]
    code = main(["validate-config", str(root / "config.yaml"), str(root / "configs" / "slides.yaml"), "--print"])
    out = capsys.readouterr().out
    assert code == 0
    merged = yaml.safe_load(out)
    # the overlay's values, not the schema's defaults nor config.yaml's
    assert merged["dataset"]["source"] == "sheet" and merged["patching"]["patch_size"] == 256
    assert merged["features"]["extractor"] == "resnet50_trunc" and "ood" not in merged["experiments"]
    assert merged["poison"] == yaml.safe_load((root / "config.yaml").read_text())["poison"] | merged["poison"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  seeds: zero\n")
    assert main(["validate-config", str(root / "config.yaml"), str(bad)]) == 2
    assert "training.seeds" in capsys.readouterr().err
