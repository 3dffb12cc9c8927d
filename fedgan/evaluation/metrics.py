"""GAN metrics seen through the evaluator (docs/methods.md, Measuring a GAN without downloads), behind a registry.

FID_LeNet and KID use torchmetrics with the evaluator's penultimate features in place of Inception (the numbers are
not comparable to Inception-FID); the class histogram, class coverage, Inception-Score analogue and label fidelity
use its predictions. Every registered metric takes one `MetricInputs` and returns a flat dict of JSON-ready values,
so `evaluate_generator_samples` just merges them; adding a metric is one decorated function.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from fedgan.errors import FedganError
from fedgan.evaluation.classifier import Evaluator
from fedgan.registry import Registry

MetricValue = float | list[float]
KID_SUBSETS = 100


class EvaluatorFeatures(nn.Module):
    """Adapter that lets torchmetrics call the evaluator as its feature extractor.

    `num_features` spares torchmetrics its dummy forward pass; features come back float64 on the CPU, where
    torchmetrics keeps its states, so FID's covariance and KID's polynomial kernel are accumulated in float64.
    """

    def __init__(self, evaluator: Evaluator) -> None:
        super().__init__()
        self.evaluator = evaluator  # a plain dataclass, not a submodule: torchmetrics must not move or train it
        self.num_features = evaluator.feature_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [-1, 1] -> (N, feature_dim) float64."""
        return self.evaluator.features(images).detach().to("cpu", torch.float64)


def _require_samples(images: torch.Tensor, name: str, minimum: int) -> None:
    if len(images) < minimum:
        raise FedganError(name, f"got {len(images)} images", f"pass at least {minimum}")


def fid_lenet(evaluator: Evaluator, real_images: torch.Tensor, fake_images: torch.Tensor) -> float:
    """FID_LeNet: Frechet distance between Gaussians fitted to evaluator features of real and fake images."""
    _require_samples(real_images, "real_images", 2)
    _require_samples(fake_images, "fake_images", 2)
    metric = FrechetInceptionDistance(feature=EvaluatorFeatures(evaluator))
    metric.update(real_images, real=True)
    metric.update(fake_images, real=False)
    # Eigenvalues of a near-singular covariance product can dip a hair below 0: FID is a distance, clamp it.
    return max(float(metric.compute()), 0.0)


def kid(
    evaluator: Evaluator,
    real_images: torch.Tensor,
    fake_images: torch.Tensor,
    *,
    subset_size: int = 1000,
    subsets: int = KID_SUBSETS,
    seed: int = 0,
) -> tuple[float, float]:
    """KID (mean, std over `subsets` random subsets): unbiased polynomial-kernel MMD^2 on evaluator features.

    `subset_size` shrinks to the smaller sample count, so small evaluation sets still work; the subset draws use
    a forked RNG seeded with `seed`, so the value is reproducible and the caller's random state untouched.
    """
    _require_samples(real_images, "real_images", 2)
    _require_samples(fake_images, "fake_images", 2)
    size = min(subset_size, len(real_images), len(fake_images))
    with warnings.catch_warnings():
        # torchmetrics warns that KID keeps all features in memory; that is intended here.
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(feature=EvaluatorFeatures(evaluator), subsets=subsets, subset_size=size)
    metric.update(real_images, real=True)
    metric.update(fake_images, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def class_histogram(evaluator: Evaluator, fake_images: torch.Tensor, num_classes: int) -> list[float]:
    """Share of `fake_images` the evaluator assigns to each class (sums to 1; all zeros for no images)."""
    counts = torch.bincount(evaluator.predict(fake_images).cpu(), minlength=num_classes).double()
    return (counts / max(len(fake_images), 1)).tolist()


def class_coverage(histogram: Sequence[float], threshold: float | None = None) -> float:
    """Fraction of classes whose share of generated samples is at least `threshold`.

    Default threshold: a tenth of the uniform share, 0.1 / num_classes (1 % for 10 classes). A class the generator
    has dropped still gets a trickle of evaluator mistakes; the tenth keeps those from counting as coverage, while
    a class produced at a tenth of its fair rate still counts.
    """
    if not histogram:
        return 0.0
    if threshold is None:
        threshold = 0.1 / len(histogram)
    return sum(share >= threshold for share in histogram) / len(histogram)


def inception_score_lenet(evaluator: Evaluator, fake_images: torch.Tensor) -> float:
    """Inception-Score analogue exp(E_x KL(p(y|x) || p(y))) from the evaluator's softmax (one split).

    Ranges from 1 (every sample the same class mix) to num_classes (confident and evenly spread).
    """
    _require_samples(fake_images, "fake_images", 1)
    log_p_y_given_x = torch.log_softmax(evaluator.logits(fake_images).double(), dim=1)
    log_p_y = torch.logsumexp(log_p_y_given_x, dim=0) - math.log(len(fake_images))  # log of the mean softmax
    kl = (log_p_y_given_x.exp() * (log_p_y_given_x - log_p_y)).sum(dim=1)
    return float(kl.mean().exp())


def label_fidelity(evaluator: Evaluator, fake_images: torch.Tensor, asked_labels: torch.Tensor) -> float:
    """Share of conditional samples the evaluator classifies as the label they were generated for."""
    _require_samples(fake_images, "fake_images", 1)
    if asked_labels.shape != (len(fake_images),):
        raise FedganError("fake_labels", f"got shape {tuple(asked_labels.shape)}", f"expected ({len(fake_images)},)")
    return float((evaluator.predict(fake_images).cpu() == asked_labels.cpu()).double().mean())


# ---- registry ----

@dataclass(frozen=True)
class MetricInputs:
    """Everything a registered metric may look at; each metric uses what it needs."""

    evaluator: Evaluator
    real_images: torch.Tensor
    fake_images: torch.Tensor
    num_classes: int
    fake_labels: torch.Tensor | None = None
    kid_subset_size: int = 1000


MetricFn = Callable[[MetricInputs], dict[str, MetricValue]]
METRICS: Registry[MetricFn] = Registry("metric")


def register_metric(name: str) -> Callable[[MetricFn], MetricFn]:
    """Decorator: make `fn` selectable as `name` in `evaluate_generator_samples`."""
    return METRICS.register(name)


@register_metric("fid_lenet")
def _fid_metric(inputs: MetricInputs) -> dict[str, MetricValue]:
    return {"fid_lenet": fid_lenet(inputs.evaluator, inputs.real_images, inputs.fake_images)}


@register_metric("kid")
def _kid_metric(inputs: MetricInputs) -> dict[str, MetricValue]:
    mean, std = kid(inputs.evaluator, inputs.real_images, inputs.fake_images, subset_size=inputs.kid_subset_size)
    return {"kid": mean, "kid_std": std}


@register_metric("class_histogram")
def _histogram_metric(inputs: MetricInputs) -> dict[str, MetricValue]:
    return {"class_histogram": class_histogram(inputs.evaluator, inputs.fake_images, inputs.num_classes)}


@register_metric("class_coverage")
def _coverage_metric(inputs: MetricInputs) -> dict[str, MetricValue]:
    histogram = class_histogram(inputs.evaluator, inputs.fake_images, inputs.num_classes)
    return {"class_coverage": class_coverage(histogram)}


@register_metric("inception_score")
def _inception_score_metric(inputs: MetricInputs) -> dict[str, MetricValue]:
    return {"inception_score": inception_score_lenet(inputs.evaluator, inputs.fake_images)}


@register_metric("label_fidelity")
def _label_fidelity_metric(inputs: MetricInputs) -> dict[str, MetricValue]:
    if inputs.fake_labels is None:
        raise FedganError("metrics", "label_fidelity needs the labels the samples were generated for",
                          "pass fake_labels (conditional generators only)")
    return {"label_fidelity": label_fidelity(inputs.evaluator, inputs.fake_images, inputs.fake_labels)}


DEFAULT_METRICS = ("fid_lenet", "kid", "class_histogram", "class_coverage", "inception_score")


def evaluate_generator_samples(
    evaluator: Evaluator,
    real_images: torch.Tensor,
    fake_images: torch.Tensor,
    num_classes: int,
    fake_labels: torch.Tensor | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    kid_subset_size: int = 1000,
) -> dict[str, MetricValue]:
    """Run the named metrics on generated samples and merge their results into one flat, JSON-ready dict.

    `label_fidelity` is added automatically when `fake_labels` is given (conditional generators), and is
    unavailable without it.
    """
    unknown = [name for name in metrics if name not in METRICS]
    if unknown:
        raise FedganError("metrics", f"unknown {unknown}", f"choose from {list(METRICS.names())}")
    names = list(dict.fromkeys(metrics))  # drop repeats, keep order
    if fake_labels is not None and "label_fidelity" not in names:
        names.append("label_fidelity")
    inputs = MetricInputs(evaluator, real_images, fake_images, num_classes, fake_labels, kid_subset_size)
    results: dict[str, MetricValue] = {}
    for name in names:
        results.update(METRICS[name](inputs))
    return results
