"""ASAP XML tumour annotations (the CAMELYON16 format) and per-patch tumour fractions.

CAMELYON16 ships one XML per tumour slide: polygons in level-0 pixels, grouped by ``PartOfGroup``.
Groups ``_0``, ``_1`` and ``Tumor`` are tumour; ``_2`` marks non-tumour regions cut out of them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence
from xml.etree import ElementTree as ET

import numpy as np
from defusedxml import ElementTree as SafeET
from shapely import STRtree, box
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union
from shapely.validation import make_valid

from wsimil.io import WsimilError, atomic_path, check_input_file, excerpt

TUMOUR_GROUPS = ("_0", "_1", "Tumor", "tumor", "metastases")
EXCLUDED_GROUPS = ("_2", "Exclusion", "exclusion")


def annotation_file(path: str | os.PathLike | None) -> Path | None:
    """A slide's annotation path, or None when the sheet gives none ("", "nan"); a named file must exist."""
    if path is None or str(path).strip() in ("", "nan", "None"):
        return None
    return check_input_file(path, "annotation file")


def write_asap_xml(
    path: str | os.PathLike, polygons: Sequence[np.ndarray], group: str = "_0", color: str = "#F4FA58"
) -> None:
    """Write polygons ((K, 2) arrays of level-0 x, y) as an ASAP XML file, as CAMELYON16 ships them."""
    root = ET.Element("ASAP_Annotations")
    annotations = ET.SubElement(root, "Annotations")
    for i, poly in enumerate(polygons):
        poly = np.asarray(poly, dtype=float)
        if poly.ndim != 2 or poly.shape[1] != 2 or len(poly) < 3:
            raise ValueError(f"polygon {i} must be (K>=3, 2), got {poly.shape}")
        ann = ET.SubElement(
            annotations, "Annotation", Name=f"Annotation {i}", Type="Polygon", PartOfGroup=group, Color=color
        )
        coords = ET.SubElement(ann, "Coordinates")
        for k, (x, y) in enumerate(poly):
            ET.SubElement(coords, "Coordinate", Order=str(k), X=f"{x:.4f}", Y=f"{y:.4f}")
    groups = ET.SubElement(root, "AnnotationGroups")
    g = ET.SubElement(groups, "Group", Name=group, PartOfGroup="None", Color="#FF0000")
    ET.SubElement(g, "Attributes")
    ET.indent(root, space="\t")
    with atomic_path(path) as tmp:
        ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)


def read_asap_xml(path: str | os.PathLike) -> dict[str, list[np.ndarray]]:
    """Polygons per ``PartOfGroup`` from an ASAP XML file, each (K, 2) float level-0 x, y."""
    path = Path(path)
    try:
        root = SafeET.parse(path).getroot()
    except FileNotFoundError:
        raise WsimilError(f"annotation file not found: {path}") from None
    except Exception as exc:  # ParseError (says where), defusedxml's EntitiesForbidden (names the entity), ...
        raise WsimilError(f"cannot parse annotation XML {path}: {type(exc).__name__}: "
                          f"{excerpt(str(exc), 80)}") from None
    out: dict[str, list[np.ndarray]] = {}
    for ann in root.iter("Annotation"):
        group = ann.get("PartOfGroup", "None")
        pts = []
        for c in ann.iter("Coordinate"):
            try:
                order = int(float(c.get("Order", len(pts))))
                pts.append((order, float(c.get("X")), float(c.get("Y"))))
            except (TypeError, ValueError) as exc:
                raise WsimilError(f"{path}: bad Coordinate {len(pts) + 1} in annotation {excerpt(ann.get('Name'))}: "
                                  f"X, Y and Order must be numbers") from None
        if len(pts) < 3:
            continue  # ASAP "Dot" / degenerate annotations have no area
        pts.sort(key=lambda t: t[0])
        out.setdefault(group, []).append(np.array([(x, y) for _, x, y in pts], dtype=float))
    return out


def tumour_region(path: str | os.PathLike) -> BaseGeometry:
    """The tumour area of a slide as one shapely geometry: tumour groups minus excluded groups."""
    groups = read_asap_xml(path)
    # Groups other than the excluded ones count as tumour (other tools name their single class freely).
    tumour = [p for g, polys in groups.items() if g not in EXCLUDED_GROUPS for p in polys]
    excluded = [p for g in EXCLUDED_GROUPS for p in groups.get(g, [])]
    region = unary_union([make_valid(Polygon(p)) for p in tumour]) if tumour else Polygon()
    if excluded:
        region = region.difference(unary_union([make_valid(Polygon(p)) for p in excluded]))
    return region


def tumour_fraction(region: BaseGeometry, coords: np.ndarray, size_level0: float) -> np.ndarray:
    """Fraction (N,) of each square patch (level-0 top-left ``coords`` (N, 2), side ``size_level0``) inside ``region``."""
    coords = np.asarray(coords, dtype=float).reshape(-1, 2)
    frac = np.zeros(len(coords), dtype=np.float32)
    if region.is_empty or len(coords) == 0:
        return frac
    boxes = [box(x, y, x + size_level0, y + size_level0) for x, y in coords]
    tree = STRtree(boxes)
    hits = np.unique(tree.query(region, predicate="intersects"))
    area = float(size_level0) ** 2
    for i in hits:
        frac[i] = boxes[i].intersection(region).area / area
    return np.clip(frac, 0.0, 1.0)
