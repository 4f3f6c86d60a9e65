"""The download stage against a local HTTP server on 127.0.0.1: complete, resumed, corrupted, retried, missing."""

import hashlib
from pathlib import Path

import pytest
from mirror import MirrorServer

from wsimil.datasets.download import FileSpec, download_all, download_file, md5_of, parse_md5_manifest
from wsimil.io import WsimilError

FILES = {"/images/normal_001.tif": bytes(range(256)) * 4000, "/images/tumor_001.tif": b"T" * 300_000}


@pytest.fixture
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    for name, body in FILES.items():
        (root / name.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / name.lstrip("/")).write_bytes(body)
    s = MirrorServer(root)
    yield s
    s.close()


def _spec(server, tmp_path, name="/images/normal_001.tif", with_md5=True):
    body = FILES[name]
    return FileSpec(server.url + name, tmp_path / name.lstrip("/"), size=len(body),
                    md5=hashlib.md5(body).hexdigest() if with_md5 else None)


def test_complete_download_is_verified_and_not_fetched_twice(server, tmp_path):
    spec = _spec(server, tmp_path)
    path = download_file(spec, sleep=lambda s: None)
    assert path.read_bytes() == FILES["/images/normal_001.tif"] and not path.with_name(path.name + ".part").exists()
    download_file(spec, sleep=lambda s: None)
    assert len(server.requests) == 1  # already complete and matching: no second request


def test_a_cut_connection_resumes_with_a_range_request(server, tmp_path):
    server.faults["/images/normal_001.tif"] = ["cut"]
    waits = []
    path = download_file(_spec(server, tmp_path), sleep=waits.append)
    assert path.read_bytes() == FILES["/images/normal_001.tif"]
    (first, r1), (second, r2) = server.requests
    assert r1 is None and r2 == f"bytes={len(FILES[first]) // 2}-"  # resumed where the cut left it
    assert waits == [1.0]


def test_a_corrupted_file_is_detected_and_fetched_again_from_scratch(server, tmp_path):
    server.faults["/images/tumor_001.tif"] = ["corrupt"]
    path = download_file(_spec(server, tmp_path, "/images/tumor_001.tif"), sleep=lambda s: None)
    assert md5_of(path) == hashlib.md5(FILES["/images/tumor_001.tif"]).hexdigest()
    assert [r for _, r in server.requests] == [None, None]  # the corrupt copy was not resumed from


def test_server_errors_are_retried_with_backoff_then_give_up(server, tmp_path):
    server.faults["/images/normal_001.tif"] = ["500", "500"]
    waits = []
    download_file(_spec(server, tmp_path), sleep=waits.append, backoff=0.5)
    assert waits == [0.5, 1.0]
    server.faults["/images/tumor_001.tif"] = ["500"] * 10
    spec = _spec(server, tmp_path, "/images/tumor_001.tif")
    with pytest.raises(WsimilError, match=r"tumor_001.tif: HTTP 500.*gave up after 3 attempts"):
        download_file(spec, retries=2, sleep=lambda s: None)
    assert not spec.dest.exists()


def test_a_missing_file_fails_at_once_with_its_name(server, tmp_path):
    spec = FileSpec(server.url + "/images/test_049.tif", tmp_path / "test_049.tif")
    with pytest.raises(WsimilError, match=r"test_049.tif: HTTP 404"):
        download_file(spec, sleep=lambda s: pytest.fail("a 404 is not retried"))
    assert not spec.dest.exists() and not (tmp_path / "test_049.tif.part").exists()


def test_download_all_fetches_what_it_can_and_reports_the_rest(server, tmp_path):
    specs = [_spec(server, tmp_path), _spec(server, tmp_path, "/images/tumor_001.tif"),
             FileSpec(server.url + "/images/nope.tif", tmp_path / "nope.tif")]
    done, failed = download_all(specs, max_parallel=2, sleep=lambda s: None)
    assert sorted(p.name for p in done) == ["normal_001.tif", "tumor_001.tif"]
    assert list(failed) == [server.url + "/images/nope.tif"] and "HTTP 404" in failed[server.url + "/images/nope.tif"]


def test_md5_manifest_and_non_http_urls():
    text = "d41d8cd98f00b204e9800998ecf8427e  ./images/normal_001.tif\n0123456789abcdef0123456789ABCDEF *annotations/tumor_001.xml\n"
    assert parse_md5_manifest(text) == {"images/normal_001.tif": "d41d8cd98f00b204e9800998ecf8427e",
                                        "annotations/tumor_001.xml": "0123456789abcdef0123456789abcdef"}
    with pytest.raises(WsimilError, match="line 1 is not"):
        parse_md5_manifest("not a checksum line")
    with pytest.raises(WsimilError, match="only http"):
        download_file(FileSpec("file:///etc/passwd", Path("/tmp/x")))


def test_the_cli_does_not_advise_a_rerun_for_a_file_the_source_lacks(server, tmp_path, capsys):
    from wsimil.cli import main

    code = main(["download", "--url", server.url + "/images/nope.tif", "--out", str(tmp_path / "nope.tif")])
    err = capsys.readouterr().err
    assert code == 2 and "HTTP 404" in err and "rerun" not in err and "the source does not have them" in err
