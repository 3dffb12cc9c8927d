"""Forgetting layers and the FNN unlearning loop (Hatua, Nguyen, Cano, Sung, "Machine Unlearning using Forgetting
Neural Networks", arXiv 2410.22374; ALGORITHMS.md section 6).

RECONSTRUCTION: only the paper's abstracts are reachable, so everything below is the project's reading of them, not
the authors' code. A forgetting layer multiplies each neuron's (channel's) activation by a forgetting factor shaped
like the Ebbinghaus retention curve R = e^(−t/S):

    h̃_i = φ_i(t) · h_i,    φ_i(t) = exp(−t / τ_i),

where t counts unlearning iterations (t = 0 until unlearning starts, so an inserted layer is the identity) and τ_i
is neuron i's retention time. The four types cross fixed vs varying τ with all neurons vs the neurons ranked most
active on the forget set (`FORGETTING_LAYER_TYPES`). The unlearning loop (`fnn_unlearn`) alternates decay and
rehearsal: each iteration advances t in every layer, then takes a few optimiser steps on retained data, so the
network re-learns what it should keep around the damped neurons while what only they carried fades.

Flow: `insert_forgetting_layers` (a copy of a trained model, layers after chosen modules) → `record_activity` on the
forget set → `rank_layers` → `fnn_unlearn` → optionally `fold_forgetting_layers` to get the original architecture
back (same state_dict keys, so a site's discriminator can rejoin its site group).
"""
from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from fedgan.registry import Registry

ModelInputs = torch.Tensor | tuple[torch.Tensor, ...]  # one forward call's positional arguments
Batch = Any  # whatever the caller's loss function takes (e.g. (images, labels))

# ---- defaults (the paper's values are not reachable; these suit MNIST-sized models on a CPU) ----
DEFAULT_TAU = 20.0  # fixed types: e^(-1) of the activation is left after 20 iterations
DEFAULT_TAU_MIN = 5.0  # varying types: the fastest-forgetting neuron
DEFAULT_TAU_MAX = 50.0  # varying types: the slowest-forgetting neuron
DEFAULT_FRACTION = 0.2  # ranked types: share of neurons (channels) ranked most active on the forget set
DEFAULT_DISCRIMINATOR_LAYER = "fixed-all"  # the GAN method `fnn`: best of the four on fnn-compare (bench/README.md)
DEFAULT_TARGETS: tuple[type[nn.Module], ...] = (nn.ReLU, nn.LeakyReLU)


# ----------------------------------------------------------------------------------------------------------------
# The layer and its four types
# ----------------------------------------------------------------------------------------------------------------

class ForgettingLayer(nn.Module):
    """Per-neuron multiplicative forgetting h̃_i = φ_i(t)·h_i, φ_i(t) = exp(−t/τ_i) for selected neurons, else 1.

    RECONSTRUCTION of the forgetting layer of arXiv 2410.22374 (abstract only). The neuron axis is dim 1, so one
    layer serves (N, C) and (N, C, H, W) activations (one factor per channel). Buffers, all in the state_dict:
    `t` (iterations of forgetting so far), `tau` (C,) retention times and `selected` (C,) which neurons forget.
    Subclasses fix how `tau` and `selected` follow from the ranking given to `rank`.
    """

    name: ClassVar[str]
    uses_ranking: ClassVar[bool] = True  # False where `rank` changes nothing (a measuring pass can be skipped)

    def __init__(self, num_neurons: int, *, tau: float = DEFAULT_TAU, tau_min: float = DEFAULT_TAU_MIN,
                 tau_max: float = DEFAULT_TAU_MAX, fraction: float = DEFAULT_FRACTION) -> None:
        super().__init__()
        if num_neurons < 1:
            raise ValueError(f"num_neurons: got {num_neurons}, expected at least 1")
        if not tau > 0:
            raise ValueError(f"tau: got {tau}, expected > 0")
        if not 0 < tau_min <= tau_max:
            raise ValueError(f"tau_min, tau_max: got {tau_min}, {tau_max}, expected 0 < tau_min <= tau_max")
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction: got {fraction}, expected a share in (0, 1]")
        self.num_neurons, self.tau_value, self.tau_min, self.tau_max = num_neurons, tau, tau_min, tau_max
        self.fraction = fraction
        self.register_buffer("t", torch.zeros(()))
        self.register_buffer("tau", torch.full((num_neurons,), float(tau)))
        self.register_buffer("selected", torch.zeros(num_neurons, dtype=torch.bool))
        self._apply_order(torch.arange(num_neurons), ranked=False)

    def factors(self) -> torch.Tensor:
        """φ(t), shape (C,): exp(−t/τ_i) where selected, 1 elsewhere (exactly 1 everywhere at t = 0)."""
        decayed = torch.exp(-self.t / self.tau)
        return torch.where(self.selected, decayed, torch.ones_like(decayed))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if h.dim() < 2 or h.shape[1] != self.num_neurons:
            raise ValueError(f"{self.name} forgetting layer: got activations {tuple(h.shape)}, "
                             f"expected (N, {self.num_neurons}, ...)")
        phi = self.factors().to(h.dtype).view(1, -1, *([1] * (h.dim() - 2)))  # (1, C, 1, ...)
        return h * phi

    @torch.no_grad()
    def advance(self, steps: int = 1) -> None:
        """Move the forgetting clock t on by `steps` unlearning iterations."""
        if steps < 0:
            raise ValueError(f"steps: got {steps}, expected >= 0 (forgetting does not run backwards)")
        self.t += steps

    @torch.no_grad()
    def rank(self, activity: torch.Tensor) -> None:
        """Set the selection (and, for varying types, the rates) from a per-neuron score, e.g. mean |h_i| on the
        forget set; higher = more tied to what is forgotten. Ties go to the lower index, so ranking is deterministic.
        """
        activity = torch.as_tensor(activity).detach().reshape(-1).to("cpu", torch.float64)
        if activity.numel() != self.num_neurons:
            raise ValueError(f"activity: got {activity.numel()} scores, expected one per neuron ({self.num_neurons})")
        if not torch.isfinite(activity).all():
            raise ValueError("activity: got non-finite scores, expected finite ones")
        order = torch.argsort(activity, descending=True, stable=True)  # most active first
        self._apply_order(order.to(self.tau.device), ranked=True)

    def _top(self, order: torch.Tensor) -> torch.Tensor:
        """The first ⌈fraction·C⌉ neurons of `order` (at least one)."""
        return order[: max(1, math.ceil(self.fraction * self.num_neurons - 1e-9))]

    def _apply_order(self, order: torch.Tensor, ranked: bool) -> None:
        """Fill `tau` and `selected` from `order` (most active first); `ranked` is False at construction."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"{self.num_neurons}, t={float(self.t):g}, selected={int(self.selected.sum())}"


def _geometric_rates(count: int, tau_min: float, tau_max: float) -> torch.Tensor:
    """τ for ranks 0..count−1: τ_min·(τ_max/τ_min)^(r/(count−1)), so rank 0 (most active) forgets fastest."""
    if count == 1:
        return torch.tensor([tau_min])
    return tau_min * (tau_max / tau_min) ** (torch.arange(count, dtype=torch.float64) / (count - 1))


FORGETTING_LAYER_TYPES: Registry[type[ForgettingLayer]] = Registry("forgetting layer type")


@FORGETTING_LAYER_TYPES.register("fixed-all")
class FixedAllForgetting(ForgettingLayer):
    """fixed-all: φ_i(t) = exp(−t/τ) for every neuron i, one τ (`tau`). Ranking changes nothing. RECONSTRUCTION."""

    name = "fixed-all"
    uses_ranking = False

    def _apply_order(self, order: torch.Tensor, ranked: bool) -> None:
        self.selected.fill_(True)
        self.tau.fill_(self.tau_value)


@FORGETTING_LAYER_TYPES.register("fixed-ranked")
class FixedRankedForgetting(ForgettingLayer):
    """fixed-ranked: φ_i(t) = exp(−t/τ) for i in S, 1 otherwise, where S is the ⌈fraction·C⌉ neurons most active on
    the forget set. RECONSTRUCTION. Until `rank` is called S is empty (the layer stays the identity)."""

    name = "fixed-ranked"

    def _apply_order(self, order: torch.Tensor, ranked: bool) -> None:
        self.tau.fill_(self.tau_value)
        self.selected.fill_(False)
        if ranked:
            self.selected[self._top(order)] = True


@FORGETTING_LAYER_TYPES.register("varying-all")
class VaryingAllForgetting(ForgettingLayer):
    """varying-all: φ_i(t) = exp(−t/τ_i) for every neuron, τ_i = τ_min·(τ_max/τ_min)^(r_i/(C−1)) with r_i neuron i's
    rank by forget-set activity (0 = most active, forgets fastest). RECONSTRUCTION. Before `rank`, r_i = i, so an
    unranked layer still spreads its rates over [τ_min, τ_max]."""

    name = "varying-all"

    def _apply_order(self, order: torch.Tensor, ranked: bool) -> None:
        self.selected.fill_(True)
        self.tau[order] = _geometric_rates(self.num_neurons, self.tau_min, self.tau_max).to(self.tau)


@FORGETTING_LAYER_TYPES.register("varying-ranked")
class VaryingRankedForgetting(ForgettingLayer):
    """varying-ranked: φ_i(t) = exp(−t/τ_i) for i in S (the ⌈fraction·C⌉ most active on the forget set), 1 otherwise,
    with τ_i = τ_min·(τ_max/τ_min)^(r_i/(|S|−1)) by rank r_i within S. RECONSTRUCTION. S is empty until `rank`."""

    name = "varying-ranked"

    def _apply_order(self, order: torch.Tensor, ranked: bool) -> None:
        self.tau.fill_(self.tau_max)  # unselected neurons never read their τ
        self.selected.fill_(False)
        if ranked:
            top = self._top(order)
            self.selected[top] = True
            self.tau[top] = _geometric_rates(len(top), self.tau_min, self.tau_max).to(self.tau)


# ----------------------------------------------------------------------------------------------------------------
# Putting layers into a model, ranking them, taking them out again
# ----------------------------------------------------------------------------------------------------------------

class ForgettingBlock(nn.Sequential):
    """A model's original module followed by its forgetting layer: target(x) → φ ⊙ target(x) (FNN RECONSTRUCTION)."""

    def __init__(self, target: nn.Module, layer: ForgettingLayer) -> None:
        super().__init__(target, layer)


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients for a measuring pass; every submodule's own train/eval flag is restored after."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, mode in modes:
            module.training = mode


def _as_args(inputs: ModelInputs) -> tuple[torch.Tensor, ...]:
    return inputs if isinstance(inputs, tuple) else (inputs,)


def _output_widths(model: nn.Module, names: Sequence[str], example: ModelInputs
                   ) -> dict[str, tuple[int, torch.device]]:
    """(channels on dim 1, device) of each named module's output in one forward pass; a module run twice must agree."""
    widths: dict[str, set[tuple[int, torch.device]]] = {name: set() for name in names}
    handles = [model.get_submodule(name).register_forward_hook(
        lambda _module, _args, output, name=name: widths[name].add((int(output.shape[1]), output.device)))
        for name in names]
    try:
        with _evaluating(model):
            model(*_as_args(example))
    finally:
        for handle in handles:
            handle.remove()
    shared = {name: sorted(found) for name, found in widths.items() if len(found) > 1}
    if shared:  # one module object reused at several widths cannot hold one per-neuron factor
        raise ValueError(f"modules run at several widths in one forward pass: {shared}; give each its own module")
    return {name: found.pop() for name, found in widths.items() if found}


def insert_forgetting_layers(
    model: nn.Module,
    layer_type: str,
    example: ModelInputs,
    *,
    after: tuple[type[nn.Module], ...] = DEFAULT_TARGETS,
    skip: Collection[str] = (),
    **options: float,
) -> tuple[nn.Module, list[ForgettingLayer]]:
    """A deep copy of `model` with a `layer_type` forgetting layer after every module of a type in `after`.

    RECONSTRUCTION (arXiv 2410.22374, abstract). `example` is one batch of the model's inputs (a tensor, or a tuple
    for e.g. a conditional discriminator's (images, labels)); one forward pass sizes each layer to its module's
    output channels. Modules named in `skip`, and modules the forward pass never runs, get no layer. `options` go
    to the layer (`tau`, `tau_min`, `tau_max`, `fraction`). At t = 0 the copy computes exactly what `model` does.
    The DCGAN discriminator applies LeakyReLU functionally, so insert after its `nn.Conv2d`s: LeakyReLU is
    positively homogeneous (lrelu(φx) = φ·lrelu(x) for φ > 0), so scaling before it equals scaling after it.
    """
    layer_class = FORGETTING_LAYER_TYPES[layer_type]
    model = copy.deepcopy(model)
    names = [name for name, module in model.named_modules()
             if name and isinstance(module, after) and name not in skip]
    widths = _output_widths(model, names, example)
    if not widths:
        raise ValueError(f"no module of type {[t.__name__ for t in after]} runs in the model; pass after=...")
    layers = []
    for name, (width, device) in widths.items():
        parent_name, _, child_name = name.rpartition(".")
        layer = layer_class(width, **options).to(device)
        setattr(model.get_submodule(parent_name), child_name, ForgettingBlock(model.get_submodule(name), layer))
        layers.append(layer)
    return model, layers


def record_activity(model: nn.Module, layers: Sequence[ForgettingLayer], inputs: Iterable[ModelInputs]
                    ) -> list[torch.Tensor]:
    """Mean |h_i| per neuron at each layer's input over `inputs` (batches of model inputs, e.g. the forget set).

    Recorded with forward hooks in eval mode; what each layer sees is its module's raw activation, before the
    forgetting factor. Feed the result to `rank_layers` (RECONSTRUCTION: the abstract's "rank-based" selection).
    """
    sums = [torch.zeros(layer.num_neurons, dtype=torch.float64) for layer in layers]
    count = 0

    def hook(index: int) -> Callable[..., None]:
        def accumulate(_module: nn.Module, args: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
            h = args[0].detach().abs()
            per_sample = h.flatten(2).mean(2) if h.dim() > 2 else h  # (N, C): spatial mean per channel
            sums[index] += per_sample.sum(0).to("cpu", torch.float64)
        return accumulate

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        with _evaluating(model):
            for batch in inputs:
                args = _as_args(batch)
                model(*args)
                count += len(args[0])
    finally:
        for handle in handles:
            handle.remove()
    if count == 0:
        raise ValueError("inputs: got no batches, expected at least one forget batch")
    return [total / count for total in sums]


def rank_layers(layers: Sequence[ForgettingLayer], activities: Sequence[torch.Tensor]) -> None:
    """Give each layer its per-neuron score (from `record_activity`): sets the ranked types' selection and rates.

    RECONSTRUCTION: the abstract's rank-based rates, read as "rank neurons by their response to the forget set"."""
    if len(layers) != len(activities):
        raise ValueError(f"activities: got {len(activities)}, expected one per layer ({len(layers)})")
    for layer, activity in zip(layers, activities):
        layer.rank(activity)


@torch.no_grad()
def fold_forgetting_layers(model: nn.Module) -> nn.Module:
    """A copy of `model` with every `ForgettingBlock` replaced by its target, the factors folded into its weights.

    Exact for targets that are `nn.Linear` or `nn.Conv1d/2d/3d` (output channel i's weights and bias times φ_i), so
    the folded model computes what the layered one does and has the original state_dict keys. Other targets
    (a ReLU, say) raise ValueError: insert after the linear maps instead when folding is wanted. Folding is the
    project's addition to the FNN RECONSTRUCTION (the abstract says nothing of it): it lets an unlearned site
    discriminator rejoin its site group and checkpoint with the usual keys.
    """
    model = copy.deepcopy(model)
    blocks = [(name, module) for name, module in model.named_modules() if isinstance(module, ForgettingBlock)]
    for name, block in blocks:
        target, layer = block[0], block[1]
        if not isinstance(target, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            raise ValueError(f"{name}: cannot fold a forgetting layer after {type(target).__name__}; "
                             "only after nn.Linear or nn.ConvNd")
        phi = layer.factors().to(target.weight.dtype)
        target.weight.mul_(phi.view(-1, *([1] * (target.weight.dim() - 1))))
        if target.bias is not None:
            target.bias.mul_(phi)
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child_name, target)
    return model


# ----------------------------------------------------------------------------------------------------------------
# The unlearning loop
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class FNNRun:
    """What `fnn_unlearn` (FNN RECONSTRUCTION) did: iterations run, whether `stop` ended it, mean rehearsal loss
    per iteration."""

    iterations: int = 0
    stopped_early: bool = False
    rehearsal_losses: list[float] = field(default_factory=list)


def cycle_batches(batches: Iterable[Batch]) -> Iterator[Batch]:
    """Endless batches: re-iterate `batches` (a list or a DataLoader) each time it runs out."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:  # an empty source, or a one-shot generator already spent, would loop forever
            raise ValueError("retain batches: got none (an empty or one-shot iterable); pass a list or a DataLoader")


def fnn_unlearn(
    model: nn.Module,
    layers: Sequence[ForgettingLayer],
    retain_batches: Iterable[Batch],
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor],
    *,
    iterations: int,
    rehearse_steps: int = 1,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 1e-3,
    forget_inputs: Iterable[ModelInputs] | None = None,
    stop: Callable[[], bool] | None = None,
) -> FNNRun:
    """FNN unlearning, RECONSTRUCTED from arXiv 2410.22374's abstract: decay, then rehearse, `iterations` times.

    Each iteration advances every layer's t by one (φ_i = exp(−t/τ_i) shrinks) and then takes `rehearse_steps`
    optimiser steps of `loss_fn(model, batch)` on retained batches; `stop()` (e.g. "forget accuracy has reached the
    retrained model's") is asked after each iteration and ends the loop when true. `loss_fn` is the caller's, so
    the same loop serves a site discriminator (BCE real vs fake) and a classifier (cross-entropy). With
    `forget_inputs`, the layers are first ranked on them (`record_activity` → `rank_layers`). `optimizer` defaults
    to Adam at `lr` over the model's parameters. Aggressive settings over-forget: a small τ, a large `fraction`, or
    the "all" types with many iterations silence neurons the retained task needs faster than a few rehearsal steps
    can recover it, so retained accuracy (or D's real/fake margin) falls too; watch it and stop early.
    """
    if iterations < 0 or rehearse_steps < 0:
        raise ValueError(f"iterations, rehearse_steps: got {iterations}, {rehearse_steps}, expected >= 0")
    if forget_inputs is not None and any(layer.uses_ranking for layer in layers):  # fixed-all: ranking is moot
        rank_layers(layers, record_activity(model, layers, forget_inputs))
    optimizer = optimizer if optimizer is not None else torch.optim.Adam(model.parameters(), lr=lr)
    was_training, batches, run = model.training, cycle_batches(retain_batches), FNNRun()
    for _ in range(iterations):
        # ---- decay: every forgetting clock moves on one iteration ----
        for layer in layers:
            layer.advance()
        # ---- rehearse: a few steps on retained data (stop() may have left the model in eval mode) ----
        model.train()
        losses = []
        for _ in range(rehearse_steps):
            loss = loss_fn(model, next(batches))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        run.iterations += 1
        run.rehearsal_losses.append(sum(losses) / len(losses) if losses else math.nan)
        if stop is not None and stop():
            run.stopped_early = True
            break
    model.train(was_training)
    return run
