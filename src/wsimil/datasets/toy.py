"""The separable toy MIL problem of the test suite and of the FocusMIL sensitivity study.

Negative instances are N(0, I); a positive bag holds 1-3 instances shifted by ``witness_shift`` along one
random unit direction (the concept), so max pooling over a linear instance score separates the bags
perfectly. Bags alternate negative / positive within each split.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from wsimil.training.data import BagSet


def separable_bags(seed: int = 0, n: Sequence[int] = (40, 12, 24), dim: int = 32, witness_shift: float = 6.0,
                   bag_size: tuple[int, int] = (20, 60)) -> BagSet:
    """``n``: bags in train, val and test; each bag has ``bag_size[0]`` to ``bag_size[1] - 1`` instances."""
    rng = np.random.default_rng(seed)
    concept = rng.normal(size=dim)
    concept /= np.linalg.norm(concept)
    feats, labels, splits = [], [], []
    for split, count in zip(("train", "val", "test"), n):
        for i in range(count):
            label = i % 2
            x = rng.normal(size=(rng.integers(*bag_size), dim))
            if label:
                k = rng.integers(1, 4)
                x[:k] += witness_shift * concept
            feats.append(torch.tensor(x, dtype=torch.float32))
            labels.append(label)
            splits.append(split)
    return BagSet([f"s{i:03d}" for i in range(len(feats))], np.array(labels), np.array(splits), feats)
