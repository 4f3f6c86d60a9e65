"""Public datasets as download sources: what to fetch, and the sample sheet built from each dataset's own labels.

    plan = plan_source(config)          # fetches the small label files once, then plans (no slide is fetched)
    plan.sheet                          # slide_id,label,split,center,path,annotation (+ patient, source_class)
    plan.files["images/tumor_001.tif"]  # RemoteFile(url, md5, size) of every slide and annotation to fetch

A *source* turns the dataset's label files into a catalogue: one row per slide with its label, the source's own
split (``train``/``test``), centre, patient, and the files of the slide and of its annotation, in the source's
layout. The rest is common to every source (:func:`plan_source`): the subset a config asks for
(``download.first_n_per_class`` and ``slides``, ``dataset.exclude``), and the splits: the source's test slides are the
test split (a patient-level draw of ``test_fraction`` where it has none), and ``val_fraction`` of the training
patients of every class are held out for validation. Everything is deterministic in ``split_seed``.

Sources (``SOURCES``), layouts and label files as published (docs/data.md):

- ``camelyon16``: ``images/{normal,tumor,test}_NNN.tif``, ``annotations/<slide>.xml``,
  ``evaluation/reference.csv`` (``image,type,class,center``), ``checksums.md5``. The known corrections are
  applied and printed: ``normal_086`` is ``tumor_111``; ``test_049`` duplicates another slide and is left out;
  ``test_114`` (tumour, not exhaustively annotated) is kept or left out by ``download.camelyon16_test_114``.
- ``camelyon17``: ``images/patient_<ppp>_node_<n>.tif`` (patient 000-199, node 0-4), ``annotations/<slide>.xml`` (50 slides),
  ``stages.csv`` (``patient,stage``; the challenge's ``stage_labels.csv`` is read when ``stages.csv`` is not
  there). Label 1 = any metastasis (itc, micro, macro). Centre = (patient // 20) mod 5: each centre gave 20
  consecutive patients to the training and to the test set.
- ``tcga-nsclc``: the user's GDC manifests (``id, filename, md5, size, state``), one per class (LUAD 0,
  LUSC 1); files from the GDC data endpoint ``<base>/<file id>``; centre = the tissue source site of the
  barcode, patient = its first 12 characters.
"""

from __future__ import annotations

import csv
import io
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from wsimil.datasets.download import FileSpec, download_file, parse_md5_manifest
from wsimil.datasets.sheet import relocate
from wsimil.io import WsimilError, check_slide_id, read_error

CATALOGUE_COLUMNS = ["slide_id", "label", "source_split", "center", "patient", "source_class", "path", "annotation"]


@dataclass(frozen=True)
class RemoteFile:
    """A file of the source: where it comes from and what it must be."""

    url: str
    md5: str | None = None
    size: int | None = None


@dataclass
class Plan:
    """What a dataset config resolves to: the sample sheet, the files behind it, and what was decided."""

    source: str
    root: Path  # the local mirror (download.dir)
    sheet: pd.DataFrame  # slide_id,label,split,center,path,annotation (paths relative to root),patient,source_class
    files: dict[str, RemoteFile]  # path relative to root -> its remote file
    notes: list[str] = field(default_factory=list)  # corrections, exclusions, subsets (printed and recorded)
    left_out: dict[str, str] = field(default_factory=dict)  # slide id -> why it is not in the sheet

    def local(self, rel: str) -> Path:
        return self.root / rel


# -- the sources -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metadata:
    """A small label file fetched before planning; ``alternatives`` are tried in order, ``optional`` may be
    missing at the source."""

    alternatives: tuple[str, ...]
    optional: bool = False


@dataclass(frozen=True)
class Source:
    name: str
    base_url: str
    metadata: tuple[Metadata, ...]
    catalogue: Callable[[Path, dict, str, list[str], dict[str, str]], tuple[pd.DataFrame, dict[str, RemoteFile]]]
    # (root, download config, base url, notes, left_out) -> (catalogue, files); appends to notes and left_out
    doc: str = ""


def _md5s(root: Path, prefix: str) -> dict[str, str]:
    """checksums.md5 as {path relative to the dataset root: md5}; {} when the source published none."""
    path = root / "checksums.md5"
    if not path.is_file():
        return {}
    try:
        raw = parse_md5_manifest(path.read_text())
    except WsimilError as exc:
        raise WsimilError(f"{path}: {exc}") from exc
    out = {}
    for name, md5 in raw.items():
        name = name.lstrip("/")
        if name.startswith(prefix + "/"):
            name = name[len(prefix) + 1 :]
        out[name] = md5
    return out


def _first_existing(root: Path, names: tuple[str, ...]) -> Path | None:
    return next((root / n for n in names if (root / n).is_file()), None)


def _camelyon16(root: Path, dl: dict, base: str, notes: list[str], left_out: dict[str, str]):
    ref_path = root / "evaluation" / "reference.csv"
    text = ref_path.read_text()
    first = text.lstrip().split(",", 1)[0].strip().lower()
    header = None if first.startswith("test_") else 0  # the challenge's testing/reference.csv has no header
    try:
        ref = pd.read_csv(io.StringIO(text), header=header, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise WsimilError(f"cannot read {ref_path}: {read_error(exc)}") from None
    if header is None:
        ref = ref.iloc[:, :3]
        ref.columns = ["image", "type", "class"]
    if not {"image", "type"} <= set(ref.columns):
        raise WsimilError(f"{ref_path}: expected columns image,type,class,center, found {list(ref.columns)}")
    md5 = _md5s(root, "CAMELYON16")
    rows: dict[str, dict] = {}
    for line, r in enumerate(ref.to_dict("records"), 2 if header == 0 else 1):
        sid = re.sub(r"\.tif$", "", r["image"].strip())
        kind = r["type"].strip().lower()
        if kind not in ("normal", "tumor", "tumour"):
            raise WsimilError(f"{ref_path} line {line}: type {r['type']!r} is neither normal nor tumor")
        rows[check_slide_id(sid, ref_path)] = {
            "label": int(kind != "normal"), "center": str(r.get("center", "")).strip(),
            "source_class": str(r.get("class", "")).strip().lower() or kind,
        }
    # Training slides the reference file does not list (older releases): their class is in the file name.
    for name in md5:
        m = re.fullmatch(r"images/((normal|tumor)_\d{3})\.tif", name)
        if m and m.group(1) not in rows:
            rows[m.group(1)] = {"label": int(m.group(2) == "tumor"), "center": "", "source_class": m.group(2)}
    if "normal_086" in rows:
        if "tumor_111" in rows:
            del rows["normal_086"]
            left_out["normal_086"] = "the same slide as tumor_111 (known CAMELYON16 correction)"
            notes.append("camelyon16: normal_086 is the slide published again as tumor_111; normal_086 left out")
        else:
            rows["normal_086"].update(label=1, source_class="tumor")
            notes.append("camelyon16: normal_086 is tumor_111 (a tumour slide); its label is corrected to 1")
    else:
        notes.append("camelyon16: normal_086 is tumor_111; this release already lists it as tumor_111")
    for sid, why in [("test_049", "a duplicate of another slide (known CAMELYON16 correction)")] + (
        [("test_114", "not exhaustively annotated (download.camelyon16_test_114: exclude)")]
        if dl["camelyon16_test_114"] == "exclude" else []
    ):
        if rows.pop(sid, None) is not None:
            left_out[sid] = why
            notes.append(f"camelyon16: {sid} left out: {why}")
    if dl["camelyon16_test_114"] == "keep" and "test_114" in rows:
        notes.append("camelyon16: test_114 kept (download.camelyon16_test_114: keep); its lesions are not "
                     "exhaustively annotated, so its patch labels are incomplete")
    cat, files = [], {}
    for sid, r in sorted(rows.items()):
        img = f"images/{sid}.tif"
        note = f"annotations/{sid}.xml"
        has_note = r["label"] == 1 and (note in md5 or not md5)
        files[img] = RemoteFile(f"{base}/{img}", md5.get(img))
        if has_note:
            files[note] = RemoteFile(f"{base}/{note}", md5.get(note))
        cat.append({"slide_id": sid, "label": r["label"], "source_split": "test" if sid.startswith("test_") else "train",
                    "center": r["center"], "patient": sid, "source_class": r["source_class"], "path": img,
                    "annotation": note if has_note else ""})
    return pd.DataFrame(cat, columns=CATALOGUE_COLUMNS), files


def _camelyon17(root: Path, dl: dict, base: str, notes: list[str], left_out: dict[str, str]):
    path = _first_existing(root, ("stages.csv", "stage_labels.csv"))
    assert path is not None  # fetched before planning
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise WsimilError(f"cannot read {path}: {read_error(exc)}") from None
    if len(df.columns) < 2:
        raise WsimilError(f"{path}: expected two columns (patient, stage), found {list(df.columns)}")
    names, stages = df.iloc[:, 0].str.strip(), df.iloc[:, 1].str.strip().str.lower()
    md5 = _md5s(root, "CAMELYON17")
    cat, files, unlabelled = [], {}, 0
    for line, (name, stage) in enumerate(zip(names, stages), 2):
        m = re.fullmatch(r"(patient_(\d{3})_node_\d)\.tif", name)
        if not m:
            continue  # patient rows (patient_000.zip, pN stage)
        if not stage:
            unlabelled += 1
            continue
        if stage not in ("negative", "itc", "micro", "macro"):
            raise WsimilError(f"{path} line {line}: stage {stage!r} is not negative/itc/micro/macro")
        sid, patient = m.group(1), int(m.group(2))
        img, note = f"images/{sid}.tif", f"annotations/{sid}.xml"
        has_note = note in md5
        files[img] = RemoteFile(f"{base}/{img}", md5.get(img))
        if has_note:
            files[note] = RemoteFile(f"{base}/{note}", md5.get(note))
        cat.append({"slide_id": sid, "label": int(stage != "negative"),
                    "source_split": "test" if patient >= 100 else "train", "center": str((patient // 20) % 5),
                    "patient": f"patient_{patient:03d}", "source_class": stage, "path": img,
                    "annotation": note if has_note else ""})
    if unlabelled:
        notes.append(f"camelyon17: {unlabelled} slides of {path.name} have no stage (unlabelled test set): left out")
    if not md5:
        notes.append("camelyon17: no checksums.md5, so the annotated slides are unknown: no patch-level labels")
    notes.append("camelyon17: label 1 = any metastasis (itc, micro or macro); centre = (patient // 20) mod 5")
    return pd.DataFrame(cat, columns=CATALOGUE_COLUMNS), files


TCGA_CLASSES = {"LUAD": 0, "LUSC": 1}


def _tcga(root: Path, dl: dict, base: str, notes: list[str], left_out: dict[str, str]):
    cat, files, seen = [], {}, {}
    for cls, label in TCGA_CLASSES.items():
        manifest = dl["tcga_manifests"].get(cls)
        if not manifest:
            raise WsimilError(f"config key 'download.tcga_manifests.{cls}': the GDC manifest of TCGA-{cls} "
                              "diagnostic slides is required (portal.gdc.cancer.gov, Repository, Slide Image, "
                              "Diagnostic Slide, project TCGA-" + cls + ", 'Manifest')")
        path = Path(manifest)
        if not path.is_file():
            raise WsimilError(f"GDC manifest not found: {path} (config key download.tcga_manifests.{cls})")
        try:
            df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        except Exception as exc:
            raise WsimilError(f"cannot read GDC manifest {path}: {read_error(exc)}") from None
        missing = {"id", "filename", "md5", "size"} - set(df.columns)
        if missing:
            raise WsimilError(f"{path}: not a GDC manifest (missing column(s) {sorted(missing)}; expected "
                              "id, filename, md5, size, state, tab-separated)")
        for line, r in enumerate(df.to_dict("records"), 2):
            fname = r["filename"].strip()
            if not fname.lower().endswith(".svs"):
                raise WsimilError(f"{path} line {line}: {fname!r} is not an .svs slide")
            sid = check_slide_id(fname[:-4], path)
            if not re.fullmatch(r"TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}-.*", sid):
                raise WsimilError(f"{path} line {line}: {fname!r} does not start with a TCGA barcode")
            if sid in seen:
                raise WsimilError(f"slide {sid} is in two manifests: {seen[sid]} and {path}")
            seen[sid] = path
            if not re.fullmatch(r"[0-9a-fA-F-]{36}", r["id"].strip()):
                raise WsimilError(f"{path} line {line}: file id {r['id']!r} is not a GDC UUID")
            rel = f"slides/{fname}"
            files[rel] = RemoteFile(f"{base}/{r['id'].strip()}", r["md5"].strip().lower() or None,
                                    int(r["size"]) if r["size"].strip() else None)
            cat.append({"slide_id": sid, "label": label, "source_split": "train", "center": sid.split("-")[1],
                        "patient": sid[:12], "source_class": cls, "path": rel, "annotation": ""})
    notes.append("tcga-nsclc: LUAD = 0, LUSC = 1; centre = tissue source site; no official test set, so the test "
                 "split is a patient-level draw (download.test_fraction)")
    return pd.DataFrame(cat, columns=CATALOGUE_COLUMNS), files


CAMELYON_BUCKET = "https://camelyon-dataset.s3.amazonaws.com"
SOURCES: dict[str, Source] = {
    "camelyon16": Source("camelyon16", f"{CAMELYON_BUCKET}/CAMELYON16",
                         (Metadata(("evaluation/reference.csv",)), Metadata(("checksums.md5",), optional=True)),
                         _camelyon16, "CAMELYON16, 399 slides, 2 hospitals, ~700 GB"),
    "camelyon17": Source("camelyon17", f"{CAMELYON_BUCKET}/CAMELYON17",
                         (Metadata(("stages.csv", "stage_labels.csv")), Metadata(("checksums.md5",), optional=True)),
                         _camelyon17, "CAMELYON17, 500 labelled training slides, 5 centres, ~1.1 TB"),
    "tcga-nsclc": Source("tcga-nsclc", "https://api.gdc.cancer.gov/data", (), _tcga,
                         "TCGA-LUAD and TCGA-LUSC diagnostic slides from GDC manifests, ~1050 slides, ~0.8 TB"),
}


# -- planning --------------------------------------------------------------------------------------------------


def download_root(config: dict) -> Path:
    return Path(config["download"]["dir"] or f"data/{config['dataset']['name']}")


def fetch_metadata(source: Source, root: Path, base: str, dl: dict, log=None) -> None:
    """Fetch the source's label files into ``root`` unless they are already there (a few kB)."""
    log = log or sys.stderr
    for meta in source.metadata:
        if _first_existing(root, meta.alternatives):
            continue
        errors = []
        for rel in meta.alternatives:
            try:
                download_file(FileSpec(f"{base}/{rel}", root / rel), retries=dl["retries"], timeout=dl["timeout_s"])
                print(f"[wsimil] {source.name}: fetched {base}/{rel}", file=log)
                break
            except WsimilError as exc:
                errors.append(str(exc))
        else:
            if meta.optional:
                print(f"[wsimil] {source.name}: {' / '.join(meta.alternatives)} not available ({errors[-1]}); "
                      "files are checked by size only", file=log)
                continue
            raise WsimilError(f"{source.name}: cannot fetch its label file {' or '.join(meta.alternatives)} from "
                              f"{base} ({'; '.join(errors)}). Put the file into {root}/ yourself, or set "
                              "download.base_url to a mirror that has it.")


def _draw(patients: pd.DataFrame, fraction: float, rng: np.random.Generator) -> set[str]:
    """A share of patients per class (class of a patient = its highest slide label), at least one where a class
    has two or more patients."""
    chosen: set[str] = set()
    for _, grp in patients.groupby("label", sort=True):
        ids = sorted(grp["patient"])
        k = int(round(fraction * len(ids)))
        if fraction > 0 and len(ids) >= 2:
            k = min(max(k, 1), len(ids) - 1)
        chosen.update(np.asarray(ids)[rng.permutation(len(ids))[:k]].tolist())
    return chosen


def assign_splits(cat: pd.DataFrame, dl: dict) -> pd.Series:
    """train / val / test per slide: the source's test slides (or a patient draw), val drawn from training
    patients, stratified by class; a patient's slides always share a split."""
    rng = np.random.default_rng(dl["split_seed"])
    split = cat["source_split"].copy()
    if not (split == "test").any():
        patients = cat.groupby("patient", as_index=False)["label"].max()
        test = _draw(patients, dl["test_fraction"], rng)
        split[cat["patient"].isin(test)] = "test"
    train = cat[split == "train"]
    patients = train.groupby("patient", as_index=False)["label"].max()
    val = _draw(patients, dl["val_fraction"], rng)
    split[(split == "train") & cat["patient"].isin(val)] = "val"
    return split


def select(cat: pd.DataFrame, dl: dict, exclude: list[str], notes: list[str], left_out: dict[str, str]) -> pd.DataFrame:
    """Apply download.first_n_per_class, download.slides and dataset.exclude (in that order). Only exclusions are
    recorded per slide in ``left_out``; a subset is one note."""
    n = dl["first_n_per_class"]
    if n:
        keep = cat.sort_values("slide_id").groupby(["source_split", "label"], sort=False).head(n)
        notes.append(f"subset: the first {n} slides of every (split, class): {len(keep)} of {len(cat)}")
        cat = keep.sort_values("slide_id")
    if dl["slides"] is not None:
        unknown = sorted(set(dl["slides"]) - set(cat["slide_id"]))
        if unknown:
            raise WsimilError(f"config key 'download.slides': not in the dataset (or left out by the corrections or "
                              f"first_n_per_class): {unknown[:10]}")
        cat = cat[cat["slide_id"].isin(dl["slides"])]
        notes.append(f"subset: the {len(cat)} slides of download.slides")
    for sid in exclude:
        if sid in set(cat["slide_id"]):
            left_out[sid] = "dataset.exclude"
            notes.append(f"{sid} left out (dataset.exclude)")
    return cat[~cat["slide_id"].isin(exclude)].reset_index(drop=True)


def plan_source(config: dict, log=None) -> Plan:
    """The plan of a validated config whose dataset.source is a public dataset (fetches only label files)."""
    log = log or sys.stderr
    name = config["dataset"]["source"]
    if name not in SOURCES:
        raise WsimilError(f"dataset.source {name!r} is not a download source; known: {sorted(SOURCES)}")
    source, dl = SOURCES[name], config["download"]
    base = (dl["base_url"] or source.base_url).rstrip("/")
    root = download_root(config)
    fetch_metadata(source, root, base, dl, log=log)
    notes: list[str] = []
    left_out: dict[str, str] = {}
    cat, files = source.catalogue(root, dl, base, notes, left_out)
    cat = select(cat, dl, config["dataset"]["exclude"], notes, left_out)
    if cat.empty:
        raise WsimilError(f"{name}: no slides left after the subset and exclusions of the config")
    cat = cat.assign(split=assign_splits(cat, dl))
    sheet = cat[["slide_id", "label", "split", "center", "path", "annotation", "patient", "source_class"]]
    needed = set(sheet["path"]) | {a for a in sheet["annotation"] if a}
    plan = Plan(name, root, sheet.reset_index(drop=True), {k: v for k, v in files.items() if k in needed}, notes,
                left_out)
    for line in notes:
        print(f"[wsimil] {line}", file=log)
    return plan


def sheet_for(plan: Plan, sheet_path: str | os.PathLike) -> pd.DataFrame:
    """The plan's sheet with paths relative to ``sheet_path``'s folder (the sample-sheet convention)."""
    return relocate(plan.sheet, plan.root / "slides.csv", sheet_path)


def write_manifest(plan: Plan, path: str | os.PathLike) -> None:
    """The files of a plan as a CSV (path, url, md5, size): what the download rules fetch, for the record."""
    from wsimil.io import spreadsheet_safe, write_text_atomic

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "url", "md5", "size"])
    for rel, f in sorted(plan.files.items()):
        w.writerow([spreadsheet_safe(v) for v in
                    (str(plan.local(rel)), f.url, f.md5 or "", f.size if f.size is not None else "")])
    write_text_atomic(path, buf.getvalue())
