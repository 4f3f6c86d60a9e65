"""Numbers the README and docs quote from the configs: each is checked against the config it comes from, so a
changed config with an unchanged doc fails here."""

import re
from pathlib import Path

import pytest

from wsimil.config import load_config, load_merged_config
from wsimil.models.base import list_methods

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
CONFIG = load_config(ROOT / "config.yaml")


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_readme_counts_of_the_embedded_default():
    text = _flat(README)
    tr = CONFIG["training"]
    assert f"with {len(tr['methods'])} methods and {len(tr['seeds'])} seeds" in text
    stop = tr["stop"]
    assert f"the training loss has not improved by {stop['min_delta']:.0%} for {stop['patience']} epochs" in text
    s = CONFIG["synthetic"]["slides"]
    n = {k: sum(v.values()) for k, v in s.items()}
    assert f"{n['train']} training, {n['val']} validation and {n['test']} test slides ({s['test']['tumour']} tumour)" in text
    assert f"the {n['test']} test slides again" in text


def test_readme_names_every_registered_method_once_in_its_table():
    table = README[README.index("| family | methods |"):]
    table = table[: table.index("\n\n")]
    named = set(re.findall(r"`([a-z0-9_]+)`", table))
    assert named == set(list_methods()), sorted(named ^ set(list_methods()))
    assert f"all {len(list_methods())} methods" in _flat(README)


def test_experiments_doc_quotes_the_training_protocol():
    text = _flat((ROOT / "docs" / "experiments.md").read_text())
    tr = CONFIG["training"]
    stop = tr["stop"]
    assert tr["max_steps"] is None and "There is no shared step cap (`training.max_steps: null`)" in text
    assert (f"the training loss (the data term) has not improved on its best by more than {stop['min_delta']:.0%} "
            f"for {stop['patience']} consecutive epochs") in text


def test_methods_doc_quotes_the_sensitivity_study_as_configured():
    text = _flat((ROOT / "docs" / "methods.md").read_text())
    study = CONFIG["focusmil_sensitivity"]
    assert f"the embedded default runs {len(study['seeds'])} seeds and {study['factors']['steps'][0]}x the steps" in text
    full = load_merged_config([ROOT / "config.yaml", ROOT / "configs" / "full.yaml"])["focusmil_sensitivity"]
    assert f"`configs/full.yaml` {len(full['seeds'])} seeds and the built-in grid" in text


@pytest.mark.parametrize("overlay", ["full.yaml", "camelyon16.yaml", "slides.yaml"])
def test_overlays_that_say_all_16_methods_train_them(overlay):
    cfg = load_merged_config([ROOT / "config.yaml", ROOT / "configs" / overlay])
    assert sorted(cfg["training"]["methods"]) == list_methods()


def test_experiments_doc_quotes_the_default_budget():
    from wsimil.studies.focusmil_sensitivity import settings

    text = _flat((ROOT / "docs" / "experiments.md").read_text())
    s = CONFIG["synthetic"]["slides"]
    main = sum(sum(v.values()) for v in s.values())
    study = CONFIG["focusmil_sensitivity"]
    assert f"({main} slides of two hospitals, and the {sum(s['test'].values())} test slides again" in text
    assert (f"{len(CONFIG['training']['seeds'])} seeds, {len(CONFIG['training']['methods'])} methods in the "
            "standard/ood/poison/milunit experiments") in text
    assert f"{len(CONFIG['dtfd_ablation']['pseudo_bags'])} pseudo-bag counts, {len(CONFIG['minet_curves']['betas'])} beta" in text
    extra = [x for x in CONFIG["dose_response"]["strengths"] if x != CONFIG["poison"]["strength"]]
    assert f"{len(extra)} extra poison strengths" in text
    assert (f"{len(settings(study['factors']))} settings on {len(study['problems'])} problems with "
            f"{len(study['seeds'])} seeds") in text


def test_security_doc_quotes_the_limits_as_configured():
    """docs/security.md's table of limits: every key of the schema's `limits:` with its default, which is also
    wsimil.limits.Limits' default."""
    from dataclasses import asdict

    from wsimil.limits import Limits

    text = (ROOT / "docs" / "security.md").read_text()
    defaults = CONFIG["limits"]
    assert defaults == asdict(Limits())
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+) \|", text, flags=re.M))
    assert set(rows) == set(defaults), rows
    for key, value in defaults.items():
        shown = rows[key].strip()
        want = str(value).lower() if isinstance(value, bool) else f"{value:,}"
        assert shown.split(" (")[0] == want, (key, shown, want)


def test_docs_and_code_reference_nothing_outside_the_repository():
    """A user has only the repository: no text may cite files that are not in it (the engineering notes
    REFERENCE.md, DESIGN.md, STYLE.md, SLURM.md) or the work process (issue numbers, sessions). Outside facts
    are cited through docs/references.md."""
    pattern = re.compile(r"(?:REFERENCE|DESIGN|STYLE|SLURM)\.md|(?i:\bissue[ -]?#?\d+|\bsessions?\b)")
    suffixes = {".md", ".py", ".rst", ".yaml", ".smk"}
    files = [ROOT / "README.md", ROOT / "Makefile", ROOT / "Snakefile"]
    for folder in ("docs", "src", "report", "schemas", "benchmarks", "rules"):
        for path in sorted((ROOT / folder).rglob("*")):
            parts = path.relative_to(ROOT).parts
            if any(p.startswith(".") or p == "__pycache__" or p.endswith(".egg-info") for p in parts):
                continue
            if path.is_file() and (path.suffix in suffixes or folder == "rules"):
                files.append(path)
    assert len(files) > 50, "the scan found almost no files: has the layout changed?"
    found = []
    for path in files:
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for m in pattern.finditer(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {m.group(0)!r} in {line.strip()[:120]!r}")
    assert not found, "text cites what is not in the repository:\n" + "\n".join(found)
