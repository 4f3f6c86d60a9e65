"""One training loop for every method: packed mini-batches of bags, per-epoch validation, model selection."""

from __future__ import annotations

import copy
import ctypes
import functools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor, nn

from wsimil.models.base import MILBatch, MILModel, get_method
from wsimil.precision import PRECISIONS, autocast, bf16_native, resolve_precision  # noqa: F401 (re-exported)
from wsimil.training.data import BagSet, batches_by_size, pack

log = logging.getLogger(__name__)

# Feature values per inference batch: 2^23 = 8k instances of 1024-d (32 MB in fp32), so that scoring needs
# no more memory than a training step on a typical slide; a bigger bag is scored alone.
EVAL_MAX_ELEMENTS = 1 << 23
STEP_MAX_INSTANCES = 1 << 18  # micro-batch cap of a training step, for models whose loss is a mean over bags

# The training protocol's fixed numbers (docs/methods.md, "Model selection and the fit gate"), set before any run:
#: a run fits its training set when its last-epoch model's training slide AUC is at least FIT_BAR; fixed before any run
FIT_BAR = 0.9
#: loss_plateaued compares the mean training loss of the last PLATEAU_WINDOW epochs with the PLATEAU_WINDOW before
PLATEAU_WINDOW = 5
#: ... and calls it a plateau unless it fell by more than this fraction of the earlier mean
PLATEAU_MIN_DELTA = 0.01
#: a validation AUC within this of 1.0 is at its ceiling (selection_blind)
AUC_CEILING_TOL = 1e-9
#: why a run ended (TrainResult.stopped_by, run.json ``stopped_by``)
STOP_REASONS = ("plateau", "early_stopping", "max_steps", "schedule")


@dataclass
class Prediction:
    """Scores of a set of bags: ``probs`` (S,), ``logits`` (S,), ``instance_scores[i]`` (N_i,)."""

    indices: np.ndarray
    logits: np.ndarray
    probs: np.ndarray
    instance_scores: list[np.ndarray]
    loss: float
    group_scores: list[np.ndarray] | None = None  # per bag, its sub-bags' scores (MILModel.group_scores)
    score_maps: dict[str, list[np.ndarray]] = field(default_factory=dict)  # name -> per bag (N_i,) (MILModel.score_maps)


@dataclass
class TrainResult:
    model: MILModel
    hparams: dict[str, Any]
    history: list[dict[str, float]]
    best_epoch: int
    seconds: float
    precision: str = "fp32"
    steps: int = 0  # optimiser steps taken
    planned_epochs: int = 0  # epochs of the schedule (the published ones, or fewer under ``max_steps``)
    # the fit gate: the last epoch's model (not the selected one) scored on the training bags in eval mode
    final_train_auc: float = float("nan")  # slide AUC (NaN: not measured, or one class)
    final_train_loss: float = float("nan")  # predict's loss (the data term, ``bce``)
    stopped_by: str = "schedule"  # one of STOP_REASONS

    @property
    def selected_last_epoch(self) -> bool:
        """Whether the selected epoch is the last one trained (kept for the record; whether the run converged
        is :attr:`loss_plateaued`'s question)."""
        return self.best_epoch == len(self.history) - 1

    @property
    def val_auc_ties(self) -> int:
        """How many *other* epochs reached the selected epoch's validation AUC (0: no tie). Selection keeps the
        earliest of tied epochs, so under ``val_auc`` selection every tied epoch comes after the selected one."""
        if not self.history or "val_auc" not in self.history[self.best_epoch]:
            return 0
        best = self.history[self.best_epoch]["val_auc"]
        if not math.isfinite(best):
            return 0
        return sum(1 for r in self.history if r.get("val_auc") == best) - 1

    @property
    def selection_blind(self) -> bool:
        """Whether validation could not tell epochs apart: the selected epoch's validation AUC is at its
        ceiling 1.0 (within ``AUC_CEILING_TOL``) and at least one other epoch reached it too."""
        return selection_blind(self.history, self.best_epoch)

    @property
    def fits(self) -> bool:
        """The fit gate: the last epoch's training slide AUC is at least ``FIT_BAR`` (False when unmeasured)."""
        return fits_training_set(self.final_train_auc)

    @property
    def loss_plateaued(self) -> bool:
        """Whether the training loss had stopped falling by the end (:func:`loss_plateaued` over the whole
        history with ``PLATEAU_WINDOW`` and ``PLATEAU_MIN_DELTA``); False when the run is too short to tell."""
        return loss_plateaued(training_losses(self.history), PLATEAU_WINDOW, PLATEAU_MIN_DELTA)


def training_loss(row: dict[str, float]) -> float:
    """The training loss of one history row that the protocol judges: the data term ``train_bce`` (comparable
    across methods, without KL or instance terms) when the model reports it, else ``train_loss``."""
    return float(row["train_bce"] if "train_bce" in row else row["train_loss"])


def training_losses(history: Sequence[dict[str, float]]) -> list[float]:
    """:func:`training_loss` of every epoch of ``history``."""
    return [training_loss(r) for r in history]


def loss_plateaued(train_losses: Sequence[float], window: int = PLATEAU_WINDOW,
                   min_delta: float = PLATEAU_MIN_DELTA) -> bool:
    """Whether a training-loss trajectory has stopped falling: True when the mean of the last ``window`` epochs
    is not lower than the mean of the ``window`` epochs before them by more than ``min_delta`` times that
    earlier mean (flat, or rising); False while it still falls by more.

    With fewer than ``2 * window`` epochs the answer is False: "cannot tell", not "still falling". A
    non-finite mean also gives False."""
    window = int(window)
    if window < 1:
        raise ValueError(f"window must be a positive number of epochs, got {window!r}")
    if not (math.isfinite(min_delta) and min_delta >= 0):
        raise ValueError(f"min_delta must be a finite number >= 0, got {min_delta!r}")
    losses = [float(v) for v in train_losses]
    if len(losses) < 2 * window:
        return False
    before = float(np.mean(losses[-2 * window : -window]))
    recent = float(np.mean(losses[-window:]))
    if not (math.isfinite(before) and math.isfinite(recent)):
        return False
    return before - recent <= min_delta * abs(before)


def selection_blind(history: Sequence[dict[str, float]], best_epoch: int, tol: float = AUC_CEILING_TOL) -> bool:
    """Whether the selected epoch's validation AUC is at its ceiling 1.0 (>= 1 - ``tol``) and at least one other
    epoch reached the ceiling too: validation could not tell those epochs apart."""
    if not history or not 0 <= best_epoch < len(history):
        return False
    at_ceiling = [r.get("val_auc", float("nan")) >= 1.0 - tol for r in history]  # NaN compares False
    return bool(at_ceiling[best_epoch]) and sum(at_ceiling) >= 2


def fits_training_set(final_train_auc: float | None) -> bool:
    """The fit gate: ``final_train_auc >= FIT_BAR`` (False when it is None or NaN)."""
    return final_train_auc is not None and math.isfinite(final_train_auc) and final_train_auc >= FIT_BAR


TRIM_EVERY = 16  # steps between returns of freed heap memory to the OS


def release_free_memory() -> None:
    """Hand the free pages of the C heap back to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    Activations of bags of different lengths leave holes in the heap that glibc keeps resident: over a
    CAMELYON16 epoch they grew the process by ~0.5 GB. A trim every few steps costs about 1% of the epoch.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def safe_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC, or NaN when only one class is present."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, scores))


def make_optimizer(model: MILModel, hp: dict[str, Any]) -> torch.optim.Optimizer:
    """One optimiser over the model's parameter groups (Adam state is per parameter, so one optimiser with
    two groups steps exactly as two optimisers would)."""
    params = [{"params": g} for g in model.param_groups()]
    name = hp["optimizer"]
    if name == "lookahead_radam":  # TransMIL: Lookahead(RAdam), k=5, alpha=0.5
        from wsimil.training.optim import Lookahead

        inner = torch.optim.RAdam(params, lr=hp["lr"], betas=tuple(hp["betas"]), weight_decay=hp["weight_decay"])
        return Lookahead(inner, k=5, alpha=0.5)
    if name == "adam":
        return torch.optim.Adam(params, lr=hp["lr"], betas=tuple(hp["betas"]), weight_decay=hp["weight_decay"])
    if name == "adamw":
        return torch.optim.AdamW(params, lr=hp["lr"], betas=tuple(hp["betas"]), weight_decay=hp["weight_decay"])
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=hp["lr"], momentum=hp["momentum"], nesterov=bool(hp["nesterov"]), weight_decay=hp["weight_decay"]
        )
    raise ValueError(f"unknown optimizer {name!r} (adam, adamw, sgd, lookahead_radam)")


def make_schedulers(opt: torch.optim.Optimizer, hp: dict[str, Any]):
    """(per-step scheduler or None, per-epoch scheduler or None)."""
    per_step = None
    if hp.get("lr_decay"):
        decay = float(hp["lr_decay"])  # Keras time-based decay: lr_t = lr / (1 + decay * t)
        per_step = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1.0 + decay * t))
    per_epoch = None
    if hp.get("scheduler") == "cosine":
        per_epoch = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=int(hp["epochs"]), eta_min=0.0)
    elif hp.get("scheduler") == "multistep":
        per_epoch = torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=list(hp["lr_milestones"]), gamma=float(hp["lr_gamma"])
        )
    elif hp.get("scheduler") not in (None, "none"):
        raise ValueError(f"unknown scheduler {hp['scheduler']!r} (none, cosine, multistep)")
    return per_step, per_epoch


@torch.inference_mode()
def predict(model: MILModel, bags: BagSet, indices: Sequence[int], device: str = "cpu") -> Prediction:
    """Score bags in eval mode and float32, many bags per forward pass (the result does not depend on the
    grouping)."""
    model.eval()
    indices = np.asarray(indices, dtype=int)
    logits = np.zeros(len(indices), dtype=np.float64)
    inst: list[np.ndarray] = [np.empty(0, np.float32)] * len(indices)
    losses = []
    groups: list[np.ndarray] | None = None
    score_maps: dict[str, list[np.ndarray]] = {}
    sizes = [len(bags.features[i]) for i in indices]
    for chunk in batches_by_size(sizes, max(1, EVAL_MAX_ELEMENTS // bags.dim)):
        idx = indices[chunk]
        batch = pack([bags.features[i] for i in idx], bags.labels[idx]).to(device)
        out = model(batch)
        parts = model.loss(out, batch)
        losses.append(float(parts.get("bce", parts["loss"])) * len(idx))  # the data term, comparable across methods
        logits[chunk] = out.bag_logits.double().cpu().numpy()
        scores = out.instance_scores.float().cpu().numpy()
        bounds = np.cumsum([0] + [sizes[c] for c in chunk])
        for j, c in enumerate(chunk):
            inst[c] = scores[bounds[j] : bounds[j + 1]]
        for name, values in model.score_maps(out, batch).items():
            v = values.float().cpu().numpy()
            maps = score_maps.setdefault(name, [np.empty(0, np.float32)] * len(indices))
            for j, c in enumerate(chunk):
                maps[c] = v[bounds[j] : bounds[j + 1]]
        sub = model.group_scores(out)
        if sub is not None:
            groups = groups or [np.empty(0, np.float32)] * len(indices)
            g_scores, g_bag = sub[0].float().cpu().numpy(), sub[1].cpu().numpy()
            for j, c in enumerate(chunk):
                groups[c] = g_scores[g_bag == j]
        del batch, out, parts
    probs = 1.0 / (1.0 + np.exp(-logits))
    loss = float(np.sum(losses) / max(len(indices), 1)) if len(indices) else float("nan")
    return Prediction(indices, logits, probs, inst, loss, groups, score_maps)


def batch_dtype(precision: str) -> torch.dtype:
    """dtype of the packed instances for ``precision`` (bf16 autocast would round x to bf16 anyway)."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def train_step(
    model: MILModel,
    opt: torch.optim.Optimizer,
    batch: MILBatch | Iterable[MILBatch],
    hp: dict[str, Any],
    device: str = "cpu",
    precision: str = "fp32",
    n_bags: int | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One optimiser step: forward and loss (under autocast for bf16), backward, gradient clipping per
    parameter group when ``hp["grad_clip"]`` is set, optimiser step.

    ``batch`` may be micro-batches (a list or a generator) that together are the step's ``n_bags`` bags, for
    models whose loss is a mean over bags (``MILModel.loss_is_bag_mean``): each micro-batch's loss is
    weighted by its share of the bags before its own backward pass, so the accumulated gradient is the whole
    step's while only one micro-batch's activations are alive. Returns the bag logits (B,) and the losses
    (bag-weighted means over the micro-batches).
    """
    if isinstance(batch, MILBatch):
        batch, n_bags = [batch], batch.n_bags
    opt.zero_grad(set_to_none=True)
    logits: list[Tensor] = []
    losses: dict[str, Tensor] = {}
    for k, b in enumerate(batch):
        if k == 1 and not model.loss_is_bag_mean:
            raise ValueError(f"{model.name}: its loss is not a mean over bags, a step cannot be split")
        with autocast(device, precision):  # the loss too: CLAM's instance classifiers run inside it
            out = model(b)
            parts = model.loss(out, b)
        share = b.n_bags / n_bags
        (parts["loss"] if share == 1 else parts["loss"] * share).backward()
        for name, v in parts.items():
            losses[name] = losses.get(name, 0.0) + v.detach() * share
        logits.append(out.bag_logits.detach())
        del b, out, parts  # the next micro-batch may be packed into the same buffer
    if hp.get("grad_clip"):
        for group in model.param_groups():
            nn.utils.clip_grad_norm_(group, float(hp["grad_clip"]))
    opt.step()
    return (logits[0] if len(logits) == 1 else torch.cat(logits)), losses


def step_chunks(model: MILModel, sizes: Sequence[int]) -> list[list[int]]:
    """Positions of the micro-batches of one step whose bags have ``sizes`` instances: the whole step, or, for
    a model whose loss is a mean over bags, groups of at most ``STEP_MAX_INSTANCES`` instances (CausalMIL's
    128-bag steps are ~1 M CAMELYON16 instances, whose activations alone would take several GB)."""
    if not model.loss_is_bag_mean:
        return [list(range(len(sizes)))]
    return batches_by_size(sizes, STEP_MAX_INSTANCES)


def train_epoch(
    model: MILModel,
    bags: BagSet,
    order: np.ndarray,
    opt: torch.optim.Optimizer,
    hp: dict[str, Any],
    per_step: Any = None,
    device: str = "cpu",
    precision: str = "fp32",
    max_steps: int | None = None,
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """One pass over the bags ``order`` in steps of ``hp["bags_per_batch"]`` bags (only the first
    ``max_steps`` steps when given: the last epoch of a step budget).

    Returns the mean of each loss term over the bags, the bag logits (B,) of the training forward passes
    and the B bags they belong to (``order``, or its first steps' bags under ``max_steps``): the logits are
    those of the forward passes themselves (train mode, as the official loops report training metrics): the epoch runs
    every bag forward once, never a second time for metrics.
    """
    model.train()
    bpb = max(1, int(hp["bags_per_batch"]))
    sums: dict[str, Tensor] = {}
    logits: list[Tensor] = []
    x_dtype = batch_dtype(precision)
    steps = []  # per step: its micro-batches, each an array of bag indices
    for s in range(0, len(order), bpb):
        idx = order[s : s + bpb]
        steps.append([idx[c] for c in step_chunks(model, [len(bags.features[i]) for i in idx])])
    if max_steps is not None:
        steps = steps[: max(1, int(max_steps))]
        order = np.concatenate([np.concatenate(chunks) for chunks in steps])
    largest = max(sum(len(bags.features[i]) for i in c) for chunks in steps for c in chunks)
    buffer = torch.empty((largest, bags.dim), dtype=x_dtype)  # every micro-batch's x is a view of it

    def packed(chunks):  # lazily: a micro-batch is packed after the previous one's backward freed its graph
        for c in chunks:
            yield pack([bags.features[i] for i in c], bags.labels[c], x_dtype, buffer).to(device)

    for step, chunks in enumerate(steps):
        n = sum(len(c) for c in chunks)
        step_logits, losses = train_step(model, opt, packed(chunks), hp, device, precision, n_bags=n)
        if per_step is not None:
            per_step.step()
        for k, v in losses.items():  # summed on the device: no synchronisation per step
            sums[k] = sums.get(k, 0.0) + v.float() * n
        logits.append(step_logits.float())
        del step_logits, losses  # else they stay alive through the next step's forward pass
        if step % TRIM_EVERY == TRIM_EVERY - 1:
            release_free_memory()
    means = {k: float(v) / len(order) for k, v in sums.items()}
    return means, torch.cat(logits).cpu().double().numpy(), order


def train(
    bags: BagSet,
    method: str,
    seed: int,
    overrides: dict[str, Any] | None = None,
    device: str = "cpu",
    progress: bool = False,
    precision: str = "fp32",
) -> TrainResult:
    """Train ``method`` on the ``train`` split, select the epoch on ``val``; returns the selected model.

    ``precision`` ``"bf16"`` runs the training forward passes under bfloat16 autocast (weights, gradients
    and optimiser state stay float32); scores for validation and outputs are always computed in float32.
    """
    spec = get_method(method)
    hp = spec.hparams(overrides)
    published_epochs = int(hp["epochs"])
    precision = resolve_precision(precision, device)
    torch.manual_seed(seed)
    np.random.seed(seed)
    train_idx, val_idx = bags.indices("train"), bags.indices("val")
    if len(train_idx) == 0:
        raise ValueError("the sample sheet has no 'train' slides")
    budget = step_budget(len(train_idx), hp)
    hp["epochs"] = budget.epochs  # the schedule (cosine's T_max) runs over the epochs actually planned
    model = spec.build(bags.dim, hp).to(device)
    opt = make_optimizer(model, hp)
    per_step, per_epoch = make_schedulers(opt, hp)
    stopper = EarlyStopping(**hp["early_stopping"]) if hp.get("early_stopping") else None
    plateau = make_stop_rule(hp.get("stop"))
    gen = torch.Generator().manual_seed(seed)
    selection = hp["selection"] if len(val_idx) else "last"
    history: list[dict[str, float]] = []
    best_key, best_state, best_epoch = None, None, -1
    t0 = time.perf_counter()
    epochs = range(int(hp["epochs"]))
    if progress:
        from tqdm import tqdm

        epochs = tqdm(epochs, desc=f"{method} seed {seed}", unit="epoch", leave=False)
    steps = 0
    stopped_by = None
    for epoch in epochs:
        order = train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
        left = budget.total_steps - steps
        cut = left if left < budget.steps_per_epoch else None
        means, train_logits, seen = train_epoch(model, bags, order, opt, hp, per_step, device, precision, cut)
        steps += budget.steps_per_epoch if cut is None else cut
        if per_epoch is not None:
            per_epoch.step()
        row = {"epoch": epoch, "steps": steps, **{f"train_{k}": v for k, v in means.items()},
               "train_auc": safe_auc(bags.labels[seen], train_logits)}
        if len(val_idx):
            va = predict(model, bags, val_idx, device)
            release_free_memory()
            row.update(val_loss=va.loss, val_auc=safe_auc(bags.labels[val_idx], va.probs))
        history.append(row)
        key = _selection_key(selection, row)
        if _better(selection, key, best_key):
            best_key, best_epoch = key, epoch
            best_state = copy.deepcopy(model.state_dict())
        if not all(math.isfinite(v) for k, v in row.items() if k.endswith("loss")):
            raise FloatingPointError(f"{method} seed {seed}: non-finite loss at epoch {epoch}: {row}")
        # both rules are stepped every epoch (each keeps its own count); the method's own is named first
        early = stopper is not None and len(val_idx) > 0 and stopper.step(epoch, row)
        flat = plateau is not None and plateau.step(epoch, row)
        if (early or flat) and epoch + 1 < budget.epochs:  # at the last planned epoch the schedule ends it
            stopped_by = "early_stopping" if early else "plateau"
            log.info("%s seed %d: %s stop at epoch %d (%s)", method, seed, stopped_by, epoch,
                     stopper if early else plateau)
            break
    if stopped_by is None:
        capped = budget.total_steps < published_epochs * budget.steps_per_epoch
        stopped_by = "max_steps" if capped else "schedule"
    # the fit gate: the last epoch's model, before the selected state replaces it (one inference pass)
    fit = predict(model, bags, train_idx, device)
    release_free_memory()
    final_train_auc = safe_auc(bags.labels[train_idx], fit.probs)
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, hp, history, best_epoch, time.perf_counter() - t0, precision, steps, budget.epochs,
                       final_train_auc, fit.loss, stopped_by)


@dataclass(frozen=True)
class StepBudget:
    """The optimiser steps of a run: ``epochs`` epochs of ``steps_per_epoch`` steps, ``total_steps`` in all
    (the last epoch is cut short when ``max_steps`` is not a multiple of an epoch)."""

    steps_per_epoch: int
    epochs: int
    total_steps: int


def step_budget(n_train: int, hp: dict[str, Any]) -> StepBudget:
    """The published schedule (``hp["epochs"]`` epochs of ceil(n_train / bags_per_batch) steps), capped at
    ``hp["max_steps"]`` optimiser steps when set: every method gets the same number of updates whatever its
    bags per step, unless its published schedule has fewer (then it keeps its own)."""
    if n_train < 1:
        raise ValueError("a step budget needs at least one training bag")
    per_epoch = -(-int(n_train) // max(1, int(hp["bags_per_batch"])))
    epochs = int(hp["epochs"])
    total = epochs * per_epoch
    cap = hp.get("max_steps")
    if cap is not None:
        if int(cap) < 1:
            raise ValueError(f"max_steps must be a positive number of optimiser steps, got {cap!r}")
        total = min(total, int(cap))
        epochs = -(-total // per_epoch)
    return StepBudget(per_epoch, epochs, total)


class EarlyStopping:
    """CLAM / TransMIL early stopping: stop when ``monitor`` has not improved for ``patience`` epochs,
    never before ``min_epochs`` (CLAM: patience 20, stop_epoch 50; TransMIL: val loss, patience 10)."""

    def __init__(self, monitor: str = "val_loss", patience: int = 20, min_epochs: int = 0):
        if monitor not in ("val_loss", "val_auc"):
            raise ValueError(f"early_stopping.monitor must be val_loss or val_auc, got {monitor!r}")
        self.monitor, self.patience, self.min_epochs = monitor, int(patience), int(min_epochs)
        self.best = -math.inf
        self.bad_epochs = 0

    def step(self, epoch: int, row: dict[str, float]) -> bool:
        value = row[self.monitor] * (-1 if self.monitor == "val_loss" else 1)
        if value > self.best:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience and epoch + 1 >= self.min_epochs

    def __repr__(self) -> str:
        return f"{self.monitor} not improved for {self.bad_epochs} epochs"


class PlateauStop:
    """The pre-registered stopping rule ``stop: {rule: train_loss_plateau, min_delta, patience}``, the same for
    every method: stop after the epoch at which the training loss (:func:`training_loss`) has not improved on
    its best by more than ``min_delta`` times that best for ``patience`` consecutive epochs. It never extends
    training (the published epochs and ``max_steps`` still end it) and composes with a method's own
    :class:`EarlyStopping`."""

    RULES = ("train_loss_plateau",)

    def __init__(self, rule: str = "train_loss_plateau", min_delta: float = PLATEAU_MIN_DELTA, patience: int = 10):
        if rule not in self.RULES:
            raise ValueError(f"stop.rule must be one of {', '.join(self.RULES)}, got {rule!r}")
        if isinstance(min_delta, bool) or not isinstance(min_delta, (int, float)) or not (
                math.isfinite(min_delta) and min_delta >= 0):
            raise ValueError(f"stop.min_delta must be a finite number >= 0 (a fraction of the best loss), "
                             f"got {min_delta!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"stop.patience must be a whole number of epochs >= 1, got {patience!r}")
        self.rule, self.min_delta, self.patience = rule, float(min_delta), int(patience)
        self.best = math.inf
        self.bad_epochs = 0

    def step(self, epoch: int, row: dict[str, float]) -> bool:
        """Record the epoch's row; True when training should stop after this epoch."""
        value = training_loss(row)
        bar = self.best - self.min_delta * abs(self.best) if math.isfinite(self.best) else self.best
        if value < bar:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def __repr__(self) -> str:
        return f"training loss not below {self.best:.4g} by more than {self.min_delta:g} for {self.bad_epochs} epochs"


def make_stop_rule(stop: Any) -> PlateauStop | None:
    """The stopping rule of hparam ``stop`` (None: none, training runs its schedule); a ValueError naming the
    key for an unknown rule, an unknown key or a bad number."""
    if stop is None:
        return None
    if not isinstance(stop, dict):
        raise ValueError(f"stop must be null or a mapping {{rule, min_delta, patience}}, got {stop!r}")
    unknown = sorted(set(stop) - {"rule", "min_delta", "patience"})
    if unknown:
        raise ValueError(f"stop.{unknown[0]}: unknown key (allowed: rule, min_delta, patience)")
    if "rule" not in stop:
        raise ValueError("stop.rule is required (train_loss_plateau)")
    return PlateauStop(**stop)


def _selection_key(selection: str, row: dict[str, float]) -> tuple:
    """Larger is better. ``val_auc``: the validation AUC alone; where it is undefined (validation slides of one
    class: NaN every epoch) the validation loss decides instead. ``val_loss``: minus the validation loss;
    ``last``: a constant. Ties go to the earliest epoch (:func:`_better`), except under ``last``."""
    if selection == "val_auc":
        auc = row.get("val_auc", float("nan"))
        if math.isnan(auc):
            loss = row.get("val_loss", float("nan"))
            return (-math.inf, -math.inf if math.isnan(loss) else -loss)
        return (auc, 0.0)
    if selection == "val_loss":
        loss = row["val_loss"]
        return (-math.inf if math.isnan(loss) else -loss,)
    if selection == "last":
        return (0,)
    raise ValueError(f"unknown selection {selection!r} (val_auc, val_loss, last)")


def _better(selection: str, key: tuple, best_key: tuple | None) -> bool:
    """Whether an epoch with ``key`` replaces the selected one: strictly better (ties keep the earliest epoch),
    or any later epoch under ``last``."""
    return best_key is None or (key >= best_key if selection == "last" else key > best_key)


def select_epoch(selection: str, history: Sequence[dict[str, float]]) -> int:
    """The epoch that ``train`` selects from ``history`` (the same rule, without the models)."""
    best_key, best = None, -1
    for epoch, row in enumerate(history):
        key = _selection_key(selection, row)
        if _better(selection, key, best_key):
            best_key, best = key, epoch
    return best
