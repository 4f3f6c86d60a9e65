"""The experiment registry: one :class:`Experiment` per trial, built in or from another package.

An experiment declares, in one class: its config section (and, from a plugin, that section's JSON schema with
defaults), the cells of runs it plans (:class:`wsimil.experiments.cells.Cell`), the cells its report reads, the
files its report writes with their captions, how it writes them from those cells' evaluated runs, and the
claims, SUMMARY paragraphs and card rows it contributes. The workflow (rules/*.smk), the config schema's
``experiments`` enum, ``wsimil report``, ``wsimil summary``, ``wsimil cards`` and ``wsimil experiments`` read
everything from here.

Built-in experiments are the modules :data:`wsimil.names.BUILTIN_EXPERIMENTS` names; a package adds one with an
entry point in the group ``wsimil.experiments`` that names its :class:`Experiment` subclass (or a module that
calls :func:`register_experiment`): docs/architecture.md, "Add an experiment".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence

import pandas as pd

from wsimil.experiments.cells import Cell
from wsimil.io import WsimilError
from wsimil.names import BUILTIN_EXPERIMENTS
from wsimil.plugins import import_builtins, load_entry_points, unknown_name

if TYPE_CHECKING:  # the reporting modules import torch-free but heavy code; only the type is needed here
    from wsimil.reporting.evidence import Claim

ENTRY_POINT_GROUP = "wsimil.experiments"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
#: names a plugin's experiment or config section may not take (the config's own top-level keys)
_RESERVED_SECTIONS = frozenset({"dataset", "training", "features", "patching", "evaluation", "limits", "cluster",
                                "plugins", "experiments", "results_dir", "replace_results", "synthetic",
                                "imported_features", "report"})

TABLE_EXTS = ("csv", "md", "tex", "html")
FIGURE_EXTS = ("png", "pdf")


def tables(*stems: str) -> list[str]:
    """``tables/<stem>.{csv,md,tex,html}`` of every stem (wsimil.reporting.tables.write_table writes them)."""
    return [f"tables/{s}.{e}" for s in stems for e in TABLE_EXTS]


def figures(*stems: str) -> list[str]:
    """``figures/<stem>.{png,pdf}`` of every stem."""
    return [f"figures/{s}.{e}" for s in stems for e in FIGURE_EXTS]


class Experiment:
    """One trial of the reproduction. Subclass it, set the class attributes, and override what applies.

    Class attributes: ``name`` (the config's ``experiments:`` entry, a folder name), ``description`` (one line,
    for ``wsimil experiments`` and the docs), ``section`` (the config section it reads, or None),
    ``section_schema`` (a plugin's: the JSON schema of ``config[section]``, defaults filled in like the
    built-in sections'; a built-in's section is in schemas/config.schema.yaml), ``needs_pixels`` (it changes
    slide pixels: refused for a features-only dataset), ``derives_sheet`` (its cells read a sample sheet that
    :meth:`sheet` derives from the main one), ``in_cards`` (the robustness cards read its cells),
    ``summary_order`` (where its claims and paragraphs stand in SUMMARY.md), ``report_rule`` (the workflow's
    ``report_<name>`` job writes its report with :meth:`write`; False for a study with rules of its own), ``captions`` (table stem ->
    the caption written with the table), ``captions_dir`` (the folder of the ``<stem>.rst`` captions of its
    HTML tables and PNG figures for the workflow's report; None = the workflow's report/captions).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    section: ClassVar[str | None] = None
    section_schema: ClassVar[Mapping[str, Any] | None] = None
    needs_pixels: ClassVar[bool] = False
    derives_sheet: ClassVar[bool] = False
    in_cards: ClassVar[bool] = False
    summary_order: ClassVar[int] = 100
    report_rule: ClassVar[bool] = True
    captions: ClassVar[Mapping[str, str]] = {}
    captions_dir: ClassVar[Path | None] = None
    origin: str = "built-in"

    # ------------------------------------------------------------------ planning
    def cells(self, config: Mapping[str, Any]) -> list[Cell]:
        """The cells this experiment trains (or scores), in table order. None for a study with rules of its own."""
        return []

    def reads(self, config: Mapping[str, Any], planned: Sequence[Cell]) -> list[str]:
        """Names of the cells whose evaluated runs its report reads: its own, and any it compares with."""
        return [c.name for c in planned if c.experiment == self.name]

    def sheet(self, config: Mapping[str, Any], sheet: pd.DataFrame) -> pd.DataFrame:
        """The sample sheet of its cells from every slide of the main one (``derives_sheet``): same columns, any
        subset of the slides, labels and splits of its own; written to ``data/slides_<name>.csv``."""
        raise WsimilError(f"experiment {self.name} derives no sample sheet (derives_sheet is False)")

    # ------------------------------------------------------------------ report
    def outputs(self, config: Mapping[str, Any], has_slides: bool = True) -> list[str]:
        """The files (under ``results/<dataset>/``) its report writes, page excluded, in page order.
        ``has_slides``: the sheet has slide images (a features-only dataset has none)."""
        return []

    def write(self, report: "ExperimentReport") -> list[Path]:
        """Write every file of :meth:`outputs` from the runs of the cells :meth:`reads`; the paths written."""
        raise WsimilError(f"experiment {self.name} writes its report with rules of its own (report_rule is False)")

    # ------------------------------------------------------------------ SUMMARY and cards
    def claims(self, config: Mapping[str, Any], results: Path, cells: Mapping[str, Cell]) -> "list[Claim]":
        """The claims it checks (wsimil.reporting.evidence.Claim), each with its interval and verdict."""
        return []

    def findings(self, config: Mapping[str, Any], results: Path, cells: Mapping[str, Cell], df: pd.DataFrame,
                 claims: "Mapping[str, Claim]") -> list[str]:
        """Its SUMMARY.md paragraphs (Markdown), given the metrics of every run and every claim by key."""
        return []

    def card_rows(self, config: Mapping[str, Any], results: Path, cells: Mapping[str, Cell],
                  methods: Sequence[str]) -> pd.DataFrame:
        """Rows it adds to every method's robustness card: columns method, quantity, value, ci_low, ci_high,
        reading (a built-in's rows are laid out by wsimil.reporting.cards)."""
        return pd.DataFrame(columns=["method", "quantity", "value", "ci_low", "ci_high", "reading"])


class ExperimentReport:
    """What an experiment's :meth:`Experiment.write` works from: the config, the results folder, every planned
    cell by name, the metrics of the cells it reads (one row per run, ``experiment`` = the cell's name), the
    sample sheet (None without slide images), the heatmap slides and the captions."""

    def __init__(self, config: Mapping[str, Any], results: Path, cells: Mapping[str, Cell], metrics: pd.DataFrame,
                 sheet: pd.DataFrame | None, heatmap_slides: Sequence[str], experiment: Experiment):
        self.config = config
        self.results = Path(results)
        self.cells = dict(cells)
        self.metrics = metrics
        self.sheet = sheet
        self.heatmap_slides = list(heatmap_slides)
        self.experiment = experiment
        self.seeds = list(config["training"]["seeds"])
        self.methods = list(config["training"]["methods"])
        self.dataset = str(config["dataset"]["name"])

    @property
    def own(self) -> list[Cell]:
        """This experiment's cells, in table order."""
        return [c for c in self.cells.values() if c.experiment == self.experiment.name]

    def caption(self, stem: str) -> str:
        """The caption of table ``stem`` with the dataset's name."""
        return f"{self.experiment.captions[stem]} ({self.dataset})"

    def table_path(self, stem: str) -> Path:
        return self.results / "tables" / stem

    def figure_path(self, stem: str) -> Path:
        return self.results / "figures" / f"{stem}.png"


EXPERIMENT_REGISTRY: dict[str, Experiment] = {}
_origin: list[str] = []
_builtins_loaded = False
_plugins_loaded = False


def register_experiment(cls: type[Experiment]) -> type[Experiment]:
    """Register an :class:`Experiment` subclass (a class decorator). A class from a module of
    ``wsimil.experiments`` is a built-in and must be listed in :data:`wsimil.names.BUILTIN_EXPERIMENTS`."""
    origin = _origin[-1] if _origin else "built-in"
    if not (isinstance(cls, type) and issubclass(cls, Experiment)):
        raise WsimilError(f"{origin}: register_experiment takes an Experiment subclass, got {cls!r}")
    name = cls.name
    module = cls.__module__.removeprefix("wsimil.experiments.")
    if module != cls.__module__ and BUILTIN_EXPERIMENTS.get(name) != module:
        raise WsimilError(f"{cls.__module__}: built-in experiment {name!r} is not listed under module {module!r} "
                          "in wsimil.names.BUILTIN_EXPERIMENTS")
    if not _NAME.match(str(name)):
        raise WsimilError(f"{origin}: experiment name {name!r} must be lower case letters, digits and _ (a folder "
                          "and rule name)")
    if name in EXPERIMENT_REGISTRY:
        if type(EXPERIMENT_REGISTRY[name]) is cls:
            return cls
        raise WsimilError(f"{origin}: experiment {name!r} is registered twice (first by {EXPERIMENT_REGISTRY[name].origin})")
    if origin != "built-in":
        if cls.section is not None and (cls.section in _RESERVED_SECTIONS or cls.section in BUILTIN_EXPERIMENTS
                                        or cls.section in _builtin_sections()):
            raise WsimilError(f"{origin}: experiment {name}: config section {cls.section!r} is wsimil's own")
        if cls.section is not None and not isinstance(cls.section_schema, Mapping):
            raise WsimilError(f"{origin}: experiment {name}: section {cls.section!r} needs a section_schema "
                              "(a JSON schema of an object, with defaults)")
        if cls.derives_sheet and cls.sheet is Experiment.sheet:
            raise WsimilError(f"{origin}: experiment {name} derives_sheet but defines no sheet()")
        if cls.report_rule and cls.write is Experiment.write:
            raise WsimilError(f"{origin}: experiment {name} has a report_<name> job (report_rule) but defines no write()")
    exp = cls()
    exp.origin = origin
    EXPERIMENT_REGISTRY[name] = exp
    return cls


def _builtin_sections() -> set[str]:
    return {e.section for e in EXPERIMENT_REGISTRY.values() if e.origin == "built-in" and e.section}


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    import_builtins(BUILTIN_EXPERIMENTS, "wsimil.experiments.", EXPERIMENT_REGISTRY, "BUILTIN_EXPERIMENTS")
    _builtins_loaded = True


def load_plugins() -> None:
    """Register every installed package's experiments (entry points in the group ``wsimil.experiments``)."""
    global _plugins_loaded
    _load_builtins()
    if _plugins_loaded:
        return
    _plugins_loaded = True
    load_entry_points(ENTRY_POINT_GROUP, _register_from)


def _register_from(origin: str, load) -> list[str]:
    """Run ``load`` (an import) with ``origin`` recorded; a class it returns is registered. Every failure is a
    :class:`WsimilError` naming ``origin``."""
    before = set(EXPERIMENT_REGISTRY)
    _origin.append(origin)
    try:
        obj = load()
        if isinstance(obj, type) and issubclass(obj, Experiment) and obj is not Experiment:
            register_experiment(obj)
    except WsimilError:
        raise
    except Exception as exc:  # a plugin's own import error, of any type
        raise WsimilError(f"{origin} failed to import: {type(exc).__name__}: {exc}") from exc
    finally:
        _origin.pop()
    new = sorted(set(EXPERIMENT_REGISTRY) - before)
    if not new and not any(type(e) is obj for e in EXPERIMENT_REGISTRY.values()):
        raise WsimilError(f"{origin} registered no experiment (name an Experiment subclass or call "
                          "wsimil.register_experiment in the module it imports)")
    return new


def get_experiment(name: str) -> Experiment:
    """The experiment registered as ``name`` (installed plugins are looked up when it is not built in)."""
    _load_builtins()
    if name not in EXPERIMENT_REGISTRY:
        load_plugins()
    if name not in EXPERIMENT_REGISTRY:
        raise unknown_name("experiment", name, list(EXPERIMENT_REGISTRY))
    return EXPERIMENT_REGISTRY[name]


def list_experiments(plugins: bool = True) -> list[str]:
    """Every experiment name in registry order: the built-ins (the order a run reports them in), then the
    installed plugins' (``plugins=False``: built-ins only)."""
    _load_builtins()
    if plugins:
        load_plugins()
    return [n for n, e in EXPERIMENT_REGISTRY.items() if plugins or e.origin == "built-in"]


def configured(config: Mapping[str, Any]) -> list[Experiment]:
    """The experiments of ``config["experiments"]``, in registry order."""
    names = set(config["experiments"])
    for n in names:
        get_experiment(n)
    return [EXPERIMENT_REGISTRY[n] for n in list_experiments(plugins=not names <= set(BUILTIN_EXPERIMENTS))
            if n in names]


def plan_cells(config: Mapping[str, Any]) -> list[Cell]:
    """Every cell of the experiments in ``config["experiments"]``, in table order, each name once."""
    exps = configured(config)
    pixels = sorted(e.name for e in exps if e.needs_pixels)
    if pixels and config["dataset"]["source"] == "features":
        raise ValueError(f"experiments {pixels} add noise to slide pixels and re-extract features: they need slides, "
                         "not dataset.source 'features' (leave them out of `experiments`)")
    cells = [c for e in exps for c in e.cells(config)]
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise WsimilError(f"experiments: two cells share a name in {names}")
    return cells


def needs(config: Mapping[str, Any], experiment: str | None) -> list[str]:
    """Cells whose runs an experiment's report reads (``None``: the summary, which reads all)."""
    cells = plan_cells(config)
    names = [c.name for c in cells]
    if experiment is None:
        return names
    return [n for n in dict.fromkeys(get_experiment(experiment).reads(config, cells)) if n in names]


def derived_sheet(config: Mapping[str, Any], name: str, sheet: pd.DataFrame) -> pd.DataFrame:
    """The sheet ``name`` of a cell (an experiment's :meth:`Experiment.sheet`) from every slide of ``sheet``."""
    exp = get_experiment(name)
    if not exp.derives_sheet:
        raise WsimilError(f"experiment {name} derives no sample sheet")
    out = exp.sheet(config, sheet)
    missing = [c for c in ("slide_id", "label", "split") if c not in out.columns]
    unknown = sorted(set(out["slide_id"]) - set(sheet["slide_id"])) if not missing else []
    if missing or unknown:
        raise WsimilError(f"experiment {name}: its sheet() returned " + (f"no columns {missing}" if missing else
                          f"{len(unknown)} slides the sample sheet does not list"))
    return out.reset_index(drop=True)


def experiments_markdown() -> str:
    """The built-in experiments as a Markdown table (docs/architecture.md); ``wsimil experiments --markdown``."""
    rows = []
    for name in list_experiments(plugins=False):
        e = EXPERIMENT_REGISTRY[name]
        what = ", ".join(w for w, on in (("derives a sheet", e.derives_sheet), ("needs slide pixels", e.needs_pixels),
                                          ("on the cards", e.in_cards), ("rules of its own", not e.report_rule)) if on)
        rows.append(f"| `{name}` | {e.description} | `{e.section or '-'}` | {what or '-'} |")
    return "\n".join(["| experiment | what it tests | config section | |", "|---|---|---|---|", *rows])
