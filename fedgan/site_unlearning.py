"""The site-side stage of a forget request: what the requesting site does to its own discriminator.

Only the site that held the items runs these stages, on its own shard; the items never leave it. Two kinds
(docs/methods.md, "Cascaded GAN unlearning" and "Baselines"):
- ``fake_label`` (the cascade's D stage, also `uniform` with y_fake = 1/2): `steps` D steps on
  BCE(D(x_retain), 1) + BCE(D(x̂), 0) + λ·BCE(D(x_forget), y_fake);
- ``noise`` (UNSIR adapted to a discriminator, our adaptation): error-maximising noise for the forget items'
  labels, then impair steps (that noise presented as real, at a raised learning rate) and repair steps on retained
  data only;
- ``fnn`` (forgetting neural networks, a reconstruction: `fedgan.forgetting_layers`): forgetting layers of type
  `fnn_layer` after D's hidden layers, ranked on the forget items; `steps` iterations of decay followed by one
  rehearsal step on the site's usual retained-real / generated-fake loss; then the factors are folded into D's
  weights (exact: LeakyReLU is positively homogeneous), so D keeps its architecture and its site group.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedgan.forgetting_layers import (
    DEFAULT_DISCRIMINATOR_LAYER,
    DEFAULT_FRACTION,
    DEFAULT_TAU,
    DEFAULT_TAU_MAX,
    DEFAULT_TAU_MIN,
    fnn_unlearn,
    fold_forgetting_layers,
    insert_forgetting_layers,
)

if TYPE_CHECKING:
    from fedgan.site import Site

STAGE_KINDS = ("fake_label", "noise", "fnn")
STAGE_PROBE_ITEMS = 256  # forget items on which a stage reports mean D before/after
NOISE_L2 = 0.1  # UNSIR's penalty on the noise's norm
NOISE_LR = 0.1  # UNSIR's learning rate for the noise


@dataclass(frozen=True)
class UnlearnStageOptions:
    """One site-side stage: its kind, its step count, λ (`weight`), y_fake, and the noise stage's settings.

    `fake_label` is a number, or ``"generated"`` for the mean D(x̂) on the stage's synthetic batch.
    """

    kind: str = "fake_label"
    steps: int = 20
    weight: float = 1.0
    fake_label: float | str = 0.0
    noise_steps: int = 40
    impair_lr_scale: float = 10.0
    fnn_layer: str = DEFAULT_DISCRIMINATOR_LAYER
    fnn_tau: float = DEFAULT_TAU
    fnn_tau_min: float = DEFAULT_TAU_MIN
    fnn_tau_max: float = DEFAULT_TAU_MAX
    fnn_fraction: float = DEFAULT_FRACTION


def run_stage(site: Site, fake: torch.Tensor, fake_labels: torch.Tensor | None, forget_ids: np.ndarray,
              options: UnlearnStageOptions) -> dict[str, float]:
    """One stage at `site` on its items `forget_ids` (still held, excluded from the real stream); its statistics."""
    fake = fake.to(site.device, torch.float32)
    fake_labels = fake_labels.to(site.device) if (fake_labels is not None and site.conditional) else None
    forget_pos = torch.from_numpy(site.shard.positions_of(forget_ids)).to(site.device)
    probe = forget_pos[:STAGE_PROBE_ITEMS]  # a fixed subset: the statistic must not cost more than the stage
    before, steps_before = mean_probability(site, probe), site.steps
    if options.kind == "noise":
        target = _noise_stage(site, fake, fake_labels, forget_pos, options)
    elif options.kind == "fake_label":
        target = _fake_label_stage(site, fake, fake_labels, forget_pos, options)
    elif options.kind == "fnn":
        target = _fnn_stage(site, fake, fake_labels, forget_pos, options)
    else:
        raise KeyError(f"unknown unlearning stage kind {options.kind!r}; use one of {', '.join(STAGE_KINDS)}")
    return {"d_forget_before": before, "d_forget_after": mean_probability(site, probe),
            "fake_label": target, "steps": float(site.steps - steps_before)}  # D steps taken (noise: impair + repair)


@torch.no_grad()
def mean_probability(site: Site, positions: torch.Tensor) -> float:
    """Mean D(x) over shard items at `positions`."""
    images, labels = site.shard.items_at(positions)
    return float(torch.sigmoid(site.discriminator(images, labels)).mean())


def _fake_label_stage(site: Site, fake, fake_labels, forget_pos, options: UnlearnStageOptions) -> float:
    D = site.discriminator
    if options.fake_label == "generated":  # the soft label: how real D finds G's current samples
        with torch.no_grad(), site.autocast():
            target = float(torch.sigmoid(D(fake, fake_labels)).mean())
    else:
        target = float(options.fake_label)
    for _ in range(options.steps):
        forget, forget_labels = site.shard.sample_from(forget_pos, site.options.batch_size, site.rng)
        site.optimizer.zero_grad(set_to_none=True)
        with site.autocast():  # forward passes only (`Site.autocast`); D's logits are float32 either way
            forget_logits = D(forget, forget_labels)
            loss = (_retained_real_loss(site) + F.softplus(D(fake, fake_labels)).mean()
                    + options.weight * F.binary_cross_entropy_with_logits(
                        forget_logits, torch.full_like(forget_logits, target)))
        loss.backward()
        site.optimizer.step()
        site.steps += 1
    return target


def _retained_real_loss(site: Site, discriminator: nn.Module | None = None) -> torch.Tensor:
    """BCE(D(x_retain), 1) on a retained batch; zero when the site retains nothing (the term drops out).
    `discriminator`: a stand-in for the site's D (the fnn stage's layered copy)."""
    if not site.shard.has_real:
        return torch.zeros((), device=site.device)
    real, real_labels = site.sample_real(site.options.batch_size)
    D = discriminator if discriminator is not None else site.discriminator
    return F.softplus(-D(real, real_labels)).mean()


def _fnn_stage(site: Site, fake, fake_labels, forget_pos, options: UnlearnStageOptions) -> float:
    """FNN at the site (a reconstruction): forgetting layers in a copy of D after every hidden layer (not the head),
    ranked by activity on a forget batch; `steps` × (decay, one rehearsal step on retained real vs the stage's
    fake, with a fresh Adam at the site's learning rate); the factors folded back into the site's own D."""
    D = site.discriminator
    forget, forget_labels = site.shard.sample_from(forget_pos, site.options.batch_size, site.rng)
    layered, layers = insert_forgetting_layers(
        D, options.fnn_layer, (forget, forget_labels), after=(nn.Conv2d, nn.Linear), skip=("head",),
        tau=options.fnn_tau, tau_min=options.fnn_tau_min, tau_max=options.fnn_tau_max, fraction=options.fnn_fraction)
    optimizer = torch.optim.Adam(layered.parameters(), lr=site.options.lr, betas=site.options.betas)

    def rehearsal(model: nn.Module, _batch: object) -> torch.Tensor:
        with site.autocast():
            return _retained_real_loss(site, model) + F.softplus(model(fake, fake_labels)).mean()

    fnn_unlearn(layered, layers, [None], rehearsal, iterations=options.steps, optimizer=optimizer,
                forget_inputs=[(forget, forget_labels)])
    folded = fold_forgetting_layers(layered)
    with torch.no_grad():  # in place: a site group's D parameters are views of its stacked state
        for own, learned in zip(D.parameters(), folded.parameters(), strict=True):
            own.copy_(learned)
    site.steps += options.steps
    return 0.0


def _noise_stage(site: Site, fake, fake_labels, forget_pos, options: UnlearnStageOptions) -> float:
    D = site.discriminator
    noise, noise_labels = _error_maximising_noise(site, forget_pos, options.noise_steps)
    impair = torch.optim.Adam(D.parameters(), lr=site.options.lr * options.impair_lr_scale,
                              betas=site.options.betas)
    for phase, optimizer in (("impair", impair), ("repair", site.optimizer)):
        for _ in range(options.steps):
            optimizer.zero_grad(set_to_none=True)
            with site.autocast():
                loss = _retained_real_loss(site) + F.softplus(D(fake, fake_labels)).mean()
                if phase == "impair":  # noise that D finds maximally fake for these labels, presented as real
                    loss = loss + options.weight * F.softplus(-D(noise, noise_labels)).mean()
            loss.backward()
            optimizer.step()
            site.steps += 1
    return 1.0


def _error_maximising_noise(site: Site, forget_pos: torch.Tensor, steps: int
                            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """UNSIR's noise, per forget label: maximise D's 'real' loss with D frozen, plus a small L2 penalty."""
    _, labels = site.shard.sample_from(forget_pos, site.options.batch_size, site.rng)
    count = len(labels) if labels is not None else min(site.options.batch_size, len(forget_pos))
    noise = torch.randn((count, *site.shard.image_shape), generator=site.rng).to(site.device).requires_grad_(True)
    optimizer = torch.optim.Adam([noise], lr=NOISE_LR)
    for parameter in site.discriminator.parameters():
        parameter.requires_grad_(False)
    try:
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            with site.autocast():
                logits = site.discriminator(noise, labels)
            loss = -F.softplus(-logits).mean() + NOISE_L2 * noise.pow(2).flatten(1).sum(1).mean()
            loss.backward()
            optimizer.step()
    finally:
        for parameter in site.discriminator.parameters():
            parameter.requires_grad_(True)
    return noise.detach(), labels
