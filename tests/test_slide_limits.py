"""Slides from outside are bounded inputs: declared sizes, memory, error messages, non-files, OME resolution.

The hostile slides are written here: :func:`write_declared_tiff` makes a valid tiled TIFF declaring any size in a
few hundred KB, every tile offset pointing at the same deflated tile (as a 310 KB file declaring 200,000^2 px did
in a review, driving ``wsimil patch`` to 11.8 GB).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from wsimil.io import WsimilError
from wsimil.limits import set_limits
from wsimil.slides import reader
from wsimil.slides.reader import check_declared_geometry, open_slide, rgba_on_white
from wsimil.slides.tissue import SEG_MAX_SIDE, TissueParams, read_downsampled, segment_tissue

PINK = (214, 150, 190)
WHITE = (255, 255, 255)


def write_declared_tiff(path: Path, width: int, height: int, tile: int = 1024, rgb=WHITE) -> Path:
    """A valid tiled RGB TIFF declaring ``width`` x ``height`` px whose tile offsets all point at one deflated
    ``tile`` x ``tile`` tile of colour ``rgb`` (OpenSlide and tiffslide both read it)."""
    n = -(-width // tile) * -(-height // tile)
    data = zlib.compress(np.full((tile, tile, 3), rgb, np.uint8).tobytes(), 9)
    pad = (8 + len(data)) % 2
    bps_at = 8 + len(data) + pad
    offsets_at = bps_at + 6
    counts_at = offsets_at + 4 * n
    ifd_at = counts_at + 4 * n
    tags = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 3, bps_at), (259, 3, 1, 8), (262, 3, 1, 2),
            (277, 3, 1, 3), (284, 3, 1, 1), (322, 3, 1, tile), (323, 3, 1, tile), (324, 4, n, offsets_at),
            (325, 4, n, counts_at)]
    with open(path, "wb") as f:
        f.write(b"II*\x00" + struct.pack("<I", ifd_at) + data + b"\x00" * pad + struct.pack("<3H", 8, 8, 8))
        f.write(np.full(n, 8, "<u4").tobytes() + np.full(n, len(data), "<u4").tobytes())
        f.write(struct.pack("<H", len(tags)))
        for tag, typ, count, value in tags:
            packed = struct.pack("<HH", value, 0) if typ == 3 and count == 1 else struct.pack("<I", value)
            f.write(struct.pack("<HHI", tag, typ, count) + packed)
        f.write(struct.pack("<I", 0))
    return path


def small_tiff(path: Path, shape: tuple[int, int] = (512, 768), **kw) -> Path:
    """A single-level tiled RGB TIFF: glass with a pink rectangle (and noise, so averaging is not trivial)."""
    import tifffile

    rng = np.random.default_rng(0)
    img = rng.integers(230, 250, (*shape, 3), dtype=np.uint8)
    img[shape[0] // 5 : shape[0] * 4 // 5, shape[1] // 4 : shape[1] * 3 // 4] = PINK
    tifffile.imwrite(path, img, tile=(256, 256), photometric="rgb", **kw)
    return path


@pytest.fixture
def default_limits():
    set_limits(None)
    yield
    set_limits(None)


# -- declared size ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["auto", "tiffslide"])
def test_a_slide_declaring_more_than_the_limit_is_refused(tmp_path, default_limits, backend):
    path = write_declared_tiff(tmp_path / "huge_001.tif", 1_000_000, 1_000_000)  # 7.6 MB
    with pytest.raises(WsimilError) as err:
        open_slide(path, backend=backend)
    msg = str(err.value)
    assert str(path) in msg and "1000000 x 1000000" in msg and "250000" in msg, msg
    assert "limits.max_slide_side_px" in msg


def test_the_limit_comes_from_wsimil_limits(tmp_path, default_limits):
    path = write_declared_tiff(tmp_path / "big_001.tif", 200_000, 1_000)
    with open_slide(path) as s:  # under the default 250,000
        assert s.dimensions == (200_000, 1_000)
    set_limits({"max_slide_side_px": 100_000})
    with pytest.raises(WsimilError, match=r"big_001\.tif declares 200000 x 1000 px.*100000 px per side"):
        open_slide(path)


def test_the_cli_refuses_a_huge_declared_slide_without_a_traceback(tmp_path):
    """The 10^6 x 10^6 px slide once ended in a raw MemoryError: now exit 2 and a message naming the file."""
    path = write_declared_tiff(tmp_path / "huge_002.tif", 1_000_000, 1_000_000)
    proc = subprocess.run([sys.executable, "-m", "wsimil", "patch", "--params", '{"mpp_override": 0.25}',
                           "--slide", str(path), "--slide-id", "huge_002", "--out", str(tmp_path / "huge_002.h5")],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "WSIMIL_LIMITS": ""})
    assert proc.returncode == 2, proc.stderr
    assert "huge_002.tif" in proc.stderr and "1000000 x 1000000" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("levels, words", [
    ([(1000, 800), (0, 400)], "empty level"),
    ([(1000, 800), (500, 0)], "empty level"),
    ([(1000, 800), (2000, 400)], "larger than its level 0"),
    ([(1000, 800), (500, 801)], "larger than its level 0"),
    ([], "no pyramid level"),
])
def test_a_declared_level_must_be_non_empty_and_within_level_0(default_limits, levels, words):
    with pytest.raises(WsimilError, match=words) as err:
        check_declared_geometry(Path("odd_001.tif"), levels)
    assert "odd_001.tif" in str(err.value)
    check_declared_geometry(Path("fine.tif"), [(1000, 800), (500, 400), (1, 1)])


# -- bounded memory ---------------------------------------------------------------------------------------------
# Run in a child: RLIMIT_AS caps its address space (imports take ~0.5 GB of it); SIGALRM ends a run still reading
# pixels after ALARM_S, reporting the peak RSS so far (Linux's VmHWM). The child prints one JSON line.
CHILD = r"""
import json, os, resource, signal, sys
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
def peak_mb():  # VmHWM: this process's own peak RSS (ru_maxrss keeps the forking parent's across exec)
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 1024
def report(outcome, **kw):
    print(json.dumps({"outcome": outcome, "peak_mb": peak_mb(), **kw}), flush=True)
def on_alarm(*_):
    report("running")
    os._exit(3)
signal.signal(signal.SIGALRM, on_alarm)
signal.alarm(int(sys.argv[3]))
from wsimil.io import WsimilError
from wsimil.slides.reader import open_slide
from wsimil.slides.tissue import TissueParams, segment_tissue
import cv2
cv2.setNumThreads(1)
try:
    with open_slide(sys.argv[1], mpp=0.25) as s:
        t = segment_tissue(s, TissueParams(seg_downsample=16))
    report("done", shape=list(t.mask.shape), scale=list(t.scale))
except WsimilError as exc:
    report("error", message=str(exc))
    sys.exit(2)
"""
ADDRESS_SPACE = 4 * 2**30  # the old code wanted 11.8 GB
# one thread each, so a many-core machine does not fill the address space with thread stacks and malloc arenas
CHILD_ENV = {"WSIMIL_LIMITS": "", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
PEAK_MB = 1024
ALARM_S = 8


def run_child(path: Path) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), str(ADDRESS_SPACE), str(ALARM_S)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **CHILD_ENV})
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, (proc.returncode, proc.stdout, proc.stderr)
    return proc, json.loads(lines[-1])


def test_masking_a_declared_200k_square_slide_keeps_memory_bounded(tmp_path):
    """310 KB declaring 200,000^2 px (once 11.8 GB, or a MemoryError under a 3 GB address space): under 4 GB
    the run either finishes, ends with a clean error naming the file, or is still reading tiles after
    ALARM_S seconds (4 * 10^10 px take minutes) -- with a peak RSS under 1 GB in every case."""
    path = write_declared_tiff(tmp_path / "square_001.tif", 200_000, 200_000)
    assert path.stat().st_size < 400_000
    proc, res = run_child(path)
    assert proc.returncode in (0, 2, 3), (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stdout + proc.stderr, proc.stderr[-2000:]
    if res["outcome"] == "error":
        assert "square_001.tif" in res["message"]
    assert res["peak_mb"] < PEAK_MB, res


def test_a_declared_200k_wide_slide_is_segmented_at_a_capped_side(tmp_path):
    """200,000 x 512 px of tissue: segmented to the end within bounded memory, the mask's side capped at
    SEG_MAX_SIDE (the old code made it 12,500 px wide)."""
    path = write_declared_tiff(tmp_path / "wide_001.tif", 200_000, 512, rgb=PINK)
    proc, res = run_child(path)
    assert proc.returncode == 0 and res["outcome"] == "done", (res, proc.stderr[-2000:])
    assert max(res["shape"]) <= SEG_MAX_SIDE and res["shape"][1] == 8000 and res["scale"][0] == 25.0, res
    assert "wide_001.tif" in proc.stderr and "read at downsample 25.0, not 16" in proc.stderr, proc.stderr
    assert res["peak_mb"] < PEAK_MB, res


def test_a_level_too_large_to_read_whole_is_read_in_tiles(tmp_path, monkeypatch):
    """With the caps lowered, a 2600 x 1000 px level nearest the asked downsample is read in tiles of at most
    2048 px a side and averaged by 2, equal to averaging the whole read; read_level refuses it."""
    import cv2

    path = small_tiff(tmp_path / "flat.tif", shape=(1000, 2600), metadata=None)
    monkeypatch.setattr("wsimil.slides.tissue.SEG_MAX_SIDE", 2000)
    sizes = []
    with open_slide(path, mpp=0.5) as s:
        whole = s.read_level(0)
        monkeypatch.setattr(reader, "MAX_WHOLE_LEVEL_PX", 2000 * 1000)
        with pytest.raises(WsimilError, match=r"flat\.tif: level 0 is 2600 x 1000 px.*read it in tiles"):
            s.read_level(0)
        orig = s.read_region
        monkeypatch.setattr(s, "read_region", lambda loc, lv, size: sizes.append(size) or orig(loc, lv, size))
        img, level, scale = read_downsampled(s, 1)
    assert level == 0 and scale == (2.0, 2.0) and img.shape == (500, 1300, 3)
    assert sizes == [(2048, 1000), (552, 1000)]
    assert np.array_equal(img, cv2.resize(whole, (1300, 500), interpolation=cv2.INTER_AREA))


def test_a_heatmap_thumbnail_of_a_level_too_large_is_read_in_tiles(tmp_path, monkeypatch):
    from wsimil.reporting.heatmaps import THUMB_SIDE, _thumbnail

    path = small_tiff(tmp_path / "flat.tif", shape=(1000, 2600), metadata=None)
    want, dims = _thumbnail(path)
    monkeypatch.setattr(reader, "MAX_WHOLE_LEVEL_PX", 1000 * 1000)
    monkeypatch.setattr(reader.Slide, "read_level", lambda *a: pytest.fail("read a whole level"))
    got, dims2 = _thumbnail(path)
    assert dims == dims2 == (2600, 1000) and max(got.shape[:2]) <= 2 * THUMB_SIDE
    small = cv2_resize(got, want.shape[1], want.shape[0])
    assert np.abs(small.astype(int) - want.astype(int)).mean() < 2


def cv2_resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    import cv2

    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)


def test_rgba_is_composited_on_white_exactly_as_the_float_formula_rounds():
    rng = np.random.default_rng(0)
    c, a = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")  # every (colour, alpha) pair
    pairs = np.stack([c, 255 - c, rng.integers(0, 256, c.shape), a], -1).astype(np.uint8)
    for arr in (pairs, rng.integers(0, 256, (301, 517, 4), dtype=np.uint8)):
        alpha = arr[..., 3:4].astype(np.float64) / 255.0
        want = np.round(arr[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
        assert np.array_equal(rgba_on_white(arr), want)
    opaque = pairs.copy()
    opaque[..., 3] = 255
    assert np.array_equal(rgba_on_white(opaque), opaque[..., :3])


# -- messages never quote the file ------------------------------------------------------------------------------
SECRET = b"QZXW:$6$K9PJ7VBNQ2XZ:19333:0:99999:7:::\nJQZV8XKWMQ\n"  # no 4 bytes of it occur in a message by chance


@pytest.mark.parametrize("head", [b"", b"II*\x00", b"MM\x00*"])
def test_a_slide_linked_to_a_private_file_is_refused_without_quoting_it(tmp_path, head):
    secret = tmp_path / "shadow"
    secret.write_bytes(head + SECRET)
    link = tmp_path / "slide_001.tif"
    link.symlink_to(secret)
    for backend in ("auto", "openslide", "tiffslide"):
        with pytest.raises(WsimilError) as err:
            open_slide(link, backend=backend)
        msg = str(err.value)
        assert "slide_001.tif" in msg, msg
        content = (head + SECRET).decode("latin-1")
        leaked = [content[i : i + 4] for i in range(len(content) - 3) if content[i : i + 4] in msg]
        assert not leaked, (leaked, msg)


def test_a_pixel_error_is_reported_by_type_not_by_text(tmp_path, monkeypatch):
    path = small_tiff(tmp_path / "slide_002.tif", metadata=None)
    with open_slide(path, mpp=0.5) as s:
        def fail(*_):
            raise ValueError("not a TIFF file b'QZXW' K9PJ7VBN")

        monkeypatch.setattr(s, "read_region", fail)
        for ds in (1, 4):  # the whole-level read and the tiled read
            with pytest.raises(WsimilError) as err:
                read_downsampled(s, ds)
            msg = str(err.value)
            assert "slide_002.tif" in msg and "ValueError" in msg, msg
            assert "QZXW" not in msg and "K9PJ" not in msg, msg


# -- not a regular file -----------------------------------------------------------------------------------------
def test_a_fifo_folder_or_broken_link_is_named_for_what_it_is(tmp_path):
    fifo = tmp_path / "slide_003.svs"
    os.mkfifo(fifo)  # opening it would block: the check must not open it
    with pytest.raises(WsimilError, match=r"slide_003\.svs is a FIFO"):
        open_slide(fifo)

    dicom = tmp_path / "slide_004"
    dicom.mkdir()
    (dicom / "level0.dcm").write_bytes(b"\x00" * 132)
    with pytest.raises(WsimilError, match="is a folder") as err:
        open_slide(dicom)
    assert "one .dcm file" in str(err.value) and "OpenSlide 4" in str(err.value)

    folder = tmp_path / "slide_005"
    folder.mkdir()
    with pytest.raises(WsimilError, match="is a folder.*a slide is one file"):
        open_slide(folder)

    broken = tmp_path / "slide_006.tif"
    broken.symlink_to(tmp_path / "gone.tif")
    with pytest.raises(WsimilError, match="broken symbolic link"):
        open_slide(broken)
    with pytest.raises(WsimilError, match=r"slide file not found: .*slide_007\.tif"):
        open_slide(tmp_path / "slide_007.tif")


# -- OME-TIFF resolution ----------------------------------------------------------------------------------------
def _ome(path: Path, size: float, unit: str | None) -> Path:
    meta = {"axes": "YXS", "PhysicalSizeX": size, "PhysicalSizeY": size}
    if unit is not None:
        meta.update(PhysicalSizeXUnit=unit, PhysicalSizeYUnit=unit)
    return small_tiff(path, ome=True, metadata=meta)


@pytest.mark.parametrize("size, unit", [(0.25, "µm"), (250.0, "nm"), (0.00025, "mm"), (0.25, None)])
def test_an_ome_tiff_resolution_is_read_from_physical_size_x(tmp_path, size, unit):
    path = _ome(tmp_path / "ome_001.ome.tif", size, unit)
    for backend in ("openslide", "tiffslide"):
        with open_slide(path, backend=backend) as s:
            assert not any(k in s.properties for k in ("openslide.mpp-x", "aperio.MPP"))
            assert s.mpp == pytest.approx(0.25)


def test_ome_xml_is_bounded_and_its_unit_checked(tmp_path, monkeypatch):
    path = _ome(tmp_path / "ome_002.ome.tif", 0.25, "µm")
    monkeypatch.setattr(reader, "MAX_OME_XML_BYTES", 200)
    with open_slide(path) as s, pytest.raises(WsimilError, match=r"ome_002\.ome\.tif.*more than the 200 bytes"):
        s.mpp
    monkeypatch.undo()
    odd = _ome(tmp_path / "ome_003.ome.tif", 0.25, "ly")  # a light year: a length OME allows, not a slide's
    with open_slide(odd) as s, pytest.raises(WsimilError, match=r"ome_003\.ome\.tif.*PhysicalSizeXUnit 'ly'"):
        s.mpp
    with open_slide(small_tiff(tmp_path / "plain.tif", metadata=None)) as s:
        with pytest.raises(WsimilError, match="microns per pixel"):
            s.mpp


def test_an_implausible_resolution_is_refused_before_a_huge_read(tmp_path):
    """A slide claiming 1e-6 um/px would turn a 128-px patch at 1 um/px into a 128,000,000-px read."""
    path = small_tiff(tmp_path / "s.tif")
    with open_slide(path, mpp=1e-6) as s:
        with pytest.raises(WsimilError, match=r"covers 128000000 px of level 0.*implausible.*mpp_override"):
            s.best_level_for_mpp(1.0, 128)
    with open_slide(path, mpp=0.5) as s:
        assert s.best_level_for_mpp(1.0, 128).level0_size == 256
