"""Per-example membership attack on a site's discriminator, calibrated with reference discriminators (LiRA).

Engine-free: tensors and a discriminator factory in, numpy arrays and JSON-ready dicts out. It sits beside the
population attack of `fedgan.evaluation.forgetting` in the proof of forgetting: that attack thresholds the raw
logit D(x) with one cut for every item, so an item that any discriminator would score high (an easy, typical image)
looks like a member whether or not it was trained on. This attack asks, item by item, whether the attacked
logit looks more like the logit of a discriminator that trained on x than of one that did not.

The project's calibration, a reading of the likelihood-ratio attack (LiRA) of Carlini et al., "Membership
Inference Attacks From First Principles" (arXiv 2112.03570), adapted to a GAN discriminator:

1. Targets. One array of candidate images (the caller mixes forgotten items F, retained members R and
   non-members N) with optional labels for a conditional D.
2. References. K (even) fresh discriminators; every target is IN (in the real data) for exactly K/2 of them,
   chosen per target by a seeded shuffle. Reference k trains for `steps` Adam steps on the non-saturating D loss
   softplus(-D(real)) + softplus(D(fake)), real batches drawn from `population` (base data that is never a target)
   plus its IN targets, fake batches from one fixed tensor of generated images (the federation's current G,
   sampled once). Seeded: the same seed gives the same logits bit for bit on the CPU.
3. Standardisation (our choice, not the paper's). Each model's logits are centred and scaled by their mean and
   std over the targets, because the attacked D trained long against a moving G and the references trained briefly
   against a fixed G, so their raw logits live on different scales; only a model's ranking of the targets, not its
   scale, is compared.
4. Score. With K small, the spread is fixed (global): for target x, mu_in(x) / mu_out(x) is the mean standardised
   logit of the references that held / did not hold x, and sigma_in / sigma_out the pooled std of the residuals
   (logit minus its target's mean) over all IN / OUT cells. The online score is the log-likelihood ratio
   log N(o; mu_in, sigma_in) - log N(o; mu_out, sigma_out) of the attacked D's standardised logit o(x); the offline
   score, from OUT references only, is the z-score (o - mu_out) / sigma_out. Higher means "member" in both.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedgan.evaluation.forgetting import resolvable_tpr, roc_auc

# Reported operating points; the 0.1 % one needs at least 1000 non-members to mean anything (`resolvable_tpr`).
LIRA_FPRS = {"0.1pct": 0.001, "1pct": 0.01}
LOGIT_BATCH_SIZE = 256


@dataclass(frozen=True)
class ReferenceLogits:
    """What the reference discriminators say about the targets.

    `logits` (K, N): raw logit of reference k on target n; `in_mask` (K, N) bool: whether target n was in
    reference k's real data; `steps`: the D steps each reference trained for (recorded in the attack summary).
    """

    logits: np.ndarray
    in_mask: np.ndarray
    steps: int

    def __post_init__(self) -> None:
        if self.logits.ndim != 2:
            raise ValueError(f"logits: got shape {self.logits.shape}, expected (references, targets)")
        if self.in_mask.shape != self.logits.shape or self.in_mask.dtype != np.bool_:
            raise ValueError(f"in_mask: got {self.in_mask.dtype} {self.in_mask.shape}, "
                             f"expected bool {self.logits.shape}")
        if not np.all(np.isfinite(self.logits)):
            raise ValueError("logits: got non-finite values; a diverged reference cannot calibrate the attack")


# ---- reference training ----

def balanced_in_mask(count: int, target_count: int, rng: np.random.Generator) -> np.ndarray:
    """(count, target_count) bool mask with exactly count/2 True per column, each column shuffled independently.

    Balanced per target (rather than a coin flip per cell) so every target gets as many IN as OUT references,
    which a small K cannot afford to leave to chance.
    """
    half = np.arange(count) < count // 2
    return rng.permuted(np.repeat(half[:, None], target_count, axis=1), axis=0)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN D loss, softplus(-D(real)) + softplus(D(fake)), averaged over each batch."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def train_discriminator(
    discriminator: nn.Module,
    real_images: torch.Tensor,
    real_labels: torch.Tensor | None,
    fake_images: torch.Tensor,
    fake_labels: torch.Tensor | None,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    betas: tuple[float, float],
    generator: torch.Generator,
) -> nn.Module:
    """Train `discriminator` in place for `steps` Adam steps against a fixed set of fakes; returns it.

    Each step draws `batch_size` reals and as many fakes with replacement, the indices from the CPU `generator`,
    so a run is reproducible wherever the model lives.
    """
    device = next(discriminator.parameters()).device
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=betas)
    discriminator.train()
    for _ in range(steps):
        real_index = torch.randint(len(real_images), (batch_size,), generator=generator)
        fake_index = torch.randint(len(fake_images), (batch_size,), generator=generator)
        real = discriminator(real_images[real_index].to(device), _pick(real_labels, real_index, device))
        fake = discriminator(fake_images[fake_index].to(device), _pick(fake_labels, fake_index, device))
        # ---- update D ----
        optimizer.zero_grad(set_to_none=True)
        discriminator_loss(real, fake).backward()
        optimizer.step()
    return discriminator


def _pick(labels: torch.Tensor | None, index: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    """labels[index] on `device`, or None for an unconditional discriminator."""
    return None if labels is None else labels[index].to(device)


@torch.no_grad()
def discriminator_logits(
    discriminator: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None
) -> np.ndarray:
    """float64 logits (N,) of `discriminator` in eval mode on `images`, batched; what the attack compares."""
    device = next(discriminator.parameters()).device
    discriminator.eval()
    chunks = []
    for start in range(0, len(images), LOGIT_BATCH_SIZE):
        index = torch.arange(start, min(start + LOGIT_BATCH_SIZE, len(images)))
        chunks.append(discriminator(images[index].to(device), _pick(labels, index, device)).reshape(-1))
    return torch.cat(chunks).to("cpu", torch.float64).numpy()


def _check_images(
    images: torch.Tensor, labels: torch.Tensor | None, names: tuple[str, str], like: torch.Tensor,
    allow_empty: bool = False,
) -> None:
    """ValueError unless `images` is a batch (non-empty unless `allow_empty`) shaped like `like` and `labels` (if
    any) is (len(images),).

    `names` are the argument names of the images and their labels, for the message.
    """
    images_name, labels_name = names
    if len(images) == 0 and not allow_empty:
        raise ValueError(f"{images_name}: got no images, expected at least one")
    if images.shape[1:] != like.shape[1:]:
        raise ValueError(f"{images_name}: got images of shape {tuple(images.shape[1:])}, "
                         f"expected {tuple(like.shape[1:])} like the targets")
    if labels is not None and tuple(labels.shape) != (len(images),):
        raise ValueError(f"{labels_name}: got shape {tuple(labels.shape)}, expected ({len(images)},)")


def _check_reference_inputs(
    population: torch.Tensor,
    population_labels: torch.Tensor | None,
    targets: torch.Tensor,
    target_labels: torch.Tensor | None,
    fake: torch.Tensor,
    fake_labels: torch.Tensor | None,
    count: int,
    steps: int,
    batch_size: int,
) -> None:
    """One clear ValueError per bad argument of `train_references`."""
    if count < 4 or count % 2:
        # Two references leave each target one IN and one OUT model: no spread to estimate a sigma from.
        raise ValueError(f"count: got {count}, expected an even number of references, at least 4")
    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps, batch_size: got {steps}, {batch_size}, expected steps >= 0 and batch_size >= 1")
    if len(targets) < 2:
        raise ValueError(f"targets: got {len(targets)} images, expected at least two (logits are standardised)")
    _check_images(targets, target_labels, ("targets", "target_labels"), targets)
    _check_images(population, population_labels, ("population", "population_labels"), targets, allow_empty=True)
    _check_images(fake, fake_labels, ("fake", "fake_labels"), targets)
    if (population_labels is None) != (target_labels is None) or (target_labels is None) != (fake_labels is None):
        raise ValueError("population_labels, target_labels, fake_labels: expected all three (conditional D) "
                         "or none (unconditional D)")


def train_references(
    make_discriminator: Callable[[int], nn.Module],
    population: torch.Tensor,
    population_labels: torch.Tensor | None,
    targets: torch.Tensor,
    target_labels: torch.Tensor | None,
    fake: torch.Tensor,
    fake_labels: torch.Tensor | None,
    *,
    count: int = 8,
    steps: int = 200,
    batch_size: int = 64,
    lr: float = 2e-4,
    betas: tuple[float, float] = (0.5, 0.999),
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> ReferenceLogits:
    """Train `count` reference discriminators, each on `population` plus the targets IN for it (module step 2).
    `population` may be empty: each reference then trains on its IN half of the targets alone.

    `make_discriminator(k)` builds reference k fresh (the caller seeds it, e.g. `build_discriminator(..., seed=k)`).
    Labels are all None for an unconditional D. `seed` fixes the IN/OUT mask and every batch draw.
    Returns each reference's raw logits on all targets and the mask.
    """
    _check_reference_inputs(population, population_labels, targets, target_labels, fake, fake_labels,
                            count, steps, batch_size)
    # Independent child streams: the mask and each reference's batches do not shift when `count` changes.
    mask_seed, *reference_seeds = np.random.SeedSequence(seed).spawn(count + 1)
    in_mask = balanced_in_mask(count, len(targets), np.random.default_rng(mask_seed))
    logits = np.empty((count, len(targets)), dtype=np.float64)
    for k in range(count):
        held = torch.from_numpy(in_mask[k])
        real = torch.cat([population, targets[held]])
        real_labels = None if target_labels is None else torch.cat([population_labels, target_labels[held]])
        batches = torch.Generator().manual_seed(int(reference_seeds[k].generate_state(1)[0]))
        discriminator = make_discriminator(k).to(device)
        train_discriminator(discriminator, real, real_labels, fake, fake_labels, steps=steps,
                            batch_size=batch_size, lr=lr, betas=betas, generator=batches)
        logits[k] = discriminator_logits(discriminator, targets, target_labels)
    return ReferenceLogits(logits=logits, in_mask=in_mask, steps=steps)


# ---- scores ----

def _standardise(logits: np.ndarray, name: str) -> np.ndarray:
    """Each row (one model) centred and scaled by its own mean and std over the targets (module step 3)."""
    mean = logits.mean(axis=-1, keepdims=True)
    std = logits.std(axis=-1, keepdims=True)
    if np.any(std == 0):
        raise ValueError(f"{name}: a model gives every target the same logit; it ranks nothing to calibrate")
    return (logits - mean) / std


def _fixed_variance_fit(standardised: np.ndarray, mask: np.ndarray, side: str) -> tuple[np.ndarray, float]:
    """Per-target mean (N,) over the masked references and one pooled std over all masked cells.

    The pooled variance divides by cells minus targets (each target's mean uses up one degree of freedom), so
    with K/2 = 4 references per side it is not biased low by a factor of 3/4.
    """
    counts = mask.sum(axis=0)
    if np.any(counts == 0):
        raise ValueError(f"references: some target has no {side} reference, expected at least one")
    mean = np.where(mask, standardised, 0.0).sum(axis=0) / counts
    residual = np.where(mask, standardised - mean, 0.0)
    degrees_of_freedom = counts.sum() - counts.size
    if degrees_of_freedom == 0:
        raise ValueError(f"references: every target has one {side} reference; no spread to estimate")
    std = float(np.sqrt((residual**2).sum() / degrees_of_freedom))
    if std == 0:
        raise ValueError(f"references: the {side} references agree exactly on every target; no spread")
    return mean, std


def _gaussian_log_density(x: np.ndarray, mean: np.ndarray, std: float) -> np.ndarray:
    """log N(x; mean, std) without the 0.5 log(2 pi) that cancels in a likelihood ratio."""
    return -0.5 * ((x - mean) / std) ** 2 - np.log(std)


def lira_scores(observed_logits: np.ndarray, references: ReferenceLogits, online: bool = True) -> np.ndarray:
    """Per-target membership score (N,) of the attacked D's logits, higher meaning "member" (module step 4).

    Online: log N(o; mu_in, sigma_in) - log N(o; mu_out, sigma_out), Carlini et al.'s likelihood ratio with a fixed
    variance; offline: (o - mu_out) / sigma_out, which needs no IN references. `observed_logits` are the attacked
    D's raw logits on the same targets, in the same order, as `references`.
    """
    observed = np.asarray(observed_logits, dtype=np.float64).reshape(-1)
    if observed.shape != (references.logits.shape[1],):
        raise ValueError(f"observed_logits: got {observed.size} logits, "
                         f"expected one per target ({references.logits.shape[1]})")
    if not np.all(np.isfinite(observed)):
        raise ValueError("observed_logits: got non-finite values; a diverged discriminator cannot be attacked")
    attacked = _standardise(observed, "observed_logits")
    standardised = _standardise(references.logits, "references")
    mean_out, std_out = _fixed_variance_fit(standardised, ~references.in_mask, "OUT")
    if not online:
        return (attacked - mean_out) / std_out
    mean_in, std_in = _fixed_variance_fit(standardised, references.in_mask, "IN")
    return _gaussian_log_density(attacked, mean_in, std_in) - _gaussian_log_density(attacked, mean_out, std_out)


# ---- summary ----

def _group_scores(scores: np.ndarray, groups: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    """scores[groups[name]], with a ValueError for a missing, empty or out-of-range index array."""
    if name not in groups:
        raise ValueError(f"groups: no {name!r} group, got {sorted(groups)}")
    index = np.asarray(groups[name])
    if index.size == 0 or index.dtype.kind not in "iu":
        raise ValueError(f"groups[{name!r}]: expected a non-empty integer index array, got {index.dtype} "
                         f"of size {index.size}")
    if index.min() < 0 or index.max() >= scores.size:
        raise ValueError(f"groups[{name!r}]: index out of range, expected indices in [0, {scores.size})")
    return scores[index]


def lira_attack(
    observed_logits: np.ndarray,
    references: ReferenceLogits,
    groups: Mapping[str, np.ndarray],
    *,
    positives: Sequence[str] = ("forget", "member"),
    negative: str = "nonmember",
    online: bool = True,
) -> dict[str, Any]:
    """LiRA summary: per positive group, AUC against `negative` and TPR at 0.1 % and 1 % FPR (None if unresolvable).

    `groups` maps names to index arrays into the targets (e.g. "forget", "member", "nonmember"). Keys follow
    `membership_inference` with a `lira_` prefix: `lira_auc_forget_vs_nonmember`, `lira_tpr_at_0.1pct_fpr_forget`,
    `lira_tpr_at_1pct_fpr_forget`, ..., plus `lira_references` (K), `lira_steps`, `lira_online`, `lira_sizes`.
    """
    scores = lira_scores(observed_logits, references, online=online)
    negatives = _group_scores(scores, groups, negative)
    summary: dict[str, Any] = {}
    sizes = {negative: int(negatives.size)}
    for name in positives:
        positive = _group_scores(scores, groups, name)
        sizes[name] = int(positive.size)
        summary[f"lira_auc_{name}_vs_{negative}"] = roc_auc(positive, negatives)
        for label, fpr in LIRA_FPRS.items():
            summary[f"lira_tpr_at_{label}_fpr_{name}"] = resolvable_tpr(positive, negatives, fpr)
    summary.update({"lira_references": int(references.logits.shape[0]), "lira_steps": int(references.steps),
                    "lira_online": online, "lira_sizes": sizes})
    return summary
