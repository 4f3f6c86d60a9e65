"""A MIL method from another package runs through wsimil: installed (entry point `wsimil.methods`), or as
`package.module:attribute` on the Python path; a broken plugin is refused with its name and its problem.

Every check runs in a subprocess: registering a method is process-wide, and the other tests see the built-ins.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wsimil.features.store import write_features

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "wsimil-example-plugin"


def run(args, pythonpath=(), check=True, cwd=None, **kw):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, pythonpath))}
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=1500, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The example plugin pip-installed into a folder of its own (a site directory on PYTHONPATH): its entry
    point is found like any installed package's, and the test venv is left as it was."""
    site = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("plugin") / "wsimil-example-plugin"
    shutil.copytree(EXAMPLE, source)  # pip builds in the source tree: keep the repository's clean
    args = ["-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(source)]
    proc = run(args + ["--no-build-isolation"], check=False)
    if proc.returncode != 0:  # the venv's setuptools is too old to build it in place: let pip fetch one
        run(args)
    return site


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    rows = []
    for i, split in enumerate(["train"] * 8 + ["val"] * 4 + ["test"] * 4):
        sid, label = f"s{i:02d}", i % 2
        x = rng.normal(size=(12, 6)).astype(np.float32)
        x[:2] += 4 * label
        write_features(root / "features" / f"{sid}.h5", x, np.zeros((12, 2), np.int64))
        rows.append({"slide_id": sid, "label": label, "split": split, "center": "0", "path": "", "annotation": ""})
    pd.DataFrame(rows).to_csv(root / "slides.csv", index=False)
    return root


def test_an_installed_plugin_is_listed_with_its_origin_and_trains(installed, tiny):
    out = run(["-m", "wsimil", "methods"], [installed]).stdout
    assert "example_mixpool  [other]" in out
    assert "from:   plugin example_mixpool (wsimil_example_plugin, package wsimil-example-plugin)" in out
    run(["-m", "wsimil", "train", "--features", str(tiny / "features"), "--slides", str(tiny / "slides.csv"),
         "--method", "example_mixpool", "--seed", "0", "--out", str(tiny / "run"), "--set", "epochs=3"], [installed])
    pred = pd.read_csv(tiny / "run" / "predictions.csv")
    assert len(pred) == 16 and pred["score"].between(0, 1).all()
    assert json.loads((tiny / "run" / "run.json").read_text())["method"] == "example_mixpool"
    # the schema accepts its name, and the public API is importable from wsimil itself
    code = ("from wsimil.config import validate_config; import wsimil; "
            "c = validate_config({'training': {'methods': ['maxpool', 'example_mixpool']}}); "
            "print(c['training']['methods'], wsimil.get_method('example_mixpool').family)")
    assert run(["-c", code], [installed]).stdout.strip() == "['maxpool', 'example_mixpool'] other"


def test_a_module_attribute_method_from_a_folder_trains(tmp_path, tiny):
    src = tmp_path / "mymil"
    src.mkdir()
    text = (EXAMPLE / "src" / "wsimil_example_plugin" / "__init__.py").read_text()
    (src / "pooling.py").write_text(text.replace('"example_mixpool"', '"my_mixpool"'))
    code = ("from wsimil.config import validate_config; "
            "c = validate_config({'training': {'methods': ['maxpool', 'pooling:MixPool']}}); "
            "print(c['training']['methods'], c['plugins'])")
    assert run(["-c", code], [src]).stdout.strip() == "['maxpool', 'my_mixpool'] ['pooling:MixPool']"
    run(["-m", "wsimil", "--plugin", "pooling:MixPool", "train", "--features", str(tiny / "features"), "--slides",
         str(tiny / "slides.csv"), "--method", "my_mixpool", "--seed", "0", "--out", str(tmp_path / "run"),
         "--set", "epochs=2"], [src])
    assert (tmp_path / "run" / "model.pt").is_file()


BROKEN = {
    "import": ("X", "import no_such_package_anywhere\n", "failed to import: ModuleNotFoundError"),
    "defaults": ("MaxPool", "from wsimil.models.maxpool import InstancePoolingMIL as MaxPool\nfrom wsimil import register_method\n"
              "register_method('maxpool', family='max-pooling', defaults={}, description='', source='')(MaxPool)\n",
              "defaults lack"),
    "shape": ("Wrong", textwrap.dedent('''
        import torch
        from torch import nn
        from wsimil import MILModel, MILOutput, register_method
        from wsimil.models.ops import segment_max

        class Wrong(MILModel):
            def __init__(self, *, in_dim):
                super().__init__()
                self.f = nn.Linear(in_dim, 1)

            def forward(self, batch):
                s = self.f(batch.x)  # (N, 1): the bag logits come out (B, 1)
                return MILOutput(bag_logits=segment_max(s.squeeze(-1), batch.bag_index, batch.n_bags)[:, None],
                                 instance_scores=s.squeeze(-1))

        register_method("wrong_shape", family="other", description="", source="",
                        defaults=dict(optimizer="adam", lr=1e-4, weight_decay=0.0, momentum=0.0, nesterov=False,
                                      betas=(0.9, 0.999), lr_decay=0.0, epochs=1, bags_per_batch=1, grad_clip=None,
                                      scheduler=None, selection="val_auc", model={}))(Wrong)
        '''), "bag logits have shape (2, 1), expected (B,) = (2,)"),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_broken_plugin_is_refused_naming_it(tmp_path, kind):
    attr, body, message = BROKEN[kind]
    (tmp_path / f"broken_{kind}.py").write_text(body)
    code = (f"from wsimil.config import validate_config; from wsimil.models.base import check_method; "
            f"c = validate_config({{'training': {{'methods': ['broken_{kind}:{attr}']}}}}); "
            f"[check_method(m) for m in c['training']['methods']]")
    proc = run(["-c", code], [tmp_path], check=False)
    assert proc.returncode != 0 and message in proc.stderr and f"module broken_{kind}" in proc.stderr, proc.stderr[-1500:]


def test_a_method_registered_twice_names_both(tmp_path):
    (tmp_path / "dup.py").write_text(textwrap.dedent('''
        from wsimil.models.maxpool import InstancePoolingMIL as MaxPool
        from wsimil.models.base import get_method, register_method
        spec = get_method("maxpool")
        register_method("maxpool", family="max-pooling", defaults={k: v for k, v in spec.defaults.items()},
                        description="", source="")(MaxPool)
        '''))
    proc = run(["-c", "from wsimil.models.base import resolve_method; resolve_method('dup:MaxPool')"], [tmp_path],
               check=False)
    assert proc.returncode != 0 and "module dup (dup:MaxPool): method 'maxpool' is registered twice (first by built-in)" in proc.stderr, proc.stderr[-1500:]


@pytest.mark.workflow
def test_the_example_plugin_runs_the_workflow_on_ci(installed, tmp_path):
    """The installed example through Snakemake on configs/ci.yaml (one seed, the standard and unit-test
    experiments and the example's own experiment, label_noise): its method is checked before any job, trained,
    evaluated and reported like a built-in one; its experiment derives its sheet, trains every method, writes its
    table and page, and lands in SUMMARY.md, the claims table and every card."""
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    overlay = tmp_path / "plugin.yaml"
    overlay.write_text("training:\n  methods: [maxpool, abmil, example_mixpool]\n  seeds: [0]\n"
                       "experiments: [standard, milunit, label_noise]\nlabel_noise:\n  fraction: 0.25\n")
    run(["-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--cores", "2",
         "--configfile", str(ROOT / "configs" / "ci.yaml"), str(overlay)], [installed])
    table = pd.read_csv(tmp_path / "results" / "ci" / "tables" / "standard.csv")
    assert list(table["method"]) == ["maxpool", "abmil", "example_mixpool"] and table["slide_auc_mean"].between(0, 1).all()
    unit = pd.read_csv(tmp_path / "results" / "ci" / "tables" / "milunit.csv")
    assert "example_mixpool" in set(unit["method"])
    card = pd.read_csv(tmp_path / "results" / "ci" / "cards" / "example_mixpool.csv").set_index("quantity")
    assert 0 <= card.loc["clean slide AUC of seed-averaged scores", "value"] <= 1
    assert card.loc["poisoned slide AUC of seed-averaged scores", "reading"] == "not run"
    results = tmp_path / "results" / "ci"
    # the experiment's sheet: the main one with a quarter of the training and validation labels flipped
    main, noisy = (pd.read_csv(results / "data" / f) for f in ("slides.csv", "slides_label_noise.csv"))
    fit = main["split"].isin(["train", "val"])
    assert list(noisy["slide_id"]) == list(main["slide_id"])
    assert (noisy.loc[~fit, "label"] == main.loc[~fit, "label"]).all()
    assert (noisy.loc[fit, "label"] != main.loc[fit, "label"]).sum() == round(0.25 * fit.sum())
    table = pd.read_csv(results / "tables" / "label_noise.csv")
    assert list(table["method"]) == ["maxpool", "abmil", "example_mixpool"]
    comp = pd.read_csv(results / "tables" / "label_noise_comparison.csv")
    assert (comp["slides paired"] == "yes").all()
    assert "label_noise" in (results / "pages" / "label_noise.html").read_text()
    claims = pd.read_csv(results / "tables" / "claims.csv")
    assert set(claims.loc[claims["claim"].eq("label_noise") & claims["level"].eq("pair"), "pair"]) == {
        "maxpool vs abmil"}  # example_mixpool is neither family
    claims = claims[claims["level"] == "claim"].set_index("claim")
    assert claims.loc["label_noise", "verdict"] in ("supported", "contradicted", "inconclusive")
    assert np.isfinite(claims.loc["label_noise", "estimate"])
    assert "Flipped training labels (example plugin" in (results / "SUMMARY.md").read_text()
    for m in ("maxpool", "abmil", "example_mixpool"):
        row = pd.read_csv(results / "cards" / f"{m}.csv").set_index("quantity").loc[
            "change with flipped training labels (noisy − clean)"]
        assert -1 <= row["value"] <= 1 and row["ci_low"] <= row["value"] <= row["ci_high"]
        assert row["value"] == pytest.approx(comp.set_index("method").loc[m, "change_noisy_seedavg"])
