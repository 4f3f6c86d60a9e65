"""A miniature CAMELYON16 mirror in the bucket's layout, served by a local HTTP server on 127.0.0.1.

Slides come from the synthetic generator under the real file names (``normal_NNN``, ``tumor_NNN``,
``test_NNN``), with ``evaluation/reference.csv`` (``image,type,class,center``) and ``checksums.md5`` as the
bucket publishes them. The server answers range requests and can inject one-shot faults per path.
"""

from __future__ import annotations

import hashlib
import http.server
import shutil
import threading
from pathlib import Path

from wsimil.slides.synthetic import generate_dataset, plan_dataset

TINY = {"seed": 3, "size_um": [700, 560], "slides": {"train": {"normal": 2, "tumour": 2}, "val": {"normal": 1, "tumour": 1},
                                                   "test": {"normal": 2, "tumour": 2}}}


def build_camelyon16_mirror(root: Path, synthetic: dict | None = None, md5_prefix: str = "CAMELYON16/") -> Path:
    """Write a CAMELYON16-layout mirror into ``root``; returns ``root``. Train/val synthetic slides become the
    bucket's training slides (their names already follow it)."""
    cfg = synthetic or TINY
    work = root.parent / (root.name + "_synth")
    generate_dataset(cfg, work)
    plan = plan_dataset(cfg)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    (root / "evaluation").mkdir(exist_ok=True)
    rows = ["image,type,class,center"]
    for r in plan.itertuples():
        shutil.copyfile(work / "slides" / f"{r.slide_id}.tif", root / "images" / f"{r.slide_id}.tif")
        if r.label == 1:
            shutil.copyfile(work / "annotations" / f"{r.slide_id}.xml", root / "annotations" / f"{r.slide_id}.xml")
        kind = "tumor" if r.label == 1 else "normal"
        rows.append(f"{r.slide_id}.tif,{kind},{r.lesion_class},{r.center}")
    (root / "evaluation" / "reference.csv").write_text("\n".join(rows) + "\n")
    lines = [f"{hashlib.md5(p.read_bytes()).hexdigest()}  {md5_prefix}{p.relative_to(root).as_posix()}"
             for p in sorted(root.rglob("*")) if p.is_file() and p.name != "checksums.md5"]
    (root / "checksums.md5").write_text("\n".join(lines) + "\n")
    shutil.rmtree(work)
    return root


class MirrorServer:
    """Serves the files under ``root`` with HTTP range support. ``faults[url path]`` is a list of one-shot
    faults used in order: ``cut`` (half the body, then the connection closes), ``500``, ``corrupt`` (same
    length, zero bytes). ``requests`` records (path, Range header)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.faults: dict[str, list[str]] = {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                path = (server.root / self.path.lstrip("/")).resolve()
                if server.root.resolve() not in path.parents or not path.is_file():
                    self.send_error(404)
                    return
                faults = server.faults.get(self.path)
                fault = faults.pop(0) if faults else None
                if fault == "500":
                    self.send_error(500)
                    return
                body = path.read_bytes()
                if fault == "corrupt":
                    body = bytes(len(body))
                start = int(rng.split("=")[1].split("-")[0]) if rng else 0
                part = body[start:]
                self.send_response(206 if rng else 200)
                if rng:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.send_header("Content-Length", str(len(part)))
                self.end_headers()
                if fault == "cut":
                    self.wfile.write(part[: len(part) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(part)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
