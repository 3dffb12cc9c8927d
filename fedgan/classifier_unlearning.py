"""Classifier-side unlearning: a trained classifier forgets a class or a set of items (issue 18's two settings).

The seed repository adu3010/machine-unlearning trains a small feed-forward network on MNIST and makes it forget the
digit 5; this module runs that experiment with every method in `CLASSIFIER_METHODS` from one trained model and
measures each the same way (`compare`), so the federated GAN methods have a classifier-side yardstick. Engine-free:
tensors and an `nn.Module` in, JSON-ready dicts out; everything is seeded (same seed, same numbers on the CPU).

Methods (ALGORITHMS.md section 6): `original` (the trained model, the "before" row), `retrain` (from scratch on the
retained data, the reference), `finetune` (a few steps on retained data), `fnn` (forgetting layers, a RECONSTRUCTION
of arXiv 2410.22374 from its abstract; see `fedgan.forgetting_layers`), `noise` (UNSIR, Tarun et al., arXiv
2111.08947: error-maximising noise, impair, repair) and `uniform` (adu3010's: towards the uniform output on the
forget items, then relearn on retained data). `fnn-fixed-all`, `fnn-fixed-ranked`, `fnn-varying-all` and
`fnn-varying-ranked` are `fnn` with its layer type fixed, named as the federation's fnn methods are.

Two settings (bench/fnn_compare.py): (a) a classifier trained on a site's own data (`class_request`, `compare`),
whose reference is `retrain`; (b) the proof of forgetting's downstream classifier, trained on a generator's
pseudo-labelled samples (`generated_class_request`, `downstream_classifier`), whose reference is given rather than
trained — the same classifier trained on the retrained federation's samples (`compare_with_reference`).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedgan.evaluation.classifier import train_evaluator_net
from fedgan.evaluation.forgetting import MIA_FPR, roc_auc, tpr_at_fpr
from fedgan.forgetting_layers import (
    DEFAULT_FRACTION,
    DEFAULT_TAU,
    DEFAULT_TAU_MAX,
    DEFAULT_TAU_MIN,
    cycle_batches,
    fnn_unlearn,
    insert_forgetting_layers,
)
from fedgan.registry import Registry
from fedgan.seeding import derive_seed

EVAL_BATCH_SIZE = 1000


@dataclass(frozen=True)
class ClassifierUnlearningOptions:
    """Every method's knobs in one block; the defaults run in seconds on MNIST-sized data on a CPU."""

    # ---- training: the original model (`train_classifier`) and retrain's from-scratch model ----
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 64
    # ---- finetune: Adam steps on retained data only ----
    finetune_steps: int = 100
    # ---- fnn: forgetting layers after every ReLU, decay then rehearse (RECONSTRUCTION) ----
    fnn_type: str = "fixed-all"  # the generator side's best type too (bench/README.md, issue 18)
    # 5 × 4 rehearsal steps with the forget term below: a tenth of a 3-epoch retrain's batches (40 of 564), chosen in
    # bench/README.md (issue 18, "fnn's forget term"); 10 × 5 without the term before ("Choosing fnn's iterations")
    fnn_iterations: int = 5
    fnn_rehearse_steps: int = 4
    fnn_tau: float = DEFAULT_TAU  # with 5 iterations φ ends at e^-0.25; τ = 5 on the "all" types silences the net
    fnn_tau_min: float = DEFAULT_TAU_MIN
    fnn_tau_max: float = DEFAULT_TAU_MAX
    fnn_fraction: float = DEFAULT_FRACTION
    fnn_lr: float = 1e-3
    fnn_stop_accuracy: float | None = None  # stop once forget-item accuracy is at or below this (e.g. retrain's)
    # Ours (0 = the reading above, rehearsal on retained data only): each rehearsal step also adds this weight times
    # −log(1 − p_y(x)) on a forget batch (the item's own label pushed to probability 0) -- arXiv 2410.22374 v2's
    # abstract names a learn/unlearn protocol "on retain and forget sets" without its loss; measured in
    # bench/README.md (issue 18, "fnn's forget term"): 0.3 closes most of the membership-AUC gap to retrain.
    fnn_forget_weight: float = 0.3
    # ---- noise (UNSIR, the notebook's values): noise per forget class, impair, repair ----
    noise_batch: int = 64
    noise_steps: int = 40
    noise_lr: float = 0.1
    noise_l2: float = 0.1
    noise_retain_per_class: int = 1000
    impair_lr: float = 0.02
    repair_lr: float = 0.01
    # ---- uniform (adu3010): KL to the uniform output on forget items, then relearn on retained data ----
    uniform_epochs: int = 3
    uniform_lr: float = 1e-3
    relearn_epochs: int = 1
    # Ours, a cost knob: at most this many uniform-target / relearn steps (None: adu3010's epochs decide, which cost
    # about a retrain of a small classifier); 15 + 30 measured in bench/README.md (issue 18, "uniform's step caps").
    uniform_steps: int | None = 15
    relearn_steps: int | None = 30
    # ---- measurement: at most this many forget items and as many non-members for the attack ----
    mia_max_items: int = 2000
    # each method run this many times from its own copy, `seconds` the median (a sub-second method's wall time moves
    # by ±30 % between single runs on a shared CPU); the model measured is the first run's (the runs are identical)
    timing_repeats: int = 1

    def __post_init__(self) -> None:
        if self.fnn_forget_weight < 0:
            raise ValueError(f"fnn_forget_weight: got {self.fnn_forget_weight}, expected >= 0 (0 turns the term off)")
        if self.timing_repeats < 1:
            raise ValueError(f"timing_repeats: got {self.timing_repeats}, expected >= 1 (1 times each method once)")
        for name in ("uniform_steps", "relearn_steps"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name}: got {value}, expected None (the epochs decide) or a step count >= 0")


@dataclass(frozen=True, eq=False)  # tensors have no single truth value to compare by
class ClassifierTask:
    """Train/test tensors and what to forget: `forget_mask` over the train items, `forget_classes` for a class
    request (empty for an item request). Images (N, C, H, W) float, labels int64 (N,). `nonmember_images` /
    `nonmember_labels`: the attack's pool of non-members (None: the test items), of which those sharing the forget
    items' classes are drawn."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    forget_mask: torch.Tensor
    forget_classes: tuple[int, ...] = field(default=())
    nonmember_images: torch.Tensor | None = None
    nonmember_labels: torch.Tensor | None = None

    # Selected once per task and then shared, so that no method's timed seconds include copying the split.
    @functools.cached_property
    def forget(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of the train items to forget."""
        return self.train_images[self.forget_mask], self.train_labels[self.forget_mask]

    @functools.cached_property
    def retain(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels) of the train items to keep."""
        return self.train_images[~self.forget_mask], self.train_labels[~self.forget_mask]

    def __post_init__(self) -> None:
        self.forget, self.retain  # noqa: B018 -- select both now, outside any method's timing


def class_request(train_images: torch.Tensor, train_labels: torch.Tensor, test_images: torch.Tensor,
                  test_labels: torch.Tensor, classes: Sequence[int], num_classes: int) -> ClassifierTask:
    """A task that forgets every train item of `classes` (adu3010's "forget the digit 5")."""
    forget_classes = tuple(sorted({int(c) for c in classes}))
    if not forget_classes or min(forget_classes) < 0 or max(forget_classes) >= num_classes:
        raise ValueError(f"classes: got {list(classes)}, expected at least one class in [0, {num_classes})")
    mask = torch.isin(train_labels, torch.tensor(forget_classes, dtype=train_labels.dtype))
    return ClassifierTask(train_images, train_labels, test_images, test_labels, num_classes, mask, forget_classes)


def generated_class_request(images: torch.Tensor, labels: torch.Tensor, heldout_images: torch.Tensor,
                            heldout_labels: torch.Tensor, test_images: torch.Tensor, test_labels: torch.Tensor,
                            classes: Sequence[int], num_classes: int) -> ClassifierTask:
    """Setting (b): train items are a generator's samples with their pseudo-labels (`fedgan.evaluation.forgetting.
    pseudo_label`); forget = those labelled as a forgotten class; measured on real test images.

    The attack's non-members are a second, held-out draw of the same generator (`heldout_*`, labelled the same way):
    the same distribution, never trained on. Real test digits would not do: they differ from generated ones in ways
    a loss attack picks up whatever the classifier forgot.
    """
    task = class_request(images, labels, test_images, test_labels, classes, num_classes)
    if not task.forget_mask.any():
        raise ValueError(f"classes: no sample is labelled {list(task.forget_classes)}; nothing to forget")
    return dataclasses.replace(task, nonmember_images=heldout_images, nonmember_labels=heldout_labels)


def item_request(train_images: torch.Tensor, train_labels: torch.Tensor, test_images: torch.Tensor,
                 test_labels: torch.Tensor, indices: Sequence[int] | torch.Tensor, num_classes: int) -> ClassifierTask:
    """A task that forgets the train items at `indices` (their classes stay)."""
    mask = torch.zeros(len(train_labels), dtype=torch.bool)
    mask[torch.as_tensor(indices, dtype=torch.int64)] = True
    if not mask.any():
        raise ValueError("indices: got none, expected at least one train item to forget")
    return ClassifierTask(train_images, train_labels, test_images, test_labels, num_classes, mask)


class MLPClassifier(nn.Sequential):
    """C·H·W → 256 → 128 → num_classes with ReLU (784-256-128-10 on MNIST, a small feed-forward net as in the seed
    adu3010/machine-unlearning); each ReLU is its own module, so a forgetting layer can follow each one."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, hidden: Sequence[int] = (256, 128)
                 ) -> None:
        dims = [image_shape[0] * image_shape[1] * image_shape[2], *hidden]
        layers: list[nn.Module] = [nn.Flatten()]  # (N, C·H·W)
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]  # (N, b)
        layers.append(nn.Linear(dims[-1], num_classes))  # (N, num_classes)
        super().__init__(*layers)


def build_mlp_classifier(image_shape: tuple[int, int, int], num_classes: int, *, seed: int = 0,
                         hidden: Sequence[int] = (256, 128)) -> MLPClassifier:
    """An `MLPClassifier` initialised from `seed` in a forked RNG (the caller's random stream is left alone)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "classifier-init"))
        return MLPClassifier(image_shape, num_classes, hidden)


def downstream_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, *, epochs: int,
                          seed: int = 0) -> nn.Module:
    """The proof's downstream classifier (`fedgan.evaluation.forgetting.downstream_accuracy`'s recipe: an
    `EvaluatorNet` by `train_evaluator_net`), trained on `images` and `labels`, in eval mode (setting (b))."""
    return train_evaluator_net(images.float(), labels.cpu().to(torch.int64), num_classes, seed=seed,
                               epochs=epochs).eval()


# ----------------------------------------------------------------------------------------------------------------
# Training helpers
# ----------------------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _seeded(seed: int, *tags: object) -> Iterator[torch.Generator]:
    """A forked, seeded global RNG (initialisation, dropout) and a CPU generator (orders, noise) for one stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, *tags))
        yield torch.Generator().manual_seed(derive_seed(seed, *tags, "generator"))


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class ShuffledBatches:
    """Re-iterable (images, labels) batches on the model's device; each pass draws a new order from `generator`."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, generator: torch.Generator,
                 device: torch.device) -> None:
        if len(images) == 0:
            raise ValueError("images: got none, expected at least one item to train on")
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.generator, self.device = generator, device

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in torch.randperm(len(self.images), generator=self.generator).split(self.batch_size):
            yield self.images[batch].to(self.device), self.labels[batch].to(self.device)


def cross_entropy_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy of `model` on an (images, labels) batch (the rehearsal loss `fnn_unlearn` takes)."""
    images, labels = batch
    return F.cross_entropy(model(images), labels)


def complement_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """−log(1 − p_y(x)), batch mean: large while the model gives an item its own label, zero once it gives it none.
    Unlike a uniform target (p_y = 1/K, where the argmax can still be y) it leaves the label unpredicted, and its
    gradient fades as p_y → 0, so it does not push the items anywhere in particular."""
    images, labels = batch
    log_probs = F.log_softmax(model(images), dim=1)
    own = log_probs.gather(1, labels[:, None]).squeeze(1)
    return -torch.log1p(-own.exp().clamp(max=1 - 1e-6)).mean()


def _uniform_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """KL(uniform ‖ softmax(f(x))), batch mean: zero when every class gets probability 1/K."""
    log_probs = F.log_softmax(model(batch[0]), dim=1)
    uniform = torch.full_like(log_probs, 1.0 / log_probs.shape[1])
    return F.kl_div(log_probs, uniform, reduction="batchmean")


def _fit(model: nn.Module, batches: ShuffledBatches, *, epochs: int, lr: float,
         loss_fn: Callable[[nn.Module, Any], torch.Tensor] = cross_entropy_loss, max_steps: int | None = None) -> int:
    """Adam at `lr` over `epochs` passes of `batches` (or until `max_steps` steps), in train mode; the steps taken."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    steps = 0
    for _ in range(epochs):
        for batch in batches:
            if max_steps is not None and steps >= max_steps:
                return steps
            loss = loss_fn(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += 1
    return steps


def train_classifier(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, seed: int = 0,
                     options: ClassifierUnlearningOptions | None = None) -> nn.Module:
    """Train `model` in place with Adam and cross-entropy (`options.epochs`, `lr`, `batch_size`); returns it in eval
    mode. The shuffling is seeded and the global RNG forked, so the same seed gives the same weights (on the CPU)."""
    o = options or ClassifierUnlearningOptions()
    with _seeded(seed, "classifier-training") as generator:
        _fit(model, ShuffledBatches(images, labels, o.batch_size, generator, _device(model)), epochs=o.epochs, lr=o.lr)
    return model.eval()


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """The model in eval mode with no parameter gradients, for optimising inputs against it (UNSIR's noise)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


# ----------------------------------------------------------------------------------------------------------------
# Methods: (model, task, options, generator) -> (unlearned model, details); `model` may be changed in place
# ----------------------------------------------------------------------------------------------------------------

MethodResult = tuple[nn.Module, dict[str, Any]]
ClassifierMethod = Callable[[nn.Module, ClassifierTask, ClassifierUnlearningOptions, torch.Generator], MethodResult]
CLASSIFIER_METHODS: Registry[ClassifierMethod] = Registry("classifier unlearning method")


@CLASSIFIER_METHODS.register("original")
def original(model: nn.Module, task: ClassifierTask, o: ClassifierUnlearningOptions,
             generator: torch.Generator) -> MethodResult:
    """No unlearning: the trained model as it is (the "before" row every method is read against)."""
    return model, {}


@CLASSIFIER_METHODS.register("retrain")
def retrain(model: nn.Module, task: ClassifierTask, o: ClassifierUnlearningOptions,
            generator: torch.Generator) -> MethodResult:
    """The reference: the same architecture, re-initialised (every `reset_parameters`), trained on retain only."""
    fresh = copy.deepcopy(model)
    for module in fresh.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    steps = _fit(fresh, ShuffledBatches(*task.retain, o.batch_size, generator, _device(fresh)), epochs=o.epochs,
                 lr=o.lr)
    return fresh, {"epochs": o.epochs, "train_batches": steps}


@CLASSIFIER_METHODS.register("finetune")
def finetune(model: nn.Module, task: ClassifierTask, o: ClassifierUnlearningOptions,
             generator: torch.Generator) -> MethodResult:
    """`finetune_steps` Adam steps on retained data only (catastrophic forgetting as unlearning)."""
    batches = ShuffledBatches(*task.retain, o.batch_size, generator, _device(model))
    epochs = -(-o.finetune_steps * o.batch_size // len(batches.images))  # enough passes for the steps
    steps = _fit(model, batches, epochs=epochs, lr=o.lr, max_steps=o.finetune_steps)
    return model, {"steps": o.finetune_steps, "train_batches": steps}


@CLASSIFIER_METHODS.register("fnn")
def fnn(model: nn.Module, task: ClassifierTask, o: ClassifierUnlearningOptions,
        generator: torch.Generator) -> MethodResult:
    """Forgetting layers of `fnn_type` after every ReLU, ranked on the forget items, then `fnn_unlearn` with
    cross-entropy rehearsal on retained data (RECONSTRUCTION of arXiv 2410.22374; see fedgan.forgetting_layers).
    The unlearned model keeps its forgetting layers."""
    device = _device(model)
    forget_images, forget_labels = task.forget
    layered, layers = insert_forgetting_layers(
        model, o.fnn_type, forget_images[: o.batch_size].to(device),
        tau=o.fnn_tau, tau_min=o.fnn_tau_min, tau_max=o.fnn_tau_max, fraction=o.fnn_fraction)
    stop = None
    if o.fnn_stop_accuracy is not None:
        def stop() -> bool:
            return accuracy(layered, forget_images, forget_labels) <= o.fnn_stop_accuracy
    rehearsal = cross_entropy_loss
    if o.fnn_forget_weight > 0:
        rehearsal = _with_forget_term(ShuffledBatches(*task.forget, o.batch_size, generator, device),
                                      o.fnn_forget_weight)
    run = fnn_unlearn(
        layered, layers, ShuffledBatches(*task.retain, o.batch_size, generator, device), rehearsal,
        iterations=o.fnn_iterations, rehearse_steps=o.fnn_rehearse_steps, lr=o.fnn_lr,
        forget_inputs=[x.to(device) for x in forget_images.split(EVAL_BATCH_SIZE)], stop=stop)
    batches_per_step = 2 if o.fnn_forget_weight > 0 else 1  # the forget term adds a forget batch to each step
    return layered.eval(), {"fnn_type": o.fnn_type, "layers": len(layers), "iterations": run.iterations,
                            "stopped_early": run.stopped_early, "forget_weight": o.fnn_forget_weight,
                            "train_batches": run.iterations * o.fnn_rehearse_steps * batches_per_step}


def _with_forget_term(forget_batches: ShuffledBatches, weight: float
                      ) -> Callable[[nn.Module, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """The rehearsal loss plus `weight` × `complement_loss` on the next forget batch (passes repeat endlessly)."""
    forget = cycle_batches(forget_batches)

    def loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return cross_entropy_loss(model, batch) + weight * complement_loss(model, next(forget))
    return loss


def _fnn_of_type(layer_type: str) -> ClassifierMethod:
    """`fnn` with its layer type fixed, whatever `fnn_type` says (one scenario compares all four)."""
    def method(model: nn.Module, task: ClassifierTask, o: ClassifierUnlearningOptions,
               generator: torch.Generator) -> MethodResult:
        return fnn(model, task, dataclasses.replace(o, fnn_type=layer_type), generator)

    method.__doc__ = f"`fnn` with {layer_type} forgetting layers (RECONSTRUCTION; see `fnn`)."
    return method


CLASSIFIER_METHODS.add("fnn-fixed-all", _fnn_of_type("fixed-all"))
CLASSIFIER_METHODS.add("fnn-fixed-ranked", _fnn_of_type("fixed-ranked"))
CLASSIFIER_METHODS.add("fnn-varying-all", _fnn_of_type("varying-all"))
CLASSIFIER_METHODS.add("fnn-varying-ranked", _fnn_of_type("varying-ranked"))


def error_maximising_noise(model: nn.Module, label: int, image_shape: Sequence[int], o: ClassifierUnlearningOptions,
                           generator: torch.Generator) -> torch.Tensor:
    """UNSIR step 1 (arXiv 2111.08947): noise N (B, C, H, W) from N(0, 1) that maximises the frozen model's loss for
    `label`: minimise −CE(f(N), c) + λ·mean_b ‖N_b‖² with Adam, the model in eval mode."""
    device = _device(model)
    noise = torch.randn((o.noise_batch, *image_shape), generator=generator).to(device).requires_grad_()
    target = torch.full((o.noise_batch,), label, dtype=torch.int64, device=device)
    optimizer = torch.optim.Adam([noise], lr=o.noise_lr)
    with _frozen(model):
        for _ in range(o.noise_steps):
            loss = -F.cross_entropy(model(noise), target) + o.noise_l2 * noise.pow(2).flatten(1).sum(1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return noise.detach().cpu()


def _retain_subset(task: ClassifierTask, per_class: int, generator: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `per_class` random retained items of each class (UNSIR's small retain sample)."""
    images, labels = task.retain
    picks = []
    for c in labels.unique().tolist():
        members = (labels == c).nonzero().squeeze(1)
        picks.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    chosen = torch.cat(picks).sort().values
    return images[chosen], labels[chosen]


def impair_set(images: torch.Tensor, labels: torch.Tensor, noises: dict[int, torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """UNSIR's impair data: the retain subset plus every noise image, each labelled with the class it was made
    for (the official notebook labels every noise tensor 0, ALGORITHMS.md section 6)."""
    noise_labels = [torch.full((len(noise),), c, dtype=labels.dtype) for c, noise in noises.items()]
    return torch.cat([images, *noises.values()]), torch.cat([labels, *noise_labels])


@CLASSIFIER_METHODS.register("noise")
def noise(model: nn.Module, task: ClassifierTask, o: ClassifierUnlearningOptions,
          generator: torch.Generator) -> MethodResult:
    """UNSIR (arXiv 2111.08947): noise per forget class, each labelled with its OWN class (the notebook labels all
    0); impair one pass on retain-subset ∪ noise at `impair_lr`; repair one pass on the retain subset at `repair_lr`.
    Zero-glance: forget items are never trained on. On an item request the noise targets the items' classes."""
    classes = task.forget_classes or tuple(task.forget[1].unique().tolist())
    image_shape = tuple(task.train_images.shape[1:])
    noises = {c: error_maximising_noise(model, c, image_shape, o, generator) for c in classes}
    subset_images, subset_labels = _retain_subset(task, o.noise_retain_per_class, generator)
    impair_images, impair_labels = impair_set(subset_images, subset_labels, noises)
    device = _device(model)
    impair = _fit(model, ShuffledBatches(impair_images, impair_labels, o.batch_size, generator, device),
                  epochs=1, lr=o.impair_lr)
    repair = _fit(model, ShuffledBatches(subset_images, subset_labels, o.batch_size, generator, device),
                  epochs=1, lr=o.repair_lr)
    return model, {"noise_classes": list(classes), "retain_subset": len(subset_labels),
                   "train_batches": o.noise_steps * len(classes) + impair + repair}


@CLASSIFIER_METHODS.register("uniform")
def uniform(model: nn.Module, task: ClassifierTask, o: ClassifierUnlearningOptions,
            generator: torch.Generator) -> MethodResult:
    """adu3010's method: `uniform_epochs` passes towards the uniform output (KL to uniform) on the forget items,
    then `relearn_epochs` passes of cross-entropy on retained data; `uniform_steps` / `relearn_steps` cap either
    phase at that many steps (ours: the seed's recipe costs about as much as a small classifier's retrain)."""
    device = _device(model)
    towards = _fit(model, ShuffledBatches(*task.forget, o.batch_size, generator, device),
                   epochs=o.uniform_epochs, lr=o.uniform_lr, loss_fn=_uniform_loss, max_steps=o.uniform_steps)
    relearn = _fit(model, ShuffledBatches(*task.retain, o.batch_size, generator, device),
                   epochs=o.relearn_epochs, lr=o.lr, max_steps=o.relearn_steps)
    return model, {"uniform_epochs": o.uniform_epochs, "relearn_epochs": o.relearn_epochs,
                   "uniform_steps": o.uniform_steps, "relearn_steps": o.relearn_steps,
                   "train_batches": towards + relearn}


# ----------------------------------------------------------------------------------------------------------------
# Measurement and comparison
# ----------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def _per_example_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each item (N,), eval mode, batched; the membership attack's signal."""
    model.eval()
    device = _device(model)
    losses = [F.cross_entropy(model(x.to(device)), y.to(device), reduction="none").cpu()
              for x, y in zip(images.split(EVAL_BATCH_SIZE), labels.split(EVAL_BATCH_SIZE))]
    return torch.cat(losses) if losses else torch.empty(0)


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of `images` whose argmax logit is the label (eval mode); NaN for no images."""
    if len(labels) == 0:
        return float("nan")
    model.eval()
    device = _device(model)
    correct = sum(int((model(x.to(device)).argmax(1).cpu() == y).sum())
                  for x, y in zip(images.split(EVAL_BATCH_SIZE), labels.split(EVAL_BATCH_SIZE)))
    return correct / len(labels)


def membership_attack(model: nn.Module, task: ClassifierTask, max_items: int, generator: torch.Generator
                      ) -> dict[str, float | int]:
    """Loss-threshold attack (lower loss = member; score −loss): forget items vs non-members (the task's pool, else
    its test items) of the same classes, drawn at one size. AUC near 0.5 / TPR near 1 % means the forget items look
    like data the model never saw."""
    forget_images, forget_labels = task.forget
    pool_images, pool_labels = ((task.test_images, task.test_labels) if task.nonmember_images is None
                                else (task.nonmember_images, task.nonmember_labels))
    same_classes = torch.isin(pool_labels, forget_labels.unique())
    nonmember_images, nonmember_labels = pool_images[same_classes], pool_labels[same_classes]
    size = min(len(forget_labels), len(nonmember_labels), max_items)
    if size == 0:
        raise ValueError("membership attack: no non-member shares the forget items' classes")
    f = torch.randperm(len(forget_labels), generator=generator)[:size]
    n = torch.randperm(len(nonmember_labels), generator=generator)[:size]
    forget_scores = -_per_example_loss(model, forget_images[f], forget_labels[f])
    nonmember_scores = -_per_example_loss(model, nonmember_images[n], nonmember_labels[n])
    return {"mia_auc": roc_auc(forget_scores, nonmember_scores),
            "mia_tpr_at_1pct_fpr": tpr_at_fpr(forget_scores, nonmember_scores, MIA_FPR), "mia_size": size}


def measure(model: nn.Module, task: ClassifierTask, *, seed: int = 0,
            options: ClassifierUnlearningOptions | None = None) -> dict[str, Any]:
    """Forget accuracy (class request: the forget classes' test images; item request: the forget items), accuracy
    on the forget items themselves, retained accuracy (test items of retained classes) and the membership attack."""
    o = options or ClassifierUnlearningOptions()
    forget_images, forget_labels = task.forget
    forgotten = torch.isin(task.test_labels, torch.tensor(task.forget_classes, dtype=task.test_labels.dtype))
    forget_accuracy = (accuracy(model, task.test_images[forgotten], task.test_labels[forgotten])
                       if task.forget_classes else accuracy(model, forget_images, forget_labels))
    with _seeded(seed, "classifier-unlearning", "attack") as generator:
        attack = membership_attack(model, task, o.mia_max_items, generator)
    return {
        "forget_accuracy": forget_accuracy,
        "forget_items_accuracy": accuracy(model, forget_images, forget_labels),
        "retained_accuracy": accuracy(model, task.test_images[~forgotten], task.test_labels[~forgotten]),
        **attack,
    }


def compare(methods: Sequence[str], model: nn.Module, task: ClassifierTask, *, seed: int = 0,
            options: ClassifierUnlearningOptions | None = None) -> list[dict[str, Any]]:
    """Run each named method from its own deep copy of the trained `model` and measure all the same way.

    One row per method: `method`, `request` ("class" or "items"), `seconds` (the method's wall time; the median of
    `timing_repeats` runs, each listed in `seconds_runs`), the `measure` keys and the method's details. Each
    method's randomness comes from (seed, method name), so the same seed gives the same numbers (on the CPU;
    `seconds` aside) whatever else is in `methods`.
    """
    o = options or ClassifierUnlearningOptions()
    rows = []
    for name in methods:
        runs = [_timed_run(name, model, task, o, seed) for _ in range(o.timing_repeats)]
        unlearned, details, _ = runs[0]
        seconds = [run[2] for run in runs]
        rows.append({"method": name, "request": "class" if task.forget_classes else "items",
                     "seconds": statistics.median(seconds), "seconds_runs": seconds,
                     **measure(unlearned, task, seed=seed, options=o), **details})
    return rows


def _timed_run(name: str, model: nn.Module, task: ClassifierTask, o: ClassifierUnlearningOptions, seed: int
               ) -> tuple[nn.Module, dict[str, Any], float]:
    """One run of method `name` from a deep copy of `model` on its (seed, name) stream: (model, details, seconds)."""
    candidate = copy.deepcopy(model)
    with _seeded(seed, "classifier-unlearning", name) as generator:
        start = time.perf_counter()
        unlearned, details = CLASSIFIER_METHODS[name](candidate, task, o, generator)
        return unlearned, details, time.perf_counter() - start


def compare_with_reference(methods: Sequence[str], model: nn.Module, task: ClassifierTask, reference: nn.Module,
                           reference_seconds: float, *, seed: int = 0,
                           options: ClassifierUnlearningOptions | None = None) -> list[dict[str, Any]]:
    """`compare`, except that the `retrain` row is the given `reference` model, measured the same way, at the cost
    `reference_seconds`. For a task whose gold standard is not a classifier retrained on `task.retain`: setting
    (b)'s is the downstream classifier of the retrained federation, which costs the federation's retrain plus that
    classifier's training. Every other row is exactly `compare`'s (each method's stream is (seed, name))."""
    o = options or ClassifierUnlearningOptions()
    rows = []
    for name in methods:
        if name != "retrain":
            rows += compare([name], model, task, seed=seed, options=o)
            continue
        rows.append({"method": "retrain", "request": "class" if task.forget_classes else "items",
                     "seconds": reference_seconds, **measure(reference, task, seed=seed, options=o),
                     "reference": "given"})
    return rows
