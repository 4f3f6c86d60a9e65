"""Feature files from outside are bounded, self-contained inputs: every hostile file is built here and must be
refused by name, before anything it declares is allocated, with no byte of what it points at in any output or
message (wsimil.h5gate, wsimil.datasets.imports)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from wsimil.cli import main
from wsimil.datasets.imports import read_pt_source
from wsimil.features.store import feature_shape, read_features, write_features
from wsimil.h5gate import open_h5
from wsimil.io import WsimilError
from wsimil.limits import ENV, Limits, set_limits

SECRET = b"root:SECRET-4f1c9:20228:0:99999:7:::\n" * 64  # 2,432 bytes of "someone else's file"
MARKERS = ("SECRET", "4f1c9", "root:")
N, D = 16, 8


def _secret(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "shadow"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(SECRET)
    return path


def _coords(n: int = N) -> np.ndarray:
    return np.stack([np.arange(n) * 128, np.zeros(n)], axis=1).astype(np.int64)


def _sheet(root: Path, ids: list[str]) -> Path:
    rows = [{"slide_id": s, "label": i % 2, "split": ("train", "train", "val", "val")[i % 4] if i < 4 else "test",
             "center": "0", "path": "", "annotation": ""} for i, s in enumerate(ids)]
    path = root / "slides.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _good(path: Path, seed: int = 0, d: int = D, **kw) -> Path:
    x = np.random.default_rng(seed).normal(size=(N, d)).astype(np.float32)
    write_features(path, x, _coords(), attrs={"level0_size": 128, **kw})
    return path


def _external_storage(path: Path, secret: Path) -> Path:
    """``features`` whose raw bytes are the outside file's (HDF5 external storage, H5Pset_external)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", shape=(len(SECRET) // (4 * D), D), dtype="f4",
                         external=[(str(secret), 0, len(SECRET))])
        f.create_dataset("coords", data=_coords(len(SECRET) // (4 * D)))
    return path


def _external_link(path: Path, target: Path) -> Path:
    _good(target)
    with h5py.File(path, "w") as f:
        f["features"] = h5py.ExternalLink(str(target), "/features")
        f.create_dataset("coords", data=_coords())
    return path


def _virtual(path: Path, target: Path) -> Path:
    _good(target)
    layout = h5py.VirtualLayout(shape=(N, D), dtype="f4")
    layout[:] = h5py.VirtualSource(str(target), "features", shape=(N, D))
    with h5py.File(path, "w") as f:
        f.create_virtual_dataset("features", layout)
        f.create_dataset("coords", data=_coords())
    return path


def _no_leak(text: str) -> None:
    for m in MARKERS:
        assert m not in text, f"{m!r} leaked into: {text[:500]}"


def _tree_has_no_secret(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            assert b"SECRET-4f1c9" not in p.read_bytes(), p


@pytest.mark.parametrize("kind", ["external storage", "external link", "virtual dataset"])
def test_files_that_point_outside_themselves_are_refused(tmp_path, kind):
    secret = _secret(tmp_path)
    path = tmp_path / "feats" / "s00.h5"
    path.parent.mkdir(parents=True)
    if kind == "external storage":
        _external_storage(path, secret)
        with h5py.File(path, "r") as f:  # the attack is real: plain h5py reads the outside file's bytes
            assert f["features"][()].tobytes().startswith(SECRET[:64])
    elif kind == "external link":
        _external_link(path, tmp_path / "outside" / "other.h5")
    else:
        _virtual(path, tmp_path / "outside" / "other.h5")
    for read in (feature_shape, read_features):
        with pytest.raises(WsimilError) as e:
            read(path)
        msg = str(e.value)
        assert str(path) in msg and kind.split()[-1] in msg and "refused" in msg, msg
        _no_leak(msg)


def test_import_and_train_refuse_external_storage_and_leak_nothing(tmp_path, capsys):
    secret = _secret(tmp_path)
    src = tmp_path / "src"
    ids = ["s00", "s01", "s02", "s03", "s04", "s05"]
    for i, s in enumerate(ids[1:]):
        _good(src / f"{s}.h5", seed=i + 1)
    _external_storage(src / "s00.h5", secret)
    sheet = _sheet(tmp_path / "sheet", ids)
    out = tmp_path / "imported"
    code = main(["import-features", "--format", "h5", "--src-dir", str(src), "--sheet", str(sheet),
                 "--slide-id", "s00", "--out", str(out / "s00.h5"), "--patch-size-level0", "128"])
    err = capsys.readouterr().err
    assert code == 2 and "external storage" in err and str(src / "s00.h5") in err, err
    _no_leak(err)
    assert not out.exists() or not any(out.iterdir())
    # given straight to train: refused before any training, no run folder
    run = tmp_path / "run"
    code = main(["train", "--features", str(src), "--slides", str(sheet), "--method", "maxpool", "--seed", "0",
                 "--set", "epochs=1", "--out", str(run), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "slide s00" in err and "external storage" in err, err
    _no_leak(err)
    assert not run.exists()
    _tree_has_no_secret(tmp_path / "sheet")


def _maxrss_of(cmd: list[str], env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, int]:
    """Run ``cmd`` in a child of a fresh Python under a 5 GB address-space limit (``ulimit -v``: importing torch
    needs ~4 GB of it); return its result and the child's peak resident memory (bytes)."""
    probe = ("import resource, subprocess, sys, json;"
             "lim = lambda: resource.setrlimit(resource.RLIMIT_AS, (5 << 30, 5 << 30));"
             "r = subprocess.run(sys.argv[1:], capture_output=True, text=True, preexec_fn=lim);"
             "print(json.dumps([r.returncode, r.stdout, r.stderr,"
             " resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))")
    r = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True, env=env, timeout=300)
    code, out, err, kb = json.loads(r.stdout)
    return subprocess.CompletedProcess(cmd, code, out, err), int(kb) * 1024


WSIMIL = [sys.executable, "-m", "wsimil"]


def test_soft_link_to_a_huge_declared_dataset_is_refused_in_bounded_memory(tmp_path):
    """1-2 KB on disk, 2 M x 1024 float32 (8 GB) declared, reached through a soft link."""
    src = tmp_path / "src"
    ids = [f"s{i:02d}" for i in range(6)]
    for i, s in enumerate(ids[1:]):
        _good(src / f"{s}.h5", seed=i, d=1024)  # the same dimension: only the declared rows are hostile
    with h5py.File(src / "s00.h5", "w") as f:
        f.create_dataset("hidden", shape=(2_000_000, 1024), dtype="f4")  # never written: no storage
        f["features"] = h5py.SoftLink("/hidden")
        f.create_dataset("coords", data=_coords(2))
    assert (src / "s00.h5").stat().st_size < 10_000
    sheet = _sheet(tmp_path / "sheet", ids)
    r, rss = _maxrss_of([*WSIMIL, "train", "--features", str(src), "--slides", str(sheet), "--method", "maxpool",
                         "--seed", "0", "--set", "epochs=1", "--out", str(tmp_path / "run"), "--no-progress"])
    assert r.returncode == 2 and "soft link" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert rss < 1.5e9, f"peak memory {rss / 1e9:.2f} GB"
    # the same dataset without the link: refused for its size, before anything is allocated
    with h5py.File(src / "s00.h5", "w") as f:
        f.create_dataset("features", shape=(2_000_000, 1024), dtype="f4")
        f.create_dataset("coords", data=_coords(2))
    with pytest.raises(WsimilError, match=r"2,048,000,000 values.*limits.max_h5_elements"):
        feature_shape(src / "s00.h5")


def test_unallocated_and_truncated_datasets_are_refused(tmp_path):
    path = tmp_path / "a.h5"
    with h5py.File(path, "w") as f:  # declared 64 MB, stored nothing: every row would read as the fill value
        f.create_dataset("features", shape=(100_000, 160), dtype="f4")
        f.create_dataset("coords", data=_coords(100_000))
    with pytest.raises(WsimilError, match=r"declares 64,000,000 bytes .* holds 0 of them"):
        read_features(path)
    good = _good(tmp_path / "b.h5")
    with h5py.File(tmp_path / "c.h5", "w") as f:  # contiguous data well past what a cut file keeps
        f.create_dataset("features", data=np.ones((20_000, D), np.float32))
        f.create_dataset("coords", data=_coords(20_000))
    data = (tmp_path / "c.h5").read_bytes()
    (tmp_path / "c.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(WsimilError) as e:
        read_features(tmp_path / "c.h5")
    assert str(tmp_path / "c.h5") in str(e.value)
    assert read_features(good).features.shape == (N, D)


def test_gzip_bombs_are_refused_before_decompressing(tmp_path):
    # at the published size: 60 M x 32 float16 declared, gzip, one chunk written (the rest reads as zeros)
    path = tmp_path / "bomb.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("features", shape=(60_000_000, 32), dtype="f2", chunks=(65_536, 32),
                             compression="gzip")
        d[:65_536] = 0
        f.create_dataset("coords", shape=(60_000_000, 2), dtype="i8", chunks=(65_536, 2), compression="gzip")
    assert path.stat().st_size < 1_000_000
    with pytest.raises(WsimilError, match="refused before decompressing"):  # coords: 960 MB declared, 0 stored
        feature_shape(path)
    with h5py.File(path, "a") as f:
        del f["coords"]
    with pytest.raises(WsimilError, match="1,920,000,000 values"):
        feature_shape(path)
    # within the element limit but a thousandfold compression: refused by the ratio (limits scaled down so the
    # bomb is small enough to build here; the rule is the same at the defaults)
    path = tmp_path / "bomb2.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=np.zeros((1_000_000, 4), np.float32), chunks=(65_536, 4),
                         compression="gzip", compression_opts=9)
        f.create_dataset("coords", data=_coords(1_000_000))
    try:
        set_limits({"h5_compression_floor_bytes": 1_000_000})
        with pytest.raises(WsimilError, match=r"compressed in .*over the limit of 50x"):
            read_features(path)
        set_limits({"h5_compression_floor_bytes": 1_000_000, "max_h5_chunk_bytes": 100_000})
        with pytest.raises(WsimilError, match=r"chunks of 1,048,576 bytes"):
            read_features(path)
    finally:
        set_limits(None)
    # at the defaults a 16 MB all-zero dataset (a normal slide's tumour fraction, say) stays readable
    assert read_features(path).features.shape == (1_000_000, 4)


def test_real_layouts_pass_the_gate(tmp_path):
    """CLAM (chunked, resizable), TRIDENT ((1, N, D), attributes), wsimil's own, a compressed all-zero tumour
    fraction of 200,000 patches: all read as before."""
    clam = tmp_path / "clam.h5"
    x = np.random.default_rng(0).normal(size=(N, D)).astype(np.float32)
    with h5py.File(clam, "w") as f:
        f.create_dataset("features", data=x, maxshape=(None, D), chunks=(8, D))
        f.create_dataset("coords", data=_coords().astype(np.int32), maxshape=(None, 2), chunks=(8, 2))
    trident = tmp_path / "trident.h5"
    with h5py.File(trident, "w") as f:
        d = f.create_dataset("features", data=x[None])
        d.attrs.update({"name": "t", "encoder": "uni_v1"})
        f.create_dataset("coords", data=_coords()).attrs.update({"patch_size_level0": 512})
    zeros = tmp_path / "zeros.h5"
    with h5py.File(zeros, "w") as f:
        f.create_dataset("features", data=np.ones((200_000, 2), np.float16), compression="gzip")
        f.create_dataset("coords", data=np.zeros((200_000, 2), np.int64), compression="gzip")
        f.create_dataset("tumor_fraction", data=np.zeros(200_000, np.float32), compression="gzip")
    for p, shape in ((clam, (N, D)), (trident, (N, D)), (zeros, (200_000, 2)), (_good(tmp_path / "w.h5"), (N, D))):
        assert read_features(p).features.shape == shape


def test_groups_cycles_attributes_and_special_files(tmp_path):
    path = tmp_path / "cycle.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("a")
        g["loop"] = g  # a hard link to itself: a walk that follows it never ends
        f.create_dataset("features", data=np.ones((N, D), np.float32))
    with pytest.raises(WsimilError, match="cycle"):
        feature_shape(path)
    path = tmp_path / "attr.h5"
    with h5py.File(path, "w", libver="latest") as f:  # dense attribute storage: attributes over 64 KB
        f.create_dataset("features", data=np.ones((N, D), np.float32)).attrs.create(
            "big", data=np.zeros(600_000, np.float32))
    with pytest.raises(WsimilError, match="attribute"):
        read_features(path)
    fifo = tmp_path / "fifo.h5"
    os.mkfifo(fifo)
    with pytest.raises(WsimilError, match=r"is a FIFO \(named pipe\)"):
        feature_shape(fifo)
    with pytest.raises(WsimilError, match="is a folder"):
        feature_shape(tmp_path)
    (tmp_path / "text.h5").write_bytes(SECRET)
    with pytest.raises(WsimilError) as e:
        feature_shape(tmp_path / "text.h5")
    assert "not an HDF5 file" in str(e.value)
    _no_leak(str(e.value))


def test_symlinks_leaving_the_features_folder(tmp_path, capsys, caplog, monkeypatch):
    """A feature file that is a link to outside its folder is refused for training and import, unless
    limits.follow_symlinks (then a warning names both); a link inside the folder is fine."""
    secret = _secret(tmp_path)
    feats = tmp_path / "feats"
    ids = [f"s{i:02d}" for i in range(6)]
    for i, s in enumerate(ids[1:]):
        _good(feats / f"{s}.h5", seed=i)
    _good(tmp_path / "elsewhere" / "s00.h5")
    (feats / "s00.h5").symlink_to(tmp_path / "elsewhere" / "s00.h5")
    sheet = _sheet(tmp_path / "sheet", ids)
    args = ["train", "--features", str(feats), "--slides", str(sheet), "--method", "maxpool", "--seed", "0",
            "--set", "epochs=1", "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "symbolic link" in err and "limits.follow_symlinks" in err, err
    monkeypatch.setenv(ENV, Limits(follow_symlinks=True).to_json())
    assert main(args) == 0
    warned = [r.getMessage() for r in caplog.records if "followed: limits.follow_symlinks" in r.getMessage()]
    assert len(warned) == 1 and str(tmp_path / "elsewhere" / "s00.h5") in warned[0], warned
    monkeypatch.delenv(ENV)
    # import: a CSV that is a link to someone else's file is refused, and the message quotes none of it
    src = tmp_path / "csv"
    src.mkdir()
    (src / "s00.csv").symlink_to(secret)
    code = main(["import-features", "--format", "csv", "--src-dir", str(src), "--sheet", str(sheet),
                 "--slide-id", "s00", "--out", str(tmp_path / "imp" / "s00.h5")])
    err = capsys.readouterr().err
    assert code == 2 and "symbolic link" in err, err
    _no_leak(err)
    # the same bytes copied into the folder: refused as a CSV without quoting more than an escaped excerpt
    (src / "s00.csv").unlink()
    (src / "s00.csv").write_bytes(SECRET)
    code = main(["import-features", "--format", "csv", "--src-dir", str(src), "--sheet", str(sheet),
                 "--slide-id", "s00", "--out", str(tmp_path / "imp" / "s00.h5")])
    err = capsys.readouterr().err
    assert code == 2 and str(src / "s00.csv") in err, err
    assert SECRET[:60].decode() not in err and len(err) < 600, err


def test_pt_archives_are_bounded(tmp_path):
    import torch

    ok = tmp_path / "ok.pt"
    torch.save(torch.ones(N, D), ok)
    assert read_pt_source(ok).features.shape == (N, D)
    legacy = tmp_path / "legacy.pt"
    torch.save(torch.ones(N, D), legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(WsimilError, match="not a zip archive"):
        read_pt_source(legacy)
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(ok) as z, zipfile.ZipFile(bomb, "w") as out:
        for m in z.infolist():
            out.writestr(m, z.read(m))
        out.writestr("ok/data/9", b"\0" * 80_000_000, compress_type=zipfile.ZIP_DEFLATED)
    with pytest.raises(WsimilError, match=r"80,000,000 bytes compressed"):
        read_pt_source(bomb)


def test_limits_from_the_command_line_and_the_environment(tmp_path, capsys, monkeypatch):
    path = _good(tmp_path / "f" / "s.h5")  # 16 x 8 values
    ids = ["s"]
    code = main(["--limits", '{"max_h5_elements": 100}', "import-features", "--format", "h5", "--src-dir",
                 str(path.parent), "--sheet", str(_sheet(tmp_path / "sheet", ids)), "--slide-id", "s",
                 "--out", str(tmp_path / "o" / "s.h5"), "--patch-size-level0", "128"])
    err = capsys.readouterr().err
    assert code == 2 and "over the limit of 100 (limits.max_h5_elements)" in err, err
    code = main(["--limits", '{"max_h5_elementz": 1}', "methods"])
    assert code == 2 and "unknown key(s) ['max_h5_elementz']" in capsys.readouterr().err
    monkeypatch.setenv(ENV, '{"max_h5_elements": 100}')
    set_limits(None)
    with pytest.raises(WsimilError, match="over the limit of 100"):
        read_features(path)
    monkeypatch.setenv(ENV, "[1]")
    with pytest.raises(WsimilError, match="must be a JSON object"):
        read_features(path)


def test_groups_and_datatypes_where_datasets_belong(tmp_path):
    path = tmp_path / "g.h5"
    with h5py.File(path, "w") as f:
        f.create_group("features").create_dataset("x", data=np.ones((N, D), np.float32))
        f.create_dataset("coords", data=_coords())
    for read in (feature_shape, read_features):
        with pytest.raises(WsimilError, match="'features' is a group, not a dataset"):
            read(path)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=np.ones((N, D), np.float32))
        f["t"] = np.dtype("f4")  # a committed (named) datatype
    with pytest.raises(WsimilError, match="committed datatype"):
        read_features(path)
    with h5py.File(path, "w") as f:
        for i in range(12):
            f.create_dataset("x" * 200 + str(i), data=[1])
    with pytest.raises(WsimilError, match="no 'features' dataset") as e:
        read_features(path)
    assert len(str(e.value)) < 1000
