"""Instance scores as QuPath GeoJSON: one tile per patch, its polygon the patch square at level 0, the score
and the tumour fraction as measurements (checked against the structure QuPath's importer reads)."""

import json

import h5py
import numpy as np
import pytest

from wsimil.cli import main
from wsimil.features.store import write_features
from wsimil.io import WsimilError
from wsimil.reporting.geojson import tiles_geojson, write_run_geojson

COORDS = np.array([[0, 0], [512, 0], [1024, 256]])
SIZE = 512  # 256 px at 0.5 um/px read from a 0.25 um/px level 0


@pytest.fixture
def run(tmp_path):
    feats = tmp_path / "features"
    write_features(feats / "tumor_001.h5", np.ones((3, 4), np.float16), COORDS, np.array([0.0, 0.5, 1.0]),
                   attrs={"level0_size": SIZE})
    run = tmp_path / "runs" / "standard" / "dsmil" / "seed0"
    run.mkdir(parents=True)
    with h5py.File(run / "instance_scores.h5", "w") as f:
        f.attrs["score"] = "instance logit"
        f["tumor_001"] = np.array([-1.5, 0.25, 3.0], np.float32)
    with h5py.File(run / "score_maps.h5", "w") as f:
        f.create_group("attention")["tumor_001"] = np.array([0.1, 0.2, 0.7], np.float32)
    (run / "run.json").write_text(json.dumps({"method": "dsmil"}))
    return run, feats


def test_each_patch_is_a_tile_with_its_square_and_scores(run, tmp_path):
    run_dir, feats = run
    [path] = write_run_geojson(run_dir, feats, tmp_path / "geo")
    doc = json.loads(path.read_text())
    assert path.name == "tumor_001.geojson" and doc["type"] == "FeatureCollection" and len(doc["features"]) == 3
    for (x, y), feat, logit, att, tf in zip(COORDS, doc["features"], [-1.5, 0.25, 3.0], [0.1, 0.2, 0.7], [0, 0.5, 1]):
        assert feat["type"] == "Feature" and feat["geometry"]["type"] == "Polygon"
        ring = feat["geometry"]["coordinates"][0]
        assert ring == [[x, y], [x + SIZE, y], [x + SIZE, y + SIZE], [x, y + SIZE], [x, y]]  # closed, level 0
        props = feat["properties"]
        assert props["objectType"] == "tile" and props["name"] == "dsmil"
        m = props["measurements"]
        assert m["dsmil: instance logit"] == pytest.approx(logit) and m["dsmil: attention"] == pytest.approx(att)
        assert m["tumour fraction"] == pytest.approx(tf)


def test_the_cli_and_its_errors(run, tmp_path):
    run_dir, feats = run
    assert main(["geojson", "--run", str(run_dir), "--features", str(feats), "--out", str(tmp_path / "g"),
                 "--slide-id", "tumor_001"]) == 0
    assert (tmp_path / "g" / "tumor_001.geojson").is_file()
    with pytest.raises(WsimilError, match="has 2 values for 3 patches"):
        tiles_geojson(COORDS, SIZE, {"score": np.zeros(2)})
    write_features(feats / "tumor_001.h5", np.ones((3, 4), np.float16), COORDS)  # no level0_size
    with pytest.raises(WsimilError, match="no level0_size"):
        write_run_geojson(run_dir, feats, tmp_path / "h")
