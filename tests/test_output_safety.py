"""Hostile input and interrupted runs: what wsimil writes is spreadsheet-safe, has the permissions of a plain
write under the user's umask, and Ctrl-C ends a command with one line and nothing half-written."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wsimil.cli import main
from wsimil.datasets.sheet import read_sheet
from wsimil.features.store import write_features
from wsimil.io import spreadsheet_safe, write_csv_atomic, write_text_atomic
from wsimil.reporting.tables import write_table

FORMULA = '=HYPERLINK("http://x","y")'


@pytest.mark.parametrize("value, safe", [
    ("=1+1", "'=1+1"), ("@x", "'@x"), ("+", "'+"), ("-", "'-"), ("+1 call me", "'+1 call me"),
    ("\tx", "'\tx"), ("\rx", "'\rx"), ("-0.081 [-0.1, 0.0]", "'-0.081 [-0.1, 0.0]"), (FORMULA, "'" + FORMULA),
    ("-0.5", "-0.5"), ("+3", "+3"), ("-1e-3", "-1e-3"),  # numbers written as text stay numbers
    ("tumor_001", "tumor_001"), ("a=b", "a=b"), ("", ""), ("'=x", "'=x"),  # formula chars only count in front
    (-0.5, -0.5), (3, 3), (None, None),
])
def test_spreadsheet_safe_known_answers(value, safe):
    assert spreadsheet_safe(value) == safe


def _sheet(centers: tuple[str, str]) -> pd.DataFrame:
    """Eight slides of two centres, both labels among each centre's training and test slides."""
    splits = ("train", "train", "val", "val", "test", "test", "train", "test")
    return pd.DataFrame([{"slide_id": f"s{i}", "label": i % 2, "split": splits[i], "center": centers[(i // 2) % 2],
                          "path": "", "annotation": ""} for i in range(8)])


def test_a_formula_centre_is_neutralised_in_the_ood_sheet(tmp_path, capsys):
    # hand-written like a user's sheet (plain pandas): the hostile cell reaches wsimil unchanged
    _sheet(("A", FORMULA)).to_csv(tmp_path / "slides.csv", index=False)
    assert read_sheet(tmp_path / "slides.csv")["center"].iloc[2] == FORMULA
    assert main(["ood-sheet", "--sheet", str(tmp_path / "slides.csv"), "--train-centers", "A",
                 "--out", str(tmp_path / "ood.csv")]) == 0
    raw = pd.read_csv(tmp_path / "ood.csv", dtype=str, keep_default_na=False)
    held_out = raw[raw["slide_id"] == "s2"]["center"].iloc[0]
    assert held_out == "'" + FORMULA
    assert '"\'=HYPERLINK(""http://x"",""y"")"' in (tmp_path / "ood.csv").read_text()  # the cell as Excel sees it
    back = read_sheet(tmp_path / "ood.csv")  # still a valid sample sheet, read back exactly as the user wrote it
    assert list(back["slide_id"]) == list(raw["slide_id"]) and set(back["center"]) == {"A", FORMULA}


def test_tables_neutralise_text_cells_and_keep_numbers(tmp_path):
    df = pd.DataFrame({"method": ["@abmil", "maxpool"], "center": [FORMULA, "B"], "delta": [-0.5, 0.25],
                       "shown": ["-0.081 [-0.1, 0.0]", "0.1"], "=sum": [1, 2]})
    write_table(df, tmp_path / "t", "A caption.")
    back = pd.read_csv(tmp_path / "t.csv", keep_default_na=False)
    assert list(back.columns) == ["method", "center", "delta", "shown", "'=sum"]
    assert list(back["method"]) == ["'@abmil", "maxpool"] and back["center"].iloc[0] == "'" + FORMULA
    assert list(back["delta"]) == [-0.5, 0.25]  # numbers are not text: untouched, read back as numbers
    assert back["shown"].iloc[0] == "'-0.081 [-0.1, 0.0]"


@pytest.fixture
def tiny_features(tmp_path: Path) -> Path:
    """12 slides of 10 patches, 8-d features (as tests/test_cli.py builds them)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        label = (i // 4) % 2
        x = rng.normal(size=(10, 8)) + (3.0 if label else 0.0) * (np.arange(10) < 2)[:, None]
        write_features(tmp_path / "f" / f"s{i}.h5", x.astype(np.float16), np.zeros((10, 2), int))
        rows.append({"slide_id": f"s{i}", "label": label, "split": ("train", "train", "val", "test")[i % 4],
                     "center": 0, "path": "", "annotation": ""})
    pd.DataFrame(rows).to_csv(tmp_path / "slides.csv", index=False)
    return tmp_path


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_outputs_follow_the_umask(tiny_features, umask, file_mode, folder_mode):
    from wsimil.training.run import write_run
    from wsimil.training.data import load_bags
    from wsimil.training.loop import train

    t = tiny_features
    bags = load_bags(read_sheet(t / "slides.csv"), t / "f")
    result = train(bags, "maxpool", seed=0, overrides={"epochs": 1})
    old = os.umask(umask)
    try:
        write_text_atomic(t / "out" / "a.txt", "a\n")
        write_csv_atomic(pd.DataFrame({"x": [1]}), t / "out" / "b.csv")
        write_run(t / "out" / "run", bags, result, {"method": "maxpool", "seed": 0})
    finally:
        os.umask(old)
    assert _mode(t / "out" / "a.txt") == file_mode and _mode(t / "out" / "b.csv") == file_mode
    assert _mode(t / "out" / "run") == folder_mode
    for name in ("predictions.csv", "history.csv", "run.json", "model.pt", "instance_scores.h5"):
        assert _mode(t / "out" / "run" / name) == file_mode, name
    assert sorted(p.name for p in (t / "out").iterdir()) == ["a.txt", "b.csv", "run"]


def test_an_interrupted_run_folder_leaves_nothing(tiny_features, monkeypatch):
    from wsimil.training import run
    from wsimil.training.data import load_bags
    from wsimil.training.loop import train

    t = tiny_features
    bags = load_bags(read_sheet(t / "slides.csv"), t / "f")
    result = train(bags, "maxpool", seed=0, overrides={"epochs": 1})

    def ctrl_c() -> None:  # called after predictions.csv, the .h5 files and model.pt are written
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "git_commit", ctrl_c)
    (t / "runs").mkdir()
    with pytest.raises(KeyboardInterrupt):
        run.write_run(t / "runs" / "seed0", bags, result, {"method": "maxpool", "seed": 0})
    assert list((t / "runs").iterdir()) == []


# `wsimil train` as its console script runs it (wsimil.cli.main), with a line on stderr when training begins so
# that the test interrupts training itself, not the imports
_TRAIN = """
import signal
import sys
import wsimil.training.run as run

# Ctrl-C as a terminal delivers it, even where this test runs as a background job of a non-interactive shell (which
# starts its children with SIGINT ignored, POSIX "Asynchronous Lists", and Python keeps it so)
signal.signal(signal.SIGINT, signal.default_int_handler)
from wsimil.cli import main

_train = run.train
def train(*args, **kwargs):
    print("training started", file=sys.stderr, flush=True)
    return _train(*args, **kwargs)
run.train = train
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_in_train_ends_with_one_line_and_no_output(tiny_features):
    t = tiny_features
    (t / "runs").mkdir()
    out = t / "runs" / "seed0"
    cmd = [sys.executable, "-c", _TRAIN, "train", "--features", str(t / "f"), "--slides", str(t / "slides.csv"),
           "--method", "maxpool", "--set", "epochs=1000000", "--threads", "1", "--no-progress", "--out", str(out)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        first = proc.stderr.readline()  # blocks until training begins (or the process ends)
        assert first == "training started\n", first + proc.stderr.read()
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=60)[1]
        code = proc.returncode
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 130, err
    assert "Traceback" not in err, err
    assert err.splitlines()[-1] == "wsimil train: interrupted", err
    assert not out.exists()
    assert list((t / "runs").iterdir()) == []  # no temporary folder or file beside it
