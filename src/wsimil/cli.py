"""The ``wsimil`` command line: one subcommand per stage, called by the Snakemake rules and by people.

Heavy libraries (torch, openslide) are imported inside the subcommands, so ``wsimil synth`` or
``wsimil patch`` start in well under a second.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from wsimil.io import WsimilError, check_slide_id, copy_atomic
from wsimil.names import BUILTIN_EXPERIMENTS

log = logging.getLogger("wsimil")


# -- config sections --------------------------------------------------------------------------------------
def _add_section_args(p: argparse.ArgumentParser, section: str) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--config", type=Path, help=f"workflow config YAML; its `{section}:` section is used")
    g.add_argument("--params", help=f"the `{section}:` section as JSON (what the Snakemake rules pass)")
    p.epilog = _section_epilog(section)
    p.formatter_class = argparse.RawDescriptionHelpFormatter


def _section_epilog(section: str) -> str:
    """The keys of a config section, their defaults and descriptions (the schema's), for ``--help``."""
    import textwrap

    from wsimil.config import load_schema

    props = load_schema()["properties"][section].get("properties", {})
    lines = [f"`{section}:` keys (defaults; set them with --config FILE or --params JSON):"]
    for key, sub in props.items():
        default = json.dumps(sub.get("default")) if "default" in sub else "required"
        text = " ".join(str(sub.get("description", "")).split())
        lines.append(textwrap.fill(f"{key} = {default}: {text}", 100, initial_indent="  ", subsequent_indent="      "))
    return "\n".join(lines)


def _section(args: argparse.Namespace, section: str) -> dict[str, Any]:
    """The validated config section (defaults filled) from --config FILE, --params JSON, or the defaults."""
    from wsimil.config import load_config, validate_config

    if getattr(args, "config", None):
        return load_config(args.config)[section]
    raw = getattr(args, "params", None)
    try:
        value = json.loads(raw) if raw else {}
    except json.JSONDecodeError as exc:
        raise WsimilError(f"--params is not valid JSON: {exc}") from exc
    return validate_config({section: value}, "--params")[section]


def _parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as YAML (numbers, lists, booleans, strings)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise WsimilError(f"--set expects key=value, got {item!r}")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        out[key.strip()] = parsed
    return out


def _one_cv2_thread() -> None:
    """Snakemake gives each job its own cores; OpenCV would otherwise use all of them in every job."""
    import cv2

    cv2.setNumThreads(1)


def _set_threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(int(n))


# -- subcommands ------------------------------------------------------------------------------------------
def cmd_synth(args: argparse.Namespace) -> None:
    from wsimil.slides import synthetic

    _one_cv2_thread()
    cfg = _section(args, "synthetic")
    cfg.pop("slides_per_job", None)  # job granularity, not a property of the data
    if args.sheet_only or not args.slide:
        synthetic.write_sheet(cfg, args.out)
    if args.sheet_only:
        return
    # --slide: the slides of one job; the sheet is the synth_sheet job's (written once, not by every job)
    synthetic.generate_dataset(cfg, args.out, slide_ids=args.slide or None, with_sheet=not args.slide)
    log.info("rendered %s into %s", ", ".join(args.slide) if args.slide else "every slide", args.out)


def cmd_milunit(args: argparse.Namespace) -> None:
    from wsimil.datasets.milunit import write

    sheet = write(args.out, _section(args, "milunit"))
    log.info("MIL unit test bags and sheet written to %s", sheet)


def cmd_patch(args: argparse.Namespace) -> None:
    from wsimil.slides.patching import PatchingParams, run_patching

    n = len(args.slide)
    given = {"--slide-id": args.slide_id, "--out": args.out, "--annotation": args.annotation, "--label": args.label,
             "--qc": args.qc}
    for flag, values in given.items():
        if values is not None and len(values) != n:
            raise WsimilError(f"wsimil patch: {n} --slide but {len(values)} {flag} (one per slide, in the same order)")
    for sid in args.slide_id:
        check_slide_id(sid)
    _one_cv2_thread()
    section = _section(args, "patching")
    section.pop("slides_per_job", None)  # job granularity, not a patching parameter
    params = PatchingParams.from_config(section)
    for i, (slide, sid, out) in enumerate(zip(args.slide, args.slide_id, args.out)):
        try:
            run_patching(slide, sid, (args.annotation[i] if args.annotation else "") or None, out, params,
                         qc_png=args.qc[i] if args.qc else None, label=args.label[i] if args.label else None)
        except WsimilError as exc:
            raise WsimilError(f"{exc}\n  (slide {sid}: fix the file, or list the slide in the config key "
                              "dataset.exclude to run without it; SUMMARY.md lists excluded slides)") from exc


def _slide_jobs(args: argparse.Namespace, *extra: str) -> list[tuple]:
    """The aligned per-slide arguments (--slide, --slide-id, --patches, --out and ``extra``), ids checked."""
    names = ("slide", "slide_id", "patches", "out", *extra)
    lists = [getattr(args, n) for n in names]
    if len({len(v) for v in lists}) != 1:
        counts = ", ".join(f"--{n.replace('_', '-')} {len(v)}" for n, v in zip(names, lists))
        raise WsimilError(f"give one value per slide to each of {counts}")
    for sid in args.slide_id:
        check_slide_id(sid)
    return list(zip(*lists))


def _extract(args: argparse.Namespace, poison_of=None, built: dict | None = None) -> None:
    """Extract the features of one or more slides with one network (built once: a job of several slides pays
    the start-up once). ``poison_of(slide_id)``: the PoisonSpec of a slide, or None to copy its clean file;
    ``built``: holds the network between calls (every poison level of a job uses the one network)."""
    from wsimil.features.extract import extract_slide
    from wsimil.features.extractors import build_extractor

    cfg = _section(args, "features")
    _set_threads(args.threads)
    jobs = _slide_jobs(args, "clean") if poison_of else _slide_jobs(args)
    built = {} if built is None else built
    ext = built.get("extractor")
    for job in jobs:
        slide, sid, patches, out = job[:4]
        spec = poison_of(sid) if poison_of else None
        if poison_of and spec is None:
            copy_atomic(job[4], out)
            log.info("%s is not a poison target: clean features copied", sid)
            continue
        if ext is None:
            ext = built["extractor"] = build_extractor(
                cfg["extractor"], weights=cfg["weights"], device=cfg["device"], input_size=cfg["input_size"],
                weights_sha256=cfg.get("weights_sha256"))
        s = extract_slide(
            slide, patches, out, ext, batch_size=cfg["batch_size"], num_threads=args.threads, poison=spec,
            slide_id=sid, num_workers=cfg["num_workers"], dtype=cfg["dtype"], progress=not args.no_progress,
            precision=cfg["precision"], clean_h5=job[4] if poison_of else None,
        )
        log.info("%s: %d patches (%d poisoned), %s %d-d %s, %.1f s (%.1f tiles/s) -> %s", s["slide_id"],
                 s["n_patches"], s["n_poisoned"], ext.name, ext.dim, s["precision"], s["seconds"], s["tiles_per_s"], out)


def cmd_extract(args: argparse.Namespace) -> None:
    _extract(args)


def cmd_poison(args: argparse.Namespace) -> None:
    """Poisoned features of one or more slides at one or more poison levels (``--poison`` once per level, ``--out``
    level by level, each level's files in slide order): re-extracted with green noise if the slide is a target,
    else its clean file copied. The network is built once for every level."""
    from wsimil.datasets.sheet import read_sheet
    from wsimil.poison import PoisonSpec, select_poisoned_slides

    levels = [json.loads(p) for p in args.poison] if args.poison else [_poison_defaults()]
    n = len(args.slide_id)
    if len(args.out) != n * len(levels):
        raise WsimilError(f"give one --out per slide and poison level: {n} slides x {len(levels)} levels, "
                          f"got {len(args.out)}")
    sheet = read_sheet(args.sheet)
    outs, built = list(args.out), {}
    for i, pcfg in enumerate(levels):
        targets = set(select_poisoned_slides(sheet, pcfg.get("targets")))
        spec = PoisonSpec(strength=pcfg["strength"], fraction=pcfg["fraction"], seed=pcfg["seed"])
        args.out = outs[i * n : (i + 1) * n]
        _extract(args, lambda sid, spec=spec, targets=targets: spec if sid in targets else None, built)


def _poison_defaults() -> dict:
    from wsimil.config import validate_config

    return validate_config({})["poison"]


def cmd_train(args: argparse.Namespace) -> None:
    from wsimil.datasets.sheet import read_sheet
    from wsimil.training.data import load_bags
    from wsimil.training.run import train_and_write

    from wsimil.models.base import get_method

    seeds, methods = args.seed, args.method
    for method in methods:  # a wrong name is reported before any file is read
        get_method(method)
    if len(seeds) > 1 and "{seed}" not in args.out:
        raise WsimilError("with several --seed values, --out must contain '{seed}' (e.g. runs/abmil/seed{seed})")
    if len(methods) > 1 and "{method}" not in args.out:
        raise WsimilError("with several --method values, --out must contain '{method}' (e.g. runs/{method}/seed{seed})")
    if len(methods) > 1 and (args.overrides or args.set):
        raise WsimilError("with several --method values, give overrides per method with --overrides-per-method")
    per_method = json.loads(args.overrides_per_method) if args.overrides_per_method else {}
    unknown = sorted(set(per_method) - set(methods))
    if unknown:
        raise WsimilError(f"--overrides-per-method names methods not being trained: {unknown}")
    _set_threads(args.threads)
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    sheet = read_sheet(args.slides)
    bags = load_bags(sheet, args.features)  # once for every method and seed of this job
    for method in methods:
        overrides = json.loads(args.overrides) if args.overrides else dict(per_method.get(method, {}))
        overrides.update(_parse_sets(args.set))
        outs = [Path(args.out.replace("{method}", method).format(seed=s)) for s in seeds]
        train_and_write(sheet, args.features, method, seeds, outs, overrides, device=device,
                        meta={"experiment": args.experiment, "sheet": str(args.slides)}, progress=not args.no_progress,
                        precision=args.precision, bags=bags)


def cmd_score(args: argparse.Namespace) -> None:
    from wsimil.datasets.sheet import read_sheet
    from wsimil.training.data import load_bags
    from wsimil.training.run import score_and_write

    if len(args.run) != len(args.out):
        raise WsimilError(f"wsimil score: {len(args.run)} --run but {len(args.out)} --out (one output per run)")
    _set_threads(args.threads)
    bags = load_bags(read_sheet(args.slides), args.features)
    for run, out in zip(args.run, args.out):
        score_and_write(run, out, bags, meta={"experiment": args.experiment, "sheet": str(args.slides),
                                              "features_dir": str(args.features)})
        log.info("%s: scored %d slides with the model of %s", out, len(bags.slide_ids), run)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from wsimil.evaluation.evaluate import annotations_from_manifest, annotations_from_sheet, evaluate_run

    if args.annotations:
        annotations = annotations_from_manifest(args.annotations)
    else:
        annotations = annotations_from_sheet(args.sheet) if args.sheet else None
    for run in args.run_dirs:
        m = evaluate_run(run, args.features, threshold=args.threshold, positive_fraction=args.patch_positive_fraction,
                         annotations=annotations)
        log.info("%s: %s AUC %.4f, FROC %s", run, m["split"], m["slide_auc"],
                 f"{m['froc']:.4f}" if m["froc"] == m["froc"] else f"n/a ({m['froc_skipped_reason']})")


def cmd_report(args: argparse.Namespace) -> None:
    from wsimil.config import load_config
    from wsimil.datasets.sheet import read_sheet
    from wsimil.reporting.experiments import write_experiment

    config = load_config(args.config)
    sheet = None
    if args.sheet:
        sheet = read_sheet(args.sheet)
        sheet.attrs["path"] = str(args.sheet)
    for path in write_experiment(config, args.experiment, args.out, sheet, args.heatmap_slides or [], args.captions):
        log.info("wrote %s", path)


def cmd_summary(args: argparse.Namespace) -> None:
    from wsimil.config import load_config
    from wsimil.reporting.summary import write_summary

    for path in write_summary(load_config(args.config), args.out, args.captions):
        log.info("wrote %s", path)


def cmd_focusmil_sensitivity(args: argparse.Namespace) -> None:
    from wsimil.io import write_csv_atomic
    from wsimil.studies import focusmil_sensitivity as fs

    _set_threads(args.threads)
    bags = fs.load_problem(args.problem, args.features, args.slides)
    factors = json.loads(args.factors) if args.factors else None
    rows = fs.run_problem(bags, args.problem, args.seed, args.max_steps, factors, progress=not args.no_progress)
    write_csv_atomic(rows, args.out)
    log.info("%s: %d FocusMIL runs on %s", args.out, len(rows), args.problem)


def cmd_focusmil_sensitivity_report(args: argparse.Namespace) -> None:
    import pandas as pd

    from wsimil.studies import focusmil_sensitivity as fs

    rows = pd.concat([pd.read_csv(p) for p in args.runs], ignore_index=True)
    for path in fs.write_study(rows, args.table, args.figure, args.captions):
        log.info("wrote %s", path)


def cmd_cards(args: argparse.Namespace) -> None:
    from wsimil.config import load_config
    from wsimil.reporting.cards import write_cards

    for path in write_cards(load_config(args.config), args.out):
        log.info("wrote %s", path)


def cmd_geojson(args: argparse.Namespace) -> None:
    from wsimil.reporting.geojson import write_run_geojson

    paths = write_run_geojson(args.run, args.features, args.out, args.slide_id)
    log.info("%s: %d GeoJSON files (QuPath: File > Import objects)", args.out, len(paths))


def cmd_ood_sheet(args: argparse.Namespace) -> None:
    from wsimil.datasets.sheet import read_sheet
    from wsimil.experiments import ood_sheet
    from wsimil.io import write_csv_atomic

    sheet = read_sheet(args.sheet)
    if args.external:  # a synthetic dataset's held-out hospitals (slides_external.csv, beside slides.csv)
        import pandas as pd

        sheet = pd.concat([sheet, read_sheet(args.external)], ignore_index=True)
    sheet = ood_sheet(sheet, args.train_centers or None)
    write_csv_atomic(sheet, args.out)
    log.info("%s: %d slides (%s)", args.out, len(sheet), sheet.groupby("split").size().to_dict())


def cmd_cell_sheet(args: argparse.Namespace) -> None:
    from wsimil.datasets.sheet import read_sheet
    from wsimil.experiments import derived_sheet
    from wsimil.io import write_csv_atomic

    sheet = read_sheet(args.sheet).assign(external=False)
    if args.external:  # a synthetic dataset's held-out hospitals (slides_external.csv, beside slides.csv)
        import pandas as pd

        sheet = pd.concat([sheet, read_sheet(args.external).assign(external=True)], ignore_index=True)
    try:
        section = json.loads(args.section)
    except json.JSONDecodeError as exc:
        raise WsimilError(f"--section: not JSON ({exc.msg})") from None
    if not isinstance(section, dict):
        raise WsimilError("--section: a JSON object {section name: settings}")
    # every slide with `external` marking the held-out hospitals' copies, as the workflow plans it
    # (wsimil.datasets.sheet.workflow_sheet); the column is not written
    out = derived_sheet(section, args.experiment, sheet).drop(columns=["external"], errors="ignore")
    write_csv_atomic(out, args.out)
    log.info("%s: %d slides (%s)", args.out, len(out), out.groupby("split").size().to_dict())


def cmd_experiments(args: argparse.Namespace) -> None:
    from wsimil.experiments import experiments_markdown, get_experiment, list_experiments

    if args.markdown:
        print(experiments_markdown())
        return
    for name in list_experiments():
        e = get_experiment(name)
        where = "built-in" if e.origin == "built-in" else "plugin"
        print(f"{name:22s} {where:9s} {e.description}" + ("" if where == "built-in" else f" [{e.origin}]"))


def cmd_download(args: argparse.Namespace) -> None:
    from wsimil.datasets.download import FileSpec, download_all

    n = len(args.url)
    if len(args.out) != n or (args.md5 and len(args.md5) != n) or (args.size and len(args.size) != n):
        raise WsimilError(f"--url ({n}), --out ({len(args.out)}), --md5 and --size must be given once per file")
    md5s = [m if m not in (None, "", "-") else None for m in (args.md5 or [None] * n)]
    sizes = [int(x) if x not in (None, "", "-") else None for x in (args.size or [None] * n)]
    specs = [FileSpec(u, Path(o), size=s, md5=m) for u, o, s, m in zip(args.url, args.out, sizes, md5s)]
    done, failed = download_all(specs, max_parallel=args.parallel, retries=args.retries, timeout=args.timeout)
    for path in done:
        log.info("complete: %s", path)
    if failed:  # only a transfer that kept failing is worth a rerun; a file the source lacks is not
        missing = [m for m in failed.values() if "not available at the source" in m]
        advice = ("rerun to resume the interrupted ones" if len(missing) < len(failed) else
                  "the source does not have them: check the URLs or the dataset's file list")
        raise WsimilError("\n  ".join([f"{len(failed)} of {n} file(s) failed ({advice}):"] + list(failed.values())))


def cmd_dataset(args: argparse.Namespace) -> None:
    from wsimil.config import load_config
    from wsimil.datasets.sources import plan_source, sheet_for, write_manifest
    from wsimil.io import write_csv_atomic, write_text_atomic

    plan = plan_source(load_config(args.config))
    write_csv_atomic(sheet_for(plan, args.sheet), args.sheet)
    if args.manifest:
        write_manifest(plan, args.manifest)
    if args.notes:
        lines = [f"- {n}" for n in plan.notes] + [f"- {sid}: left out ({why})" for sid, why in sorted(plan.left_out.items())]
        write_text_atomic(args.notes, "\n".join(lines) + "\n")
    counts = plan.sheet.groupby(["split", "label"]).size().to_dict()
    log.info("%s: %d slides, %d files to fetch into %s; (split, label) counts %s", plan.source, len(plan.sheet),
             len(plan.files), plan.root, counts)


def cmd_slide_table(args: argparse.Namespace) -> None:
    from wsimil.reporting.slides import caption, slide_table
    from wsimil.reporting.tables import write_table

    df = slide_table(args.sheet, args.patches)
    for path in write_table(df, args.out, caption(df)):
        log.info("wrote %s", path)


def cmd_run_table(args: argparse.Namespace) -> None:
    from wsimil.reporting.runs import caption, run_table
    from wsimil.reporting.tables import write_table

    df = run_table(args.run)
    for path in write_table(df, args.out, caption(df)):
        log.info("wrote %s", path)


def cmd_methods(args: argparse.Namespace) -> None:
    from wsimil.models.base import get_method, list_methods, methods_markdown

    if args.markdown:
        print(methods_markdown())
        return
    for name in list_methods():
        spec = get_method(name)
        d = spec.defaults
        print(f"{name}  [{spec.family}]  {spec.description}")
        print(f"    source: {spec.source}")
        print(f"    from:   {spec.origin}")
        train_keys = {k: v for k, v in d.items() if k != "model"}
        print("    training: " + ", ".join(f"{k}={v}" for k, v in train_keys.items()))
        print("    model:    " + ", ".join(f"{k}={v}" for k, v in d["model"].items()))


def cmd_extractors(args: argparse.Namespace) -> None:
    from wsimil.features.extractors import EXTRACTORS, extractors_markdown, list_extractors

    if args.markdown:
        print(extractors_markdown())
        return
    for name in list_extractors():
        info = EXTRACTORS[name]
        print(f"{name}  dim={info.dim}  {info.description}")


def cmd_validate(args: argparse.Namespace) -> None:
    from wsimil.config import load_merged_config

    cfg = load_merged_config(args.file)
    if args.print:
        import yaml

        print(f"# the merged config of {' + '.join(map(str, args.file))} (what the run uses, defaults filled in)")
        print(yaml.safe_dump(cfg, sort_keys=False))
    else:
        print(f"{' + '.join(map(str, args.file))}: valid")


# -- import-features (bring your own features) ------------------------------------------------------------
def cmd_import_features(args: argparse.Namespace) -> None:
    """Import pre-extracted features of one or more slides (CLAM/TRIDENT h5, CLAM pt, DSMIL csv) into
    feature files; labels and annotations from the sample sheet."""
    from wsimil.datasets.imports import import_slide, source_path
    from wsimil.datasets.sheet import read_sheet, resolve

    if len(args.slide_id) != len(args.out):
        raise WsimilError(f"give one --out per --slide-id (got {len(args.slide_id)} ids, {len(args.out)} outputs)")
    for sid in args.slide_id:
        check_slide_id(sid)
    sheet = read_sheet(args.sheet).set_index("slide_id")
    missing = [s for s in args.slide_id if s not in sheet.index]
    if missing:
        raise WsimilError(f"slide ids not in the sample sheet {args.sheet}: {missing[:10]}")
    from wsimil.features.store import check_same_dimension

    # every slide is imported to a hidden file first and moved into place only when all of them succeeded and
    # agree on the dimension: a failed multi-slide import leaves no partial outputs (and the old files as they were)
    staged: list[tuple[Path, Path]] = []
    dims: dict[str, int] = {}
    try:
        for sid, out in zip(args.slide_id, args.out):
            row = sheet.loc[sid]
            src = source_path(args.src_dir, sid, args.format)
            tmp = Path(out).with_name(f".{Path(out).name}.importing")
            staged.append((tmp, Path(out)))
            s = import_slide(src, args.format, tmp, sid, resolve(args.sheet, str(row["annotation"]).strip()),
                             int(row["label"]), args.patch_size_level0, dtype=args.dtype)
            dims[str(src)] = s["feature_dim"]
            labels = s.get("tumor_fraction_source") or f"no patch labels ({s['patch_labels_skipped_reason']})"
            log.info("%s: %d patches, %d-d from %s -> %s; tumour fraction: %s", sid, s["n_patches"], s["feature_dim"],
                     src, out, labels)
        check_same_dimension(dims)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, out in staged:
        tmp.replace(out)


def _add_import_features_parser(sub: Any) -> None:
    s = sub.add_parser("import-features", help="import pre-extracted features (CLAM/TRIDENT h5, CLAM pt, DSMIL "
                       "csv) of one or more slides -> feature HDF5 per slide")
    s.add_argument("--format", required=True, choices=["h5", "pt", "csv"],
                   help="h5: CLAM/TRIDENT h5_files; pt: CLAM pt_files (no coordinates); csv: DSMIL per-slide CSV")
    s.add_argument("--src-dir", type=Path, required=True, help="folder holding <slide_id>.h5/.pt/.csv (csv: also "
                   "<class>/<slide_id>.csv)")
    s.add_argument("--sheet", type=Path, required=True, help="sample sheet slides.csv (labels; annotation paths "
                   "relative to its folder; path may be empty)")
    s.add_argument("--slide-id", nargs="+", required=True)
    s.add_argument("--out", type=Path, nargs="+", required=True, help="each slide's feature HDF5")
    s.add_argument("--patch-size-level0", type=int, help="patch side in level-0 px (default: from the h5 attributes)")
    s.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="stored feature dtype")
    s.set_defaults(func=cmd_import_features)


# -- parser -----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from wsimil import __version__

    p = argparse.ArgumentParser(prog="wsimil", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"wsimil {__version__}")
    p.add_argument("--plugin", action="append", default=[], metavar="PACKAGE.MODULE:ATTRIBUTE",
                   help="import a module that registers methods (code on the Python path, not installed) before the "
                   "command runs; repeatable (installed plugins need none: entry points wsimil.methods)")
    p.add_argument("--limits", metavar="JSON",
                   help="bounds on files from outside, as the config's `limits:` section in JSON (default: "
                   "$WSIMIL_LIMITS, else the defaults; docs/security.md)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("synth", help="generate the synthetic mini-Camelyon (slides, annotations, slides.csv)")
    _add_section_args(s, "synthetic")
    s.add_argument("--out", type=Path, required=True, help="dataset folder (slides/, annotations/, slides.csv)")
    s.add_argument("--slide", action="append", help="render only this slide id (repeatable)")
    s.add_argument("--sheet-only", action="store_true", help="write slides.csv only, render nothing")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("milunit", help="Raff & Holt's single-concept poison unit test as feature files + sheet")
    _add_section_args(s, "milunit")
    s.add_argument("--out", type=Path, required=True, help="folder for features/ and slides.csv")
    s.set_defaults(func=cmd_milunit)

    s = sub.add_parser("patch", help="tissue mask + patch grid + tumour fraction of one or more slides -> patch HDF5 each")
    _add_section_args(s, "patching")
    s.add_argument("--slide", type=Path, nargs="+", required=True, help="slide file(s)")
    s.add_argument("--slide-id", nargs="+", required=True, help="one id per slide")
    s.add_argument("--annotation", nargs="+", help="ASAP XML of each slide's tumour (an empty string for none)")
    s.add_argument("--label", type=int, nargs="+", choices=[0, 1],
                   help="slide labels (normal slides get tumour fraction 0)")
    s.add_argument("--out", type=Path, nargs="+", required=True, help="one patch file per slide")
    s.add_argument("--qc", type=Path, nargs="+", help="also write a QC thumbnail PNG per slide")
    s.set_defaults(func=cmd_patch)

    for name, func, helptext in (
        ("extract", cmd_extract, "features of one or more slides' patches -> feature HDF5 per slide"),
        ("poison", cmd_poison, "poisoned features of one or more slides (green noise in pixel space, re-extracted)"),
    ):
        s = sub.add_parser(name, help=helptext)
        _add_section_args(s, "features")
        s.add_argument("--slide", type=Path, nargs="+", required=True, help="slide file(s)")
        s.add_argument("--slide-id", nargs="+", required=True, help="one id per slide")
        s.add_argument("--patches", type=Path, nargs="+", required=True, help="each slide's patch HDF5")
        s.add_argument("--out", type=Path, nargs="+", required=True,
                       help="each slide's feature HDF5 (poison: level by level, each in slide order)")
        s.add_argument("--threads", type=int, help="torch CPU threads")
        s.add_argument("--no-progress", action="store_true")
        if name == "poison":
            s.add_argument("--sheet", type=Path, required=True, help="slides.csv (decides which slides are poisoned)")
            s.add_argument("--clean", type=Path, nargs="+", required=True,
                           help="each slide's clean feature file, copied for non-targets")
            s.add_argument("--poison", nargs="+", help="the `poison:` config section as JSON, once per poison level "
                           "(default: the schema defaults)")
        s.set_defaults(func=func)

    s = sub.add_parser("train", help="train one or more methods on one or more seeds -> run directories")
    s.add_argument("--features", type=Path, required=True, help="folder of <slide_id>.h5 feature files, or a feature manifest (.tsv)")
    s.add_argument("--slides", type=Path, required=True, help="sample sheet slides.csv")
    s.add_argument("--method", nargs="+", required=True, help="one or more names from `wsimil methods` (the "
                   "features are loaded once for all)")
    s.add_argument("--seed", type=int, nargs="+", default=[0], help="one or more seeds")
    s.add_argument("--out", required=True, help="run directory; with several seeds a template containing {seed}, with "
                   "several methods one containing {method}")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a default, e.g. lr=1e-3, model.beta=0.1")
    s.add_argument("--overrides", help="overrides as JSON (one method)")
    s.add_argument("--overrides-per-method", help="JSON {method: overrides} (what the rules pass)")
    s.add_argument("--experiment", default="adhoc", help="experiment name recorded in run.json")
    s.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    s.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"],
                   help="training forward passes in fp32 (the reference) or under bfloat16 autocast; auto = bf16 "
                        "where the device runs it natively (AVX512-BF16/AMX CPUs, Ampere+ GPUs)")
    s.add_argument("--threads", type=int)
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("score", help="a run directory for other slides, scored by a finished run's model (no training)")
    s.add_argument("--run", type=Path, nargs="+", required=True, help="finished run directories (model.pt, run.json)")
    s.add_argument("--features", type=Path, required=True, help="folder of <slide_id>.h5 feature files, or a feature manifest (.tsv)")
    s.add_argument("--slides", type=Path, required=True, help="sample sheet of the slides to score")
    s.add_argument("--out", type=Path, nargs="+", required=True, help="one new run directory per --run")
    s.add_argument("--experiment", default="adhoc", help="experiment name recorded in run.json")
    s.add_argument("--threads", type=int)
    s.set_defaults(func=cmd_score)

    s = sub.add_parser("evaluate", help="metrics.json for finished run directories")
    s.add_argument("run_dirs", nargs="+", type=Path)
    s.add_argument("--features", type=Path, required=True, help="feature folder or manifest (.tsv) with tumor_fraction (patch metrics)")
    s.add_argument("--threshold", type=float, default=0.5)
    s.add_argument("--patch-positive-fraction", type=float, default=0.5)
    s.add_argument("--sheet", type=Path, help="sample sheet slides.csv: its annotation column (ASAP XML, relative to "
                   "the sheet's folder) gives the lesions for the CAMELYON16 FROC; without it the FROC is skipped")
    s.add_argument("--annotations", type=Path, help="annotation manifest (slide_id, annotation, bytes; written by "
                   "the workflow's annotation_manifest job): the lesions, instead of the sheet's annotation column")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("report", help="one experiment's tables (csv, md, tex) and figures from its evaluated runs")
    s.add_argument("--config", type=Path, required=True, help="the workflow config (YAML or JSON; the experiments are "
                   "planned from it): results/<dataset>/config.yaml, written by the workflow")
    s.add_argument("--experiment", required=True, help="a configured experiment with a report of its own: "
                   + ", ".join(n for n in BUILTIN_EXPERIMENTS if n != "focusmil_sensitivity")
                   + " or an installed plugin's (`wsimil experiments`)")
    s.add_argument("--out", type=Path, required=True, help="results/<dataset> (runs/ inside, tables/ and figures/ written)")
    s.add_argument("--sheet", type=Path, help="slides.csv, for the slide images and annotations of the heatmaps")
    s.add_argument("--heatmap-slides", nargs="*", help="test slides shown in the heatmap figures")
    s.add_argument("--captions", type=Path, help="folder of <figure>.rst captions for the experiment's page "
                   "(the workflow's report/captions)")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("summary", help="SUMMARY.md, the paper-vs-reproduced table and the overview figure")
    s.add_argument("--config", type=Path, required=True, help="the workflow config (results/<dataset>/config.yaml)")
    s.add_argument("--out", type=Path, required=True, help="results/<dataset>")
    s.add_argument("--captions", type=Path, help="folder of <figure>.rst captions (the workflow's report/captions)")
    s.set_defaults(func=cmd_summary)

    s = sub.add_parser("focusmil-sensitivity", help="FocusMIL's unpublished choices on one problem's train/val splits "
                       "(docs/methods.md) -> one CSV row per setting and seed")
    s.add_argument("--problem", required=True, choices=["toy", "milunit", "standard"],
                   help="toy: the generated separable toy; milunit / standard: --slides and --features (test rows dropped)")
    s.add_argument("--features", type=Path, help="folder of <slide_id>.h5 feature files (milunit, standard)")
    s.add_argument("--slides", type=Path, help="sample sheet (milunit, standard); its test slides are never read")
    s.add_argument("--seed", type=int, nargs="+", default=[0], help="one or more training seeds")
    s.add_argument("--max-steps", type=int, default=480, help="optimiser steps of every setting (the steps factor "
                   "multiplies it)")
    s.add_argument("--factors", help='JSON {factor: [levels]} replacing the grid\'s levels, e.g. {"beta": [0, 0.1]}')
    s.add_argument("--out", type=Path, required=True, help="CSV of the runs")
    s.add_argument("--threads", type=int)
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_focusmil_sensitivity)

    s = sub.add_parser("focusmil-sensitivity-report", help="the study's table (csv, md, tex) and figure from its runs, "
                       "with the setting its selection rule chooses")
    s.add_argument("--runs", type=Path, nargs="+", required=True, help="CSVs written by `wsimil focusmil-sensitivity`")
    s.add_argument("--table", type=Path, required=True, help="table stem, e.g. results/<dataset>/tables/focusmil_sensitivity")
    s.add_argument("--figure", type=Path, required=True, help="figure PNG (a PDF beside it)")
    s.add_argument("--captions", type=Path, help="folder of <figure>.rst captions (the workflow's report/captions)")
    s.set_defaults(func=cmd_focusmil_sensitivity_report)

    s = sub.add_parser("cards", help="a robustness card per method (cards/<method>.md, .csv, .png) from evaluated runs")
    s.add_argument("--config", type=Path, required=True, help="the workflow config (results/<dataset>/config.yaml)")
    s.add_argument("--out", type=Path, required=True, help="results/<dataset> (runs/ inside; cards/ written)")
    s.set_defaults(func=cmd_cards)

    s = sub.add_parser("geojson", help="a run's instance scores as QuPath-readable GeoJSON tiles, one file per slide")
    s.add_argument("--run", type=Path, required=True, help="a finished run directory (instance_scores.h5, run.json)")
    s.add_argument("--features", type=Path, required=True, help="the feature folder or manifest it was scored on (coords, "
                   "patch size at level 0, tumour fraction)")
    s.add_argument("--out", type=Path, required=True, help="folder for <slide_id>.geojson")
    s.add_argument("--slide-id", nargs="+", help="only these slides (default: every slide the run scored)")
    s.set_defaults(func=cmd_geojson)

    s = sub.add_parser("ood-sheet", help="the out-of-distribution sample sheet: train on some centres, test on the others")
    s.add_argument("--sheet", type=Path, required=True, help="slides.csv")
    s.add_argument("--train-centers", nargs="*", help="centres whose train/val slides are used (default: first half)")
    s.add_argument("--external", type=Path, help="more slides of other centres (slides_external.csv, same folder)")
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(func=cmd_ood_sheet)
    s = sub.add_parser("cell-sheet", help="the sample sheet an experiment derives for its cells (its sheet())")
    s.add_argument("--experiment", required=True, help="the experiment that derives it (ood, or a plugin's)")
    s.add_argument("--section", default="{}", help="JSON object {its config section: settings}: all sheet() reads")
    s.add_argument("--sheet", type=Path, required=True, help="slides.csv")
    s.add_argument("--external", type=Path, help="more slides of other centres (slides_external.csv, same folder)")
    s.add_argument("--out", type=Path, required=True)
    s.set_defaults(func=cmd_cell_sheet)

    s = sub.add_parser("experiments", help="the experiments a config may name: built-in and installed plugins'")
    s.add_argument("--markdown", action="store_true", help="the built-in experiments as the docs' Markdown table")
    s.set_defaults(func=cmd_experiments)
    _add_import_features_parser(sub)

    s = sub.add_parser("download", help="fetch files over HTTP(S): resumable, retried, size/MD5-checked, atomic")
    s.add_argument("--url", nargs="+", required=True)
    s.add_argument("--out", nargs="+", required=True, help="destination of each URL (written as <out>.part first)")
    s.add_argument("--md5", nargs="+", help="expected MD5 of each file ('-' = unknown)")
    s.add_argument("--size", nargs="+", help="expected size in bytes of each file ('-' = unknown)")
    s.add_argument("--parallel", type=int, default=4, help="files fetched at the same time")
    s.add_argument("--retries", type=int, default=5, help="attempts per file after the first (exponential backoff)")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds without data before resuming")
    s.set_defaults(func=cmd_download)

    s = sub.add_parser("dataset", help="plan a public dataset (camelyon16/17, tcga-nsclc): sample sheet + file list")
    s.add_argument("--config", type=Path, required=True, help="workflow config with dataset.source and download:")
    s.add_argument("--sheet", type=Path, required=True, help="slides.csv to write")
    s.add_argument("--manifest", type=Path, help="CSV of every file to fetch (path, url, md5, size)")
    s.add_argument("--notes", type=Path, help="corrections, subsets and left-out slides, one per line")
    s.set_defaults(func=cmd_dataset)

    s = sub.add_parser("slide-table", help="per-slide patching table: resolution, level, tissue, patch count")
    s.add_argument("--sheet", type=Path, required=True, help="slides.csv")
    s.add_argument("--patches", type=Path, required=True, help="folder of <slide_id>.h5 patch files")
    s.add_argument("--out", type=Path, required=True, help="output stem: <out>.csv, .md, .tex")
    s.set_defaults(func=cmd_slide_table)

    s = sub.add_parser("run-table", help="one row per run: device, precision, seed, epochs, time, commit, versions")
    s.add_argument("--run", nargs="+", required=True, help="run.json files")
    s.add_argument("--out", type=Path, required=True, help="output stem: <out>.csv, .md, .tex")
    s.set_defaults(func=cmd_run_table)

    s = sub.add_parser("methods", help="list methods and their published defaults")
    s.add_argument("--markdown", action="store_true", help="print the built-in methods by family as README.md's "
                   "Markdown table instead")
    s.set_defaults(func=cmd_methods)

    s = sub.add_parser("extractors", help="list feature extractors")
    s.add_argument("--markdown", action="store_true", help="print docs/methods.md's Markdown table of the "
                   "extractors instead")
    s.set_defaults(func=cmd_extractors)

    s = sub.add_parser("validate-config", help="validate a workflow config (and overlays on it) against the schema",
                       description="Merge the files in order as Snakemake does (config.yaml, then each "
                       "--configfile overlay: nested keys update, lists replace) and validate the result.")
    s.add_argument("file", type=Path, nargs="+", help="config.yaml, then overlays, e.g. config.yaml configs/slides.yaml")
    s.add_argument("--print", action="store_true", help="print the merged config the run will use, defaults filled in")
    s.set_defaults(func=cmd_validate)
    return p


def _did_you_mean(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """Exit with a suggestion when the first word is a misspelt subcommand (argparse 3.11 offers none)."""
    import difflib

    words = [a for a in argv if not a.startswith("-")]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if words and words[0] not in sub.choices and argv[0] == words[0]:
        close = difflib.get_close_matches(words[0], list(sub.choices), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "; `wsimil --help` lists them"
        parser.exit(2, f"wsimil: error: unknown command {words[0]!r}{hint}\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    _did_you_mean(parser, argv)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("fontTools").setLevel(logging.WARNING)  # matplotlib's PDF font subsetting is chatty
    try:
        if args.limits:
            from wsimil.limits import set_limits

            try:
                value = json.loads(args.limits)
            except json.JSONDecodeError:
                raise WsimilError("--limits is not valid JSON") from None
            if not isinstance(value, dict):
                raise WsimilError("--limits must be a JSON object")
            set_limits(value)
        if args.plugin:
            from wsimil.models.base import resolve_method

            for ref in args.plugin:
                resolve_method(ref)
        args.func(args)
        sys.stdout.flush()
    except WsimilError as exc:
        print(f"wsimil {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `wsimil methods | head`: the reader left; not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at interpreter exit
        return 141
    except KeyboardInterrupt:  # Ctrl-C: outputs are written atomically, so nothing half-written is left
        print(f"wsimil {args.command}: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports it
    finally:
        if args.limits:  # for this command only (main() may be called again in the same process)
            from wsimil.limits import set_limits

            set_limits(None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
