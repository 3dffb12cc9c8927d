"""One site of the federation: its private shard, its discriminator D_j and D_j's optimizer.

Engine-free: the in-process engine holds `Site` objects directly; the Flower ClientApp rebuilds one per message
from the state kept in its Context. Either way the same `Site.score` runs, which is the site's half of one UA round
(ALGORITHMS.md §1, steps 2–3): take `d_steps` Adam steps on BCE(D(real), 1) + BCE(D(x̂), 0) [+ R1], then return
the updated D's logits on the synthetic batch x̂ and their per-sample gradients ∂ℓ/∂x̂. Nothing else leaves a site:
not D's weights, not a real image.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from fedgan.datasets import ImageDataset
from fedgan.models import Discriminator, ModelSpec, build_discriminator
from fedgan.seeding import derive_seed, torch_generator


@dataclass(frozen=True)
class SiteOptions:
    """A site's local training settings (taken from the scenario's [training] table)."""

    batch_size: int = 64
    d_steps: int = 1
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    r1_gamma: float = 0.0


@dataclass
class SiteReply:
    """What a site sends back for one synthetic batch of B images."""

    logits: torch.Tensor  # (B,) float32: ℓ_j(x̂) from the updated D_j
    input_grads: torch.Tensor  # (B, C, H, W) float32: ∂ℓ_j[b]/∂x̂[b]
    d_loss: float  # D_j's loss on its last local step
    d_real: float  # mean D_j(real) on that step (probability)
    d_fake: float  # mean D_j(x̂) on that step (probability)


class Site:
    """A site's private state and the local computation of one UA round."""

    def __init__(
        self,
        site_id: int,
        shard: ImageDataset,
        spec: ModelSpec,
        options: SiteOptions,
        seed: int,
        device: torch.device | str = "cpu",
    ) -> None:
        self.site_id = site_id
        self.shard = shard
        self.options = options
        self.device = torch.device(device)
        self.num_classes = shard.num_classes
        self.conditional = spec.conditional
        self.discriminator: Discriminator = build_discriminator(
            spec, shard.image_shape, shard.num_classes, derive_seed(seed, "site", site_id, "discriminator")
        ).to(self.device)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=options.lr, betas=options.betas)
        self.rng = torch_generator(seed, "site", site_id, "batches")
        self.steps = 0
        self._images = shard.float_images().to(self.device)  # decoded once; the shard stays on this site
        self._labels = shard.labels.to(self.device)

    # ---- what the server may learn about a site: sizes only ----
    def class_counts(self) -> np.ndarray:
        """Items per class in this shard, shape (num_classes,): the n_{j,y} of the aggregation weights."""
        return np.bincount(self.shard.labels.numpy(), minlength=self.num_classes).astype(np.int64)

    # ---- one UA round, the site's half ----
    def score(self, fake: torch.Tensor, labels: torch.Tensor | None) -> SiteReply:
        """Update D on real vs `fake`, then return logits of `fake` and ∂logit/∂fake from the updated D."""
        fake = fake.to(self.device, torch.float32)
        labels = labels.to(self.device) if (labels is not None and self.conditional) else None
        stats = (0.0, 0.0, 0.0)
        for _ in range(self.options.d_steps):
            stats = self._discriminator_step(fake, labels)
        logits, input_grads = self._logits_and_input_grads(fake, labels)
        return SiteReply(logits.cpu(), input_grads.cpu(), *stats)

    def _sample_real(self, batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        index = torch.randint(len(self.shard), (batch,), generator=self.rng).to(self.device)
        return self._images[index], (self._labels[index] if self.conditional else None)

    def _discriminator_step(self, fake: torch.Tensor, fake_labels: torch.Tensor | None) -> tuple[float, float, float]:
        # ---------------- update D: BCE(D(real), 1) + BCE(D(x̂), 0) [+ γ/2·‖∇_x ℓ(real)‖²] ----------------
        real, real_labels = self._sample_real(self.options.batch_size)
        D = self.discriminator
        self.optimizer.zero_grad(set_to_none=True)
        use_r1 = self.options.r1_gamma > 0
        real.requires_grad_(use_r1)
        real_logits = D(real, real_labels)
        fake_logits = D(fake, fake_labels)
        loss = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
        if use_r1:
            # R1 (Mescheder et al. 2018) on the real logits; the reference code takes it on probabilities.
            (grad_real,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
            loss = loss + 0.5 * self.options.r1_gamma * grad_real.pow(2).flatten(1).sum(1).mean()
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        with torch.no_grad():
            return float(loss), float(torch.sigmoid(real_logits).mean()), float(torch.sigmoid(fake_logits).mean())

    def _logits_and_input_grads(
        self, fake: torch.Tensor, labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # D has no batch norm, so sample b's logit depends on x̂[b] only and the gradient of the summed logits
        # with respect to the batch is exactly the stack of per-sample gradients ∂ℓ[b]/∂x̂[b].
        x = fake.detach().clone().requires_grad_(True)
        logits = self.discriminator(x, labels)
        (input_grads,) = torch.autograd.grad(logits.sum(), x)
        return logits.detach(), input_grads

    # ---- persistence: everything a site needs to resume (kept in Flower's Context or a checkpoint) ----
    def state_dict(self) -> dict[str, Any]:
        """D's weights, its optimizer, the batch RNG and the step count."""
        return {
            "discriminator": self.discriminator.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.get_state(),
            "steps": self.steps,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.set_state(state["rng"])
        self.steps = int(state["steps"])

    def state_bytes(self) -> bytes:
        """`state_dict` serialised with torch.save (exact: float32 bits and RNG state round-trip)."""
        buffer = io.BytesIO()
        torch.save(self.state_dict(), buffer)
        return buffer.getvalue()

    def load_state_bytes(self, data: bytes) -> None:
        """Inverse of `state_bytes` (weights_only loading: no arbitrary objects are unpickled)."""
        self.load_state_dict(torch.load(io.BytesIO(data), map_location=self.device, weights_only=True))
