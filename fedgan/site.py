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
    """A site's local training settings (taken from the scenario's [training] table).

    real_sampling ``shard``: real batches drawn uniformly from the shard (D_j then estimates the joint ratio
    p_j(x, y) / q(x, y)); ``balanced``: a label uniformly among those the site holds, then an item of it (D_j
    estimates the per-label ratio p_j(x|y) / q(x|y), the ratio per-class site weights assume; ALGORITHMS.md §1).
    r1_target: the R1 penalty on the real ``logit`` (Mescheder et al.) or on the ``probability`` (reference code).
    lr_schedule ``linear_decay``: constant for the first half of `total_rounds`, then linearly to 0 (the paper's
    200 + 200 epochs); ``constant``: no schedule.
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


def learning_rate_factor(schedule: str, round_index: int | None, total_rounds: int) -> float:
    """The learning-rate multiplier of `schedule` at `round_index` (1-based) of `total_rounds`."""
    if schedule == "constant" or round_index is None or total_rounds <= 0:
        return 1.0
    if schedule == "linear_decay":
        half = total_rounds / 2
        return float(min(1.0, max(0.0, (total_rounds - round_index + 1) / half)))
    raise KeyError(f"unknown learning-rate schedule {schedule!r}")


STAGE_PROBE_ITEMS = 256  # forget items on which a stage reports mean D before/after


@dataclass(frozen=True)
class UnlearnStageOptions:
    """One site-side unlearning stage (ALGORITHMS.md §5 step (b), and the `noise` / `uniform` baselines).

    kind ``fake_label``: `steps` D steps on BCE(D(x_retain), 1) + BCE(D(x̂), 0) + λ·BCE(D(x_forget), y_fake), where
    y_fake is `fake_label` (a number) or, for ``"generated"``, the mean D(x̂) on the stage's synthetic batch.
    kind ``noise`` (UNSIR adapted, ALGORITHMS.md §6): error-maximising noise for the forget items' labels, then
    `steps` impair steps (noise labelled real, at `impair_lr_scale` × the site's lr) and `steps` repair steps on
    retained data only.
    """

    kind: str = "fake_label"
    steps: int = 20
    weight: float = 1.0
    fake_label: float | str = 0.0
    noise_steps: int = 40
    impair_lr_scale: float = 10.0


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
        self.forgotten: set[int] = set()  # ids deleted from the shard (only their ids remain, as in the ledger)
        self.excluded: set[int] = set()  # ids held but kept out of the real stream (substituted) while unlearning
        # The partition's shard: the simulator's data source, from which the site's current shard (minus forgotten
        # items) is derived. What a site persists is only the forgotten ids (`state_dict`), never the items.
        self._partition_shard = shard
        self._set_shard(shard)

    def _set_shard(self, shard: ImageDataset) -> None:
        self.shard = shard
        self._images = shard.float_images().to(self.device)  # decoded once; the shard stays on this site
        self._labels = shard.labels.to(self.device)
        self._ids = shard.ids.numpy()
        self._refresh_active()

    def _refresh_active(self) -> None:
        """Positions the real stream samples from: the shard minus excluded items (ALGORITHMS.md §5 substitution)."""
        keep = ~np.isin(self._ids, np.fromiter(self.excluded, dtype=np.int64, count=len(self.excluded)))
        active = np.flatnonzero(keep)
        # For balanced sampling: the active positions sorted by label, with each held label's start and count.
        active = active[np.argsort(self.shard.labels.numpy()[active], kind="stable")]
        labels, starts, counts = np.unique(self.shard.labels.numpy()[active], return_index=True, return_counts=True)
        self._active = torch.from_numpy(active).to(self.device)
        self._label_starts = torch.from_numpy(starts).to(self.device)
        self._label_counts = torch.from_numpy(counts).to(self.device)

    @property
    def has_real(self) -> bool:
        """Whether the real stream has any item (a site that forgot everything it held has none)."""
        return len(self._active) > 0

    # ---- forgetting: which items the site still uses and holds ----
    def positions_of(self, ids: np.ndarray) -> np.ndarray:
        """Positions in the current shard of the given global ids (KeyError naming the first missing id)."""
        index = {int(i): p for p, i in enumerate(self._ids)}
        missing = [int(i) for i in ids if int(i) not in index]
        if missing:
            raise KeyError(f"site {self.site_id} does not hold item {missing[0]}")
        return np.asarray([index[int(i)] for i in ids], dtype=np.int64)

    def exclude(self, ids: np.ndarray) -> None:
        """Keep `ids` out of the real stream from now on: retained items of this site take their place."""
        self.positions_of(ids)
        self.excluded |= {int(i) for i in ids}
        self._refresh_active()

    def forget(self, ids: np.ndarray) -> None:
        """Delete `ids` from the shard for good; only the ids are kept (to rebuild the shard after a restart)."""
        ids_set = {int(i) for i in ids}
        self.excluded -= ids_set
        self._apply_forgotten(self.forgotten | ids_set)

    def _apply_forgotten(self, forgotten: set[int]) -> None:
        self.forgotten = set(forgotten)
        all_ids = self._partition_shard.ids.numpy()
        keep = np.flatnonzero(~np.isin(all_ids, np.asarray(sorted(forgotten), dtype=np.int64)))
        self._set_shard(self._partition_shard.subset(torch.from_numpy(keep)))

    # ---- what the server may learn about a site: sizes only ----
    def class_counts(self) -> np.ndarray:
        """Items per class in this shard, shape (num_classes,): the n_{j,y} of the aggregation weights."""
        return np.bincount(self.shard.labels.numpy(), minlength=self.num_classes).astype(np.int64)

    # ---- one UA round, the site's half ----
    def score(self, fake: torch.Tensor, labels: torch.Tensor | None, round_index: int | None = None) -> SiteReply:
        """Update D on real vs `fake`, then return logits of `fake` and ∂logit/∂fake from the updated D."""
        if self.options.lr_schedule != "constant":  # as the server does for G: only a schedule touches the rate
            factor = learning_rate_factor(self.options.lr_schedule, round_index, self.options.total_rounds)
            for group in self.optimizer.param_groups:
                group["lr"] = self.options.lr * factor
        fake = fake.to(self.device, torch.float32)
        labels = labels.to(self.device) if (labels is not None and self.conditional) else None
        stats = (0.0, 0.0, 0.0)
        # A site left without items (it forgot all it held) has nothing to learn from; its aggregation weight is 0.
        for _ in range(self.options.d_steps if self.has_real else 0):
            stats = self._discriminator_step(fake, labels)
        logits, input_grads = self._logits_and_input_grads(fake, labels)
        return SiteReply(logits.cpu(), input_grads.cpu(), *stats)

    def _sample_real(self, batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.has_real:
            raise ValueError(f"site {self.site_id} has no retained item to sample")
        if self.options.real_sampling == "balanced":
            label = torch.randint(len(self._label_counts), (batch,), generator=self.rng).to(self.device)
            within = (torch.rand(batch, generator=self.rng).to(self.device) * self._label_counts[label]).long()
            pick = self._label_starts[label] + torch.minimum(within, self._label_counts[label] - 1)
        else:
            pick = torch.randint(len(self._active), (batch,), generator=self.rng).to(self.device)
        index = self._active[pick]
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
            # R1 (Mescheder et al. 2018) on the real logits, or on D's probability as the reference code does
            # (σ' ≤ 1/4 damps it, and it vanishes where D is confident).
            target = real_logits if self.options.r1_target == "logit" else torch.sigmoid(real_logits)
            (grad_real,) = torch.autograd.grad(target.sum(), real, create_graph=True)
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

    # ---- unlearning: the site-side stage of a forget request ----
    def unlearn_stage(
        self, fake: torch.Tensor, fake_labels: torch.Tensor | None, forget_ids: np.ndarray,
        options: UnlearnStageOptions,
    ) -> dict[str, float]:
        """Run one site-side unlearning stage on the items `forget_ids` (still held, excluded from the real stream)."""
        fake = fake.to(self.device, torch.float32)
        fake_labels = fake_labels.to(self.device) if (fake_labels is not None and self.conditional) else None
        forget_pos = torch.from_numpy(self.positions_of(forget_ids)).to(self.device)
        probe = forget_pos[:STAGE_PROBE_ITEMS]  # a fixed subset: the statistic must not cost more than the stage
        before = self._mean_probability(probe)
        if options.kind == "noise":
            target = self._noise_stage(fake, fake_labels, forget_pos, options)
        elif options.kind == "fake_label":
            target = self._fake_label_stage(fake, fake_labels, forget_pos, options)
        else:
            raise KeyError(f"unknown unlearning stage kind {options.kind!r}")
        return {"d_forget_before": before, "d_forget_after": self._mean_probability(probe),
                "fake_label": target, "steps": float(options.steps)}

    @torch.no_grad()
    def _mean_probability(self, positions: torch.Tensor) -> float:
        labels = self._labels[positions] if self.conditional else None
        return float(torch.sigmoid(self.discriminator(self._images[positions], labels)).mean())

    def _sample_forget(self, forget_pos: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        pick = torch.randint(len(forget_pos), (min(batch, len(forget_pos)),), generator=self.rng).to(self.device)
        index = forget_pos[pick]
        return self._images[index], (self._labels[index] if self.conditional else None)

    def _fake_label_stage(self, fake, fake_labels, forget_pos, options: UnlearnStageOptions) -> float:
        D = self.discriminator
        if options.fake_label == "generated":  # the soft label: how real D finds G's current samples
            with torch.no_grad():
                target = float(torch.sigmoid(D(fake, fake_labels)).mean())
        else:
            target = float(options.fake_label)
        for _ in range(options.steps):
            forget, forget_labels = self._sample_forget(forget_pos, self.options.batch_size)
            self.optimizer.zero_grad(set_to_none=True)
            forget_logits = D(forget, forget_labels)
            loss = (self._retained_real_loss() + F.softplus(D(fake, fake_labels)).mean()
                    + options.weight * F.binary_cross_entropy_with_logits(
                        forget_logits, torch.full_like(forget_logits, target)))
            loss.backward()
            self.optimizer.step()
            self.steps += 1
        return target

    def _retained_real_loss(self) -> torch.Tensor:
        """BCE(D(x_retain), 1) on a retained batch; zero when the site retains nothing (the term drops out)."""
        if not self.has_real:
            return torch.zeros((), device=self.device)
        real, real_labels = self._sample_real(self.options.batch_size)
        return F.softplus(-self.discriminator(real, real_labels)).mean()

    def _noise_stage(self, fake, fake_labels, forget_pos, options: UnlearnStageOptions) -> float:
        D = self.discriminator
        noise, noise_labels = self._error_maximising_noise(forget_pos, options.noise_steps)
        impair = torch.optim.Adam(D.parameters(), lr=self.options.lr * options.impair_lr_scale,
                                  betas=self.options.betas)
        for phase, optimizer in (("impair", impair), ("repair", self.optimizer)):
            for _ in range(options.steps):
                optimizer.zero_grad(set_to_none=True)
                loss = self._retained_real_loss() + F.softplus(D(fake, fake_labels)).mean()
                if phase == "impair":  # noise that D finds maximally fake for these labels, presented as real
                    loss = loss + options.weight * F.softplus(-D(noise, noise_labels)).mean()
                loss.backward()
                optimizer.step()
                self.steps += 1
        return 1.0

    def _error_maximising_noise(self, forget_pos: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """UNSIR's noise, per forget label: maximise D's 'real' loss with D frozen, plus a small L2 penalty (λ=0.1)."""
        _, labels = self._sample_forget(forget_pos, self.options.batch_size)
        count = len(labels) if labels is not None else min(self.options.batch_size, len(forget_pos))
        shape = (count, *self.shard.image_shape)
        noise = torch.randn(shape, generator=self.rng).to(self.device).requires_grad_(True)
        optimizer = torch.optim.Adam([noise], lr=0.1)
        for parameter in self.discriminator.parameters():
            parameter.requires_grad_(False)
        try:
            for _ in range(steps):
                optimizer.zero_grad(set_to_none=True)
                logits = self.discriminator(noise, labels)
                loss = -F.softplus(-logits).mean() + 0.1 * noise.pow(2).flatten(1).sum(1).mean()
                loss.backward()
                optimizer.step()
        finally:
            for parameter in self.discriminator.parameters():
                parameter.requires_grad_(True)
        return noise.detach(), labels

    # ---- measurement: the white-box membership score (LOGAN) is D's logit ----
    @torch.no_grad()
    def image_scores(self, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """D's logits on candidate images sent by the simulator's attacker (a measurement, never training)."""
        labels = labels.to(self.device) if (labels is not None and self.conditional) else None
        return self.discriminator(images.to(self.device), labels).cpu()

    def held_ids(self) -> np.ndarray:
        """Global ids this site holds now (after forgetting)."""
        return self._ids.copy()

    # ---- persistence: everything a site needs to resume (kept in Flower's Context or a checkpoint) ----
    def state_dict(self) -> dict[str, Any]:
        """D's weights, its optimizer, the batch RNG and the step count."""
        return {
            "discriminator": self.discriminator.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.get_state(),
            "steps": self.steps,
            "forgotten": torch.tensor(sorted(self.forgotten), dtype=torch.int64),
            "excluded": torch.tensor(sorted(self.excluded), dtype=torch.int64),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.set_state(state["rng"])
        self.steps = int(state["steps"])
        self.excluded = {int(i) for i in state.get("excluded", torch.empty(0)).tolist()}
        forgotten = {int(i) for i in state.get("forgotten", torch.empty(0)).tolist()}
        if forgotten != self.forgotten:
            self._apply_forgotten(forgotten)
        else:
            self._refresh_active()

    def state_bytes(self) -> bytes:
        """`state_dict` serialised with torch.save (exact: float32 bits and RNG state round-trip)."""
        buffer = io.BytesIO()
        torch.save(self.state_dict(), buffer)
        return buffer.getvalue()

    def load_state_bytes(self, data: bytes) -> None:
        """Inverse of `state_bytes` (weights_only loading: no arbitrary objects are unpickled)."""
        self.load_state_dict(torch.load(io.BytesIO(data), map_location=self.device, weights_only=True))
