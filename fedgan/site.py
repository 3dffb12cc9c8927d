"""One site of the federation: its discriminator D_j, D_j's optimizer and random stream, over its shard.

Engine-free: the in-process engine holds `Site` objects directly; the Flower ClientApp rebuilds one per message
from the state kept in its Context. Either way the same `Site.train_round` runs, which is the site's half of one UA
round (docs/methods.md, "Universal Aggregation"): take `d_steps` Adam steps on BCE(D(real), 1) + BCE(D(x̂), 0)
[+ R1], then return the updated D's logits on the synthetic batch x̂ and their per-sample gradients ∂ℓ/∂x̂. Nothing
else leaves a site: not D's weights, not a real image. The shard's bookkeeping and sampling live in
`fedgan.shard`, the unlearning stages in `fedgan.site_unlearning`.
"""
from __future__ import annotations

import io
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from fedgan.datasets import ImageDataset
from fedgan.models import Discriminator, ModelSpec, build_discriminator
from fedgan.precision import autocast
from fedgan.schedule import learning_rate_factor
from fedgan.seeding import derive_seed, torch_generator
from fedgan.shard import SiteShard
from fedgan.site_unlearning import UnlearnStageOptions, run_stage


@dataclass(frozen=True)
class SiteOptions:
    """A site's local training settings (taken from the scenario's [training] table).

    real_sampling ``shard``: real batches drawn uniformly from the shard (D_j then estimates the joint ratio
    p_j(x, y) / q(x, y)); ``balanced``: a label uniformly among those the site holds, then an item of it (D_j
    estimates the per-label ratio p_j(x|y) / q(x|y), the ratio per-class site weights assume; docs/methods.md).
    r1_target: the R1 penalty on the real ``logit`` (Mescheder et al.) or on the ``probability`` (reference code).
    lr_schedule: see `fedgan.schedule` (over `total_rounds`).
    precision: ``float32`` or ``bfloat16`` autocast for the D steps, the reply and the unlearning stages
    (`fedgan.precision`); what the site sends is float32 either way.
    """

    batch_size: int = 64
    d_steps: int = 1
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    r1_gamma: float = 0.0
    real_sampling: str = "shard"
    r1_target: str = "logit"
    lr_schedule: str = "constant"
    total_rounds: int = 0
    precision: str = "float32"


@dataclass
class SiteReply:
    """What a site sends back for one synthetic batch of B images."""

    logits: torch.Tensor  # (B,) float32: ℓ_j(x̂) from the updated D_j
    input_grads: torch.Tensor  # (B, C, H, W) float32: ∂ℓ_j[b]/∂x̂[b]
    d_loss: float  # D_j's loss on its last local step
    d_real: float  # mean D_j(real) on that step (probability)
    d_fake: float  # mean D_j(x̂) on that step (probability)
    problem: str | None = None  # set by a transport that could not decode the site's answer (never by a site)


@dataclass
class GroupReply(SiteReply):
    """A node's pre-aggregated answer (`sites.pre-aggregate`, `fedgan.aggregation.pre_aggregate`): one equivalent
    site for the node's accepted sites — its logits, input gradients and the mean of their D statistics — with the
    group's total raw weight; the server never sees a single site's answer."""

    sites: tuple[int, ...] = ()  # the node's sites this answer stands for (those its screen accepted)
    raw_weight: torch.Tensor | None = None  # (B,) float64: R[b] = Σ_j r_j[b] over `sites`
    rejected: dict[int, str] | None = None  # the node's sites its screen dropped, with the reasons


class Site:
    """A site's discriminator, its optimizer and random stream, and the local computation of one UA round."""

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
        self.options = options
        self.device = torch.device(device)
        self.conditional = spec.conditional
        self.shard = SiteShard(site_id, shard, spec.conditional, self.device)
        self.discriminator: Discriminator = build_discriminator(
            spec, shard.image_shape, shard.num_classes, derive_seed(seed, "site", site_id, "discriminator")
        ).to(self.device)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=options.lr, betas=options.betas)
        self.rng = torch_generator(seed, "site", site_id, "batches")  # always on CPU: its state is portable
        self.steps = 0

    def sample_real(self, batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A real batch from the shard's active items, drawn the way `options.real_sampling` says."""
        return self.shard.sample_real(batch, self.rng, self.options.real_sampling)

    # ---- one UA round, the site's half ----
    def train_round(self, fake: torch.Tensor, labels: torch.Tensor | None, round_index: int | None = None
                    ) -> SiteReply:
        """Update D on real vs `fake`, then return logits of `fake` and ∂logit/∂fake from the updated D."""
        if self.options.lr_schedule != "constant":  # as the server does for G: only a schedule touches the rate
            factor = learning_rate_factor(self.options.lr_schedule, round_index, self.options.total_rounds)
            for group in self.optimizer.param_groups:
                group["lr"] = self.options.lr * factor
        fake = fake.to(self.device, torch.float32)
        labels = labels.to(self.device) if (labels is not None and self.conditional) else None
        stats = (0.0, 0.0, 0.0)
        # A site left without items (it forgot all it held) has nothing to learn from; its aggregation weight is 0.
        for _ in range(self.options.d_steps if self.shard.has_real else 0):
            stats = self._discriminator_step(fake, labels)
        logits, input_grads = self._logits_and_input_grads(fake, labels)
        return SiteReply(logits.cpu(), input_grads.cpu(), *stats)

    def autocast(self) -> AbstractContextManager[object]:
        """The context this site's training forward passes run in (`options.precision`, `fedgan.precision`);
        backward passes run outside it, as torch.autocast asks."""
        return autocast(self.device, self.options.precision)

    def _discriminator_step(self, fake: torch.Tensor, fake_labels: torch.Tensor | None) -> tuple[float, float, float]:
        # ---------------- update D: BCE(D(real), 1) + BCE(D(x̂), 0) [+ γ/2·‖∇_x ℓ(real)‖²] ----------------
        real, real_labels = self.sample_real(self.options.batch_size)
        D = self.discriminator
        self.optimizer.zero_grad(set_to_none=True)
        use_r1 = self.options.r1_gamma > 0
        real.requires_grad_(use_r1)
        with self.autocast():  # D returns float32 logits either way, so the loss below is float32
            real_logits = D(real, real_labels)
            fake_logits = D(fake, fake_labels)
        loss = F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
        if use_r1:
            # R1 (Mescheder et al. 2018) on the real logits, or on D's probability as the reference code does
            # (σ' ≤ 1/4 damps it, and it vanishes where D is confident).
            target = real_logits if self.options.r1_target == "logit" else torch.sigmoid(real_logits)
            (grad_real,) = torch.autograd.grad(target.sum(), real, create_graph=True)
            loss = loss + 0.5 * self.options.r1_gamma * grad_real.pow(2).flatten(1).sum(1).mean()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)  # no gradient kept between rounds: memory for many sites
        self.steps += 1
        with torch.no_grad():
            return float(loss), float(torch.sigmoid(real_logits).mean()), float(torch.sigmoid(fake_logits).mean())

    def _logits_and_input_grads(
        self, fake: torch.Tensor, labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # D has no batch norm, so sample b's logit depends on x̂[b] only and the gradient of the summed logits
        # with respect to the batch is exactly the stack of per-sample gradients ∂ℓ[b]/∂x̂[b].
        x = fake.detach().clone().requires_grad_(True)
        with self.autocast():
            logits = self.discriminator(x, labels)
        (input_grads,) = torch.autograd.grad(logits.sum(), x)
        return logits.detach(), input_grads

    # ---- unlearning: the site-side stage of a forget request (fedgan.site_unlearning) ----
    def unlearn_stage(self, fake: torch.Tensor, fake_labels: torch.Tensor | None, forget_ids: np.ndarray,
                      options: UnlearnStageOptions) -> dict[str, float]:
        """Run one site-side unlearning stage on the items `forget_ids` (still held, excluded from the real stream)."""
        return run_stage(self, fake, fake_labels, forget_ids, options)

    # ---- measurement: the white-box membership score (LOGAN) is D's logit ----
    @torch.no_grad()
    def discriminator_logits(self, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """D's logits on candidate images sent by the simulator's attacker (a measurement; D does not change)."""
        labels = labels.to(self.device) if (labels is not None and self.conditional) else None
        return self.discriminator(images.to(self.device), labels).cpu()

    # ---- persistence: everything a site needs to resume (kept in Flower's Context or a checkpoint) ----
    def state_dict(self) -> dict[str, Any]:
        """D's weights, its optimizer, the batch RNG, the step count and the forgotten / excluded ids."""
        return {
            "discriminator": self.discriminator.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.get_state(),
            "steps": self.steps,
            "forgotten": torch.tensor(sorted(self.shard.forgotten), dtype=torch.int64),
            "excluded": torch.tensor(sorted(self.shard.excluded), dtype=torch.int64),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.set_state(state["rng"].cpu())  # the RNG is a CPU generator whatever device the state was mapped to
        self.steps = int(state["steps"])
        self.shard.restore_ids({int(i) for i in state.get("forgotten", torch.empty(0)).tolist()},
                               {int(i) for i in state.get("excluded", torch.empty(0)).tolist()})

    def state_bytes(self) -> bytes:
        """`state_dict` serialised with torch.save, every tensor on the CPU (exact: float32 bits and RNG state
        round-trip; a state saved by a site on a GPU loads anywhere)."""
        buffer = io.BytesIO()
        torch.save(to_cpu(self.state_dict()), buffer)
        return buffer.getvalue()

    def load_state_bytes(self, data: bytes) -> None:
        """Inverse of `state_bytes`: loaded on the CPU (weights_only: no arbitrary objects are unpickled), then
        moved to the site's device by the module and optimizer loaders; the RNG stays on the CPU."""
        self.load_state_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))


def to_cpu(state: Any) -> Any:
    """A nested state (dicts, lists, tensors) with every tensor copied to the CPU."""
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {key: to_cpu(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(to_cpu(value) for value in state)
    return state
