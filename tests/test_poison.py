"""Poison: which slides, which patches, and what the noise does to the pixels."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from wsimil.io import WsimilError
from wsimil.poison import (
    DEFAULT_TARGETS,
    PoisonSpec,
    apply_poison,
    n_poisoned,
    patch_rng,
    poisoned_patch_mask,
    select_poisoned_slides,
    stable_hash,
)


def sample_sheet() -> pd.DataFrame:
    rows = []
    for split in ("train", "val", "test"):
        for label in (0, 1):
            for k in range(2):
                rows.append({"slide_id": f"{split}_{label}_{k}", "label": label, "split": split, "center": k})
    return pd.DataFrame(rows)


def test_select_default_targets():
    sheet = sample_sheet()
    got = select_poisoned_slides(sheet, DEFAULT_TARGETS)
    assert got == ["train_0_0", "train_0_1", "val_0_0", "val_0_1", "test_1_0", "test_1_1"]
    assert select_poisoned_slides(sheet) == got


def test_select_custom_targets_and_label_types():
    sheet = sample_sheet()
    sheet["label"] = sheet["label"].astype(str)  # labels read as text still match 0/1 targets
    assert select_poisoned_slides(sheet, [{"split": ["test"], "label": [1], "center": [1]}]) == ["test_1_1"]
    assert select_poisoned_slides(sheet, []) == []
    with pytest.raises(WsimilError, match="no column 'hospital'"):
        select_poisoned_slides(sheet, [{"hospital": [1]}])


@pytest.mark.parametrize("n,fraction,expected", [(10, 0.5, 5), (9, 0.5, 5), (7, 0.5, 4), (5, 0.1, 1), (3, 0.01, 1),
                                                  (4, 0.0, 0), (0, 0.5, 0), (6, 1.0, 6), (1000, 0.25, 250)])
def test_mask_count(n, fraction, expected):
    spec = PoisonSpec(strength=0.25, fraction=fraction, seed=0)
    mask = poisoned_patch_mask("slide_a", n, spec)
    assert mask.dtype == bool and mask.shape == (n,) and mask.sum() == expected == n_poisoned(n, fraction)


def test_mask_deterministic_and_slide_dependent():
    spec = PoisonSpec(strength=0.25, fraction=0.3, seed=7)
    a = poisoned_patch_mask("slide_a", 200, spec)
    np.testing.assert_array_equal(a, poisoned_patch_mask("slide_a", 200, spec))
    assert (a != poisoned_patch_mask("slide_b", 200, spec)).any()
    assert (a != poisoned_patch_mask("slide_a", 200, PoisonSpec(0.25, 0.3, seed=8))).any()


def test_stable_hash_is_not_salted():
    code = "from wsimil.poison import stable_hash; print(stable_hash('tumor_001'))"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": str(s)}).stdout.strip() for s in (1, 2)}
    assert outs == {str(stable_hash("tumor_001"))}


def test_apply_poison_changes_only_green():
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 200, (32, 32, 3), dtype=np.uint8)
    spec = PoisonSpec(strength=0.25, fraction=0.5, seed=1)
    out = apply_poison(tile, patch_rng(spec, "s", 3), spec.strength)
    assert out.dtype == np.uint8 and out.shape == tile.shape
    np.testing.assert_array_equal(out[..., 0], tile[..., 0])
    np.testing.assert_array_equal(out[..., 2], tile[..., 2])
    g = out[..., 1].astype(int) - tile[..., 1].astype(int)
    assert (g >= 0).all() and (g > 0).mean() > 0.9  # green only ever goes up: a green cast plus grain
    assert 0.6 * 0.25 * 255 < g.mean() < 1.0 * 0.25 * 255  # half-normal mean 0.80 * strength * 255
    # reproducible per (seed, slide, patch), different between patches
    np.testing.assert_array_equal(out, apply_poison(tile, patch_rng(spec, "s", 3), spec.strength))
    assert (out != apply_poison(tile, patch_rng(spec, "s", 4), spec.strength)).any()
    # clipped, never wrapped
    white = np.full((8, 8, 3), 250, np.uint8)
    np.testing.assert_array_equal(apply_poison(white, 0, 1.0)[..., 1] >= 250, True)
    # zero strength is the identity
    np.testing.assert_array_equal(apply_poison(tile, 0, 0.0), tile)


def test_spec_validation():
    with pytest.raises(WsimilError, match="fraction"):
        PoisonSpec(strength=0.1, fraction=1.5, seed=0)
    with pytest.raises(WsimilError, match="strength"):
        PoisonSpec(strength=-0.1, fraction=0.5, seed=0)
