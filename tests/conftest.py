"""Shared test settings."""

import pytest
import torch

# The test models are tiny: one thread is fastest, and on a loaded 2-core machine torch's spinning
# worker threads make one-bag-per-step training an order of magnitude slower.
torch.set_num_threads(1)


# The slowest files first (the SLURM run, then the other Snakemake runs): `make test`'s workers
# (pytest-xdist, --dist loadfile) take files in collection order, so the long runs start at once and the
# hundreds of short tests fill in beside them instead of one long run being left alone at the end.
_FIRST = ("test_slurm.py", "test_workflow.py", "test_workflow_data.py", "test_plugins.py", "test_resume.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(_FIRST)))  # stable: file order kept otherwise


@pytest.fixture
def drawn(monkeypatch) -> list:
    """The Figures wsimil's plotting functions save (in order), to read their Axes back."""
    from wsimil.reporting import figures

    figs = []
    save = figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, out, dpi: figs.append(fig) or save(fig, out, dpi))
    return figs
