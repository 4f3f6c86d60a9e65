"""The slides table: what patching found on every slide (resolution read, tissue, patch count).

On real data this is the first thing to look at: a slide whose scanner resolution was misread, whose tissue mask
needed the Otsu fallback, or that gave far fewer patches than its neighbours shows up here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from wsimil.datasets.sheet import read_sheet
from wsimil.h5gate import open_h5
from wsimil.io import WsimilError

COLUMNS = ["slide_id", "split", "label", "center", "mpp_level0", "read_level", "patch_level0_px", "n_patches",
           "tissue_fraction", "tissue_method"]


def slide_table(sheet_path: str | os.PathLike, patch_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per slide of the sheet from its patch file ``<patch_dir>/<slide_id>.h5`` (attrs of wsimil patch)."""
    sheet = read_sheet(sheet_path)
    rows = []
    for r in sheet.itertuples():
        path = Path(patch_dir) / f"{r.slide_id}.h5"
        try:
            with open_h5(path, "patch file") as f:
                a = f.attrs
                rows.append([r.slide_id, r.split, r.label, r.center, float(a["mpp_level0"]), int(a["level"]),
                             int(a["level0_size"]), int(f["coords"].shape[0]), float(a["tissue_fraction"]),
                             str(a["tissue_method"])])
        except (OSError, KeyError) as exc:
            raise WsimilError(f"cannot read the patch file {path}: {exc}") from exc
    return pd.DataFrame(rows, columns=COLUMNS)


def caption(df: pd.DataFrame) -> str:
    n = df["n_patches"].to_numpy()
    return (f"Patching of every slide: level-0 resolution (um/px) read from the file, the pyramid level read, the "
            f"patch side in level-0 px, patches kept, tissue share of the slide and how the mask was found. "
            f"{len(df)} slides, {int(n.sum())} patches, median {np.median(n):.0f} per slide "
            f"(range {n.min()}-{n.max()}).")
