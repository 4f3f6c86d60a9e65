"""Instance scores as QuPath-readable GeoJSON: a method's heatmap over the real slide in the pathologist's viewer.

One ``FeatureCollection`` per slide and run, one ``Feature`` per patch: a closed ``Polygon`` (the patch square,
level-0 pixel coordinates, as QuPath measures the slide), ``properties.objectType`` ``"tile"``, and
``properties.measurements`` with the method's score (and the patch's tumour fraction where the slide is
annotated). QuPath (0.4 and later) shows them after ``File > Import objects`` (or drag and drop); colour the
tiles by a measurement with ``Measure > Show measurement maps``. Tiles rather than detections: QuPath keeps
tiles out of cell-level analyses.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from wsimil.h5gate import open_h5
from wsimil.io import WsimilError, write_text_atomic


def tiles_geojson(coords: np.ndarray, patch_size_level0: int, measurements: Mapping[str, np.ndarray],
                  name: str | None = None) -> dict:
    """``coords`` (N, 2) level-0 top-left corners (x, y); ``measurements[name]`` (N,) values per patch."""
    coords = np.asarray(coords)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise WsimilError(f"coords must be (N, 2), got {coords.shape}")
    size = int(patch_size_level0)
    if size < 1:
        raise WsimilError(f"patch size at level 0 must be >= 1, got {patch_size_level0}")
    cols = {}
    for key, values in measurements.items():
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if len(v) != len(coords):
            raise WsimilError(f"measurement {key!r} has {len(v)} values for {len(coords)} patches")
        cols[key] = v
    features = []
    for i, (x, y) in enumerate(coords.astype(np.int64)):
        x, y = int(x), int(y)
        ring = [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]
        props = {"objectType": "tile", "isLocked": True,
                 "measurements": {k: (None if not np.isfinite(v[i]) else float(v[i])) for k, v in cols.items()}}
        if name:
            props["name"] = name
        features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                         "properties": props})
    return {"type": "FeatureCollection", "features": features}


def write_run_geojson(run_dir: str | os.PathLike, features_dir: str | os.PathLike, out_dir: str | os.PathLike,
                      slide_ids: list[str] | None = None) -> list[Path]:
    """``<out_dir>/<slide_id>.geojson`` for the slides of a finished run (default: all it scored): its instance
    scores (named as the run names them, ``instance_scores.h5`` attr ``score``), the other maps it wrote
    (``score_maps.h5``), and the tumour fraction of annotated slides (the feature file's ``tumor_fraction``)."""

    from wsimil.evaluation.evaluate import read_instance_scores
    from wsimil.features.store import feature_path, read_features

    run_dir, features_dir, out_dir = Path(run_dir), Path(features_dir), Path(out_dir)
    with open_h5(run_dir / "instance_scores.h5", "instance scores file") as f:
        score_name = str(f.attrs.get("score", "instance score"))
        ids = list(f) if slide_ids is None else list(slide_ids)
    inst = read_instance_scores(run_dir / "instance_scores.h5", ids)
    maps: dict[str, dict[str, np.ndarray]] = {}
    if (run_dir / "score_maps.h5").is_file():
        with open_h5(run_dir / "score_maps.h5", "score maps file") as f:
            for key in f:
                maps[key] = {s: np.asarray(f[key][s][()]).reshape(-1) for s in ids if s in f[key]}
    method = json.loads((run_dir / "run.json").read_text()).get("method", run_dir.parent.name)
    written = []
    for sid in ids:
        path = feature_path(features_dir, sid)
        bag = read_features(path)
        size = bag.attrs.get("level0_size")
        if size is None:
            raise WsimilError(f"{path}: no level0_size attribute: the patch squares are unknown")
        meas = {f"{method}: {score_name}": inst[sid]}
        meas.update({f"{method}: {k}": v[sid] for k, v in maps.items() if sid in v})
        if bag.tumor_fraction is not None:  # annotated slides (and normal ones: 0 everywhere)
            meas["tumour fraction"] = bag.tumor_fraction
        out = out_dir / f"{sid}.geojson"
        write_text_atomic(out, json.dumps(tiles_geojson(bag.coords, int(size), meas, name=method)))
        written.append(out)
    return written
