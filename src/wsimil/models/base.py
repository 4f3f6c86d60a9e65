"""The one model interface and the method registry.

Every method takes a packed batch (instances of several bags concatenated + a bag index) and returns
one logit per bag and one score per instance (the score a heatmap shows). Its loss lives with it.
"""

from __future__ import annotations

import abc
import copy
import importlib
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn

from wsimil.io import WsimilError
from wsimil.names import BUILTIN_METHODS


@dataclass
class MILBatch:
    """A packed batch. ``x`` (N, D) instances of B bags; ``bag_index`` (N,) long in [0, B); ``labels`` (B,) float."""

    x: Tensor
    bag_index: Tensor
    n_bags: int
    labels: Tensor | None = None

    def to(self, device: torch.device | str) -> "MILBatch":
        labels = None if self.labels is None else self.labels.to(device)
        return MILBatch(self.x.to(device), self.bag_index.to(device), self.n_bags, labels)


@dataclass
class MILOutput:
    """``bag_logits`` (B,): logit of the tumour class; ``instance_scores`` (N,): per-instance heatmap score."""

    bag_logits: Tensor
    instance_scores: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)


class MILModel(nn.Module, abc.ABC):
    """Base class: subclasses implement ``forward`` and may extend ``loss`` and ``param_groups``."""

    name: ClassVar[str] = "base"
    # True when ``loss`` is a mean of per-bag terms: a training step may then be split into micro-batches of
    # bags whose gradients, weighted by bag count, add up to the whole step's (training.loop.train_step).
    loss_is_bag_mean: ClassVar[bool] = False

    @abc.abstractmethod
    def forward(self, batch: MILBatch) -> MILOutput:
        """Bag logits (B,) and instance scores (N,) of a packed batch."""

    def param_groups(self) -> list[list[nn.Parameter]]:
        """Parameter groups, each with its own gradient-norm clipping (DTFD's two tiers); default: one."""
        return [[p for p in self.parameters() if p.requires_grad]]

    def group_scores(self, out: MILOutput) -> tuple[Tensor, Tensor] | None:
        """Scores of sub-bags, for models that classify them (DTFD's Tier-1 pseudo-bags): probabilities (G,)
        and the bag (G,) of each; None for models without sub-bags."""
        return None

    #: what ``instance_scores`` is, in a heatmap's words (the papers draw different quantities)
    instance_score_name: ClassVar[str] = "instance score"

    def score_maps(self, out: MILOutput, batch: MILBatch) -> dict[str, Tensor]:
        """Other per-instance quantities (N,) a paper draws as its heatmap, by name (DSMIL's attention, DTFD's
        attention beside its Grad-CAM probability, CLAM-MB's attention of the predicted class); default none."""
        return {}

    def loss(self, out: MILOutput, batch: MILBatch) -> dict[str, Tensor]:
        """Losses of one batch; ``"loss"`` is what is minimised. Default: BCE on the bag logits."""
        bce = nn.functional.binary_cross_entropy_with_logits(out.bag_logits, batch.labels)
        return {"loss": bce, "bce": bce}


# --------------------------------------------------------------------------------------------------
# Registry: a method = a model builder + its published training defaults (one place, overridable).

TRAIN_KEYS = (
    "optimizer", "lr", "weight_decay", "momentum", "nesterov", "betas", "lr_decay",
    "epochs", "bags_per_batch", "grad_clip", "scheduler", "selection",
)  # fmt: skip

# Training keys most methods leave at these values; a method's defaults may set them.
OPTIONAL_TRAIN_DEFAULTS: dict[str, Any] = {
    "lr_milestones": [],  # epochs at which scheduler "multistep" multiplies the lr by lr_gamma
    "lr_gamma": 0.1,
    "early_stopping": None,  # {"monitor": "val_loss", "patience": 20, "min_epochs": 50} (CLAM, TransMIL)
    # A cap on the optimiser steps (training.max_steps): the published schedule, stopped after this many steps,
    # so that a method with 8 bags per step gets as many updates as one with 1 (docs/deviations.md).
    "max_steps": None,
    # A pre-registered stopping rule shared by every method (training.stop), None = run the schedule:
    # {"rule": "train_loss_plateau", "min_delta": 0.01, "patience": 10} stops once the training loss has not
    # improved on its best by more than min_delta (relative) for patience epochs (training.loop.PlateauStop).
    "stop": None,
}


@dataclass(frozen=True)
class MethodSpec:
    name: str
    family: str  # "max-pooling" | "attention"
    builder: Callable[..., MILModel]
    defaults: dict[str, Any]  # TRAIN_KEYS + "model": {constructor kwargs}
    description: str
    source: str
    origin: str = "built-in"  # or "plugin <entry point> (<package>)", "module <pkg.mod>"

    def hparams(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """The defaults with ``overrides`` applied; keys ``model.<kwarg>`` set constructor arguments."""
        hp = copy.deepcopy(self.defaults)
        flat: dict[str, Any] = {}
        for key, value in (overrides or {}).items():
            if key == "model" and isinstance(value, dict):  # nested form from YAML: {model: {beta: 0.1}}
                flat.update({f"model.{k}": v for k, v in value.items()})
            else:
                flat[key] = value
        allowed = list(TRAIN_KEYS) + list(OPTIONAL_TRAIN_DEFAULTS) + [f"model.{k}" for k in sorted(hp["model"])]
        for key, value in flat.items():
            if key not in allowed:
                raise WsimilError(
                    f"unknown training parameter {key!r} for method {self.name!r}; allowed: {', '.join(allowed)}"
                )
            if key.startswith("model."):
                hp["model"][key.split(".", 1)[1]] = value
            else:
                hp[key] = value
        return hp

    def build(self, in_dim: int, hparams: dict[str, Any] | None = None) -> MILModel:
        hp = hparams if hparams is not None else self.hparams()
        return self.builder(in_dim=in_dim, **hp["model"])


METHODS: dict[str, MethodSpec] = {}


ENTRY_POINT_GROUP = "wsimil.methods"
_BUILTIN_PACKAGE = "wsimil.models."
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_origin: list[str] = []  # the plugin being loaded (register_method records it)


def register_method(
    name: str, *, family: str, defaults: dict[str, Any], description: str, source: str
) -> Callable[[Callable[..., MILModel]], Callable[..., MILModel]]:
    """Register a model builder under ``name`` with its published training defaults.

    The public way to add a method, built in or from another package (``docs/methods.md``, "Your own
    method"): ``builder(in_dim=D, **defaults["model"])`` must return a :class:`MILModel`; ``defaults`` hold every
    key of ``TRAIN_KEYS`` and ``model`` (the constructor's keyword arguments). A call from a module of
    ``wsimil.models`` registers a built-in: its name must be listed under that module in
    :data:`wsimil.names.BUILTIN_METHODS`."""
    origin = _origin[-1] if _origin else "built-in"
    caller = str(sys._getframe(1).f_globals.get("__name__", ""))
    module = caller.removeprefix(_BUILTIN_PACKAGE)
    if module != caller and BUILTIN_METHODS.get(name) != module:
        raise WsimilError(
            f"{caller}: built-in method {name!r} is not listed under module {module!r} in wsimil.names.BUILTIN_METHODS"
        )
    if not _NAME.match(str(name)):
        raise WsimilError(f"{origin}: method name {name!r} must be lower case letters, digits and _ (a folder name)")
    missing = set(TRAIN_KEYS) - set(defaults) - {"model"}
    if missing:
        raise WsimilError(f"{origin}: method {name}: defaults lack {sorted(missing)}")
    unknown = set(defaults) - set(TRAIN_KEYS) - set(OPTIONAL_TRAIN_DEFAULTS) - {"model"}
    if unknown:
        raise WsimilError(f"{origin}: method {name}: unknown default keys {sorted(unknown)}")
    if family not in ("max-pooling", "attention", "other"):
        raise WsimilError(f"{origin}: method {name}: family must be max-pooling, attention or other, got {family!r}")
    defaults = {**copy.deepcopy(OPTIONAL_TRAIN_DEFAULTS), **defaults}

    def deco(builder: Callable[..., MILModel]) -> Callable[..., MILModel]:
        if name in METHODS:
            raise WsimilError(f"{origin}: method {name!r} is registered twice (first by {METHODS[name].origin})")
        METHODS[name] = MethodSpec(name, family, builder, {"model": {}, **defaults}, description, source, origin)
        return builder

    return deco


def _register_from(origin: str, load: Callable[[], Any]) -> list[str]:
    """Run ``load`` (an import) with ``origin`` recorded; the names it registered. Every failure is a
    :class:`WsimilError` naming ``origin``."""
    before = set(METHODS)
    _origin.append(origin)
    try:
        obj = load()
    except WsimilError:
        raise
    except Exception as exc:  # a plugin's own import error, of any type
        raise WsimilError(f"{origin} failed to import: {type(exc).__name__}: {exc}") from exc
    finally:
        _origin.pop()
    new = sorted(set(METHODS) - before)
    if not new:  # the attribute may name a builder registered at an earlier import
        new = sorted(n for n, s in METHODS.items() if s.builder is obj)
    if not new:
        raise WsimilError(f"{origin} registered no method (call wsimil.register_method in the module it imports)")
    return new


def resolve_method(ref: str) -> list[str]:
    """``package.module:attribute`` (code on the Python path) -> the method names that module registers (the
    attribute: the registered builder, or any object of the module); a plain name is returned as is."""
    if ":" not in ref:
        return [ref]
    module, _, attr = ref.partition(":")
    if not module or not attr:
        raise WsimilError(f"method reference {ref!r}: expected package.module:attribute")
    _load_all()

    def load():
        return getattr(importlib.import_module(module), attr)

    return _register_from(f"module {module} ({ref})", load)


def check_method(name: str, in_dim: int = 6) -> None:
    """Build ``name`` and run it on a packed two-bag batch: bag logits (B,), instance scores (N,), a finite
    scalar loss. A :class:`WsimilError` naming the method's origin otherwise (a plugin's mistake is caught
    before any job)."""
    spec = get_method(name)
    where = f"method {name!r} ({spec.origin})"
    try:
        model = spec.build(in_dim)
    except Exception as exc:
        raise WsimilError(f"{where}: building it with its defaults failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, MILModel):
        raise WsimilError(f"{where}: the builder returned a {type(model).__name__}, not a wsimil MILModel")
    gen = torch.Generator().manual_seed(0)
    batch = MILBatch(torch.randn(5, in_dim, generator=gen), torch.tensor([0, 0, 0, 1, 1]), 2, torch.tensor([0.0, 1.0]))
    model.train()
    try:
        out = model(batch)
    except Exception as exc:
        raise WsimilError(f"{where}: a forward pass on a packed batch of 2 bags failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(out, MILOutput):
        raise WsimilError(f"{where}: forward returned a {type(out).__name__}, not a MILOutput")
    if tuple(out.bag_logits.shape) != (2,):
        raise WsimilError(f"{where}: bag logits have shape {tuple(out.bag_logits.shape)}, expected (B,) = (2,)")
    if tuple(out.instance_scores.shape) != (5,):
        raise WsimilError(f"{where}: instance scores have shape {tuple(out.instance_scores.shape)}, expected (N,) = (5,)")
    try:
        losses = model.loss(out, batch)
    except Exception as exc:
        raise WsimilError(f"{where}: loss() on a packed batch of 2 bags failed: {type(exc).__name__}: {exc}") from exc
    loss = losses.get("loss") if isinstance(losses, dict) else None
    if loss is None or loss.dim() != 0 or not torch.isfinite(loss):
        raise WsimilError(f"{where}: loss() must return a dict whose 'loss' is a finite scalar tensor, got {losses!r}")


def get_method(name: str) -> MethodSpec:
    _load_all()
    if name not in METHODS:
        from wsimil.plugins import unknown_name

        raise unknown_name("method", name, sorted(METHODS))
    return METHODS[name]


def list_methods() -> list[str]:
    _load_all()
    return sorted(METHODS)


def methods_markdown() -> str:
    """The built-in methods by family as a Markdown table (README.md, "Methods and data"), in the order of
    :data:`wsimil.names.BUILTIN_METHODS`; ``wsimil methods --markdown`` prints it."""
    _load_all()
    by_family: dict[str, list[str]] = {}
    for name in BUILTIN_METHODS:
        by_family.setdefault(METHODS[name].family, []).append(f"`{name}`")
    rows = [f"| {family} | {', '.join(names)} |" for family, names in by_family.items()]
    return "\n".join(["| family | methods |", "|---|---|", *rows])


_builtins_loaded = False
_plugins_loaded = False


def _load_builtins() -> None:
    """Import the modules of :data:`wsimil.names.BUILTIN_METHODS` (their ``register_method`` calls), and check
    that they registered every name listed."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    from wsimil.plugins import import_builtins

    import_builtins(BUILTIN_METHODS, _BUILTIN_PACKAGE, METHODS, "BUILTIN_METHODS")
    _builtins_loaded = True


def _load_all() -> None:
    """The built-in methods, then every installed plugin's (entry points in the group ``wsimil.methods``)."""
    global _plugins_loaded
    _load_builtins()
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from wsimil.plugins import load_entry_points

    load_entry_points(ENTRY_POINT_GROUP, _register_from)
