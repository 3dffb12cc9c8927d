"""A site group: many sites' discriminators as one batched computation (`torch.func.vmap` over stacked weights).

The per-site `fedgan.site.Site` is the reference; a group gives the same numbers (tests/test_site_group.py states
the tolerance). What is batched, per D step of a round: every active site's forward on its own real batch and on the
shared synthetic batch, the loss (with R1), one backward for all sites, and Adam on the stacked tensors; then the
logits and per-sample input gradients of every site in one more batched forward/backward. Adam is elementwise, so
one update over stacked tensors is still per-site Adam — but each site keeps its own step count (bias correction),
so sites whose counts diverge (unlearning stages, a site without real data) stay exact.

What stays per site: the shard, its sampling and its random stream (`Site.shard`, `Site.rng`: index draws only),
and the rare work of forget requests that does not stack — a noise (UNSIR) or fnn stage, a site's state for a
checkpoint — which runs on the site's own `Site`. Fake-label stages (the cascade's, `uniform`'s) at several sites
of a group run stacked under ``vmap`` (`unlearn_stages`), each site with its own step count. A member `Site`
never holds a copy: its discriminator's parameters and its Adam moments are views of the group's stacked tensors
(`materialise`), so its own code — the per-site loop of ``loop`` batching, or an unlearning stage — updates the
stacked state in place; `absorb` takes back what a state load replaced.
"""
from __future__ import annotations

import copy
import io
import os
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any, BinaryIO

import numpy as np
import torch
from torch.func import functional_call, vmap
from torch.nn import functional as F

from fedgan.flat_state import is_flat, read_flat, read_flat_file, write_flat
from fedgan.precision import autocast
from fedgan.schedule import learning_rate_factor
from fedgan.site import Site, SiteReply, to_cpu
from fedgan.site_unlearning import STAGE_PROBE_ITEMS, UnlearnStageOptions, mean_probability

BATCHING = ("auto", "vmap", "loop")


def resolve_batching(batching: str, device: torch.device) -> str:
    """``auto``: ``vmap`` on a GPU (small kernels leave it idle), ``loop`` on a CPU (where the plain per-site loop
    is faster: bench/scale.py)."""
    if batching == "auto":
        return "vmap" if device.type == "cuda" else "loop"
    if batching not in BATCHING:
        raise KeyError(f"unknown batching {batching!r}; use one of {', '.join(BATCHING)}")
    return batching


class SiteGroup:
    """K sites of one scenario (same model and options) trained as one stacked computation.

    `batching` ``vmap`` runs a round as one batched computation; ``loop`` runs each site's own `Site` code in turn
    over the same stacked state (what a CPU does fastest); ``auto`` picks by device.
    """

    def __init__(self, sites: list[Site], batching: str = "auto") -> None:
        if not sites:
            raise ValueError("a site group needs at least one site")
        self.sites = sites
        self.batching = resolve_batching(batching, sites[0].device)
        self.site_ids = [site.site_id for site in sites]
        first = sites[0]
        self.options = first.options
        self.device = first.device
        self.conditional = first.conditional
        # A weightless copy of the architecture: functional_call runs it with each site's stacked slice.
        self._skeleton = copy.deepcopy(first.discriminator).to("meta")
        self._names = [name for name, _ in first.discriminator.named_parameters()]
        self.params = {name: torch.stack([dict(s.discriminator.named_parameters())[name].detach() for s in sites])
                       for name in self._names}
        self.exp_avg = {name: torch.zeros_like(p) for name, p in self.params.items()}
        self.exp_avg_sq = {name: torch.zeros_like(p) for name, p in self.params.items()}
        self.adam_steps = torch.zeros(len(sites), dtype=torch.float64)  # per site: Adam's bias-correction clock
        for index in range(len(sites)):
            self.absorb(index)  # a Site that already stepped brings its Adam state; then it sees the stacked state

    def __len__(self) -> int:
        return len(self.sites)

    def _autocast(self) -> AbstractContextManager[object]:
        return autocast(self.device, self.options.precision)

    def _forward(self, params: dict[str, torch.Tensor], x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return functional_call(self._skeleton, params, (x, labels))

    def _forward_each(self, params: dict[str, torch.Tensor], x: torch.Tensor, labels: torch.Tensor | None
                      ) -> torch.Tensor:
        """Every site's D on its own batch: x (K, B, C, H, W), labels (K, B) or None -> logits (K, B)."""
        return vmap(self._forward, in_dims=(0, 0, None if labels is None else 0))(params, x, labels)

    def _forward_shared(self, params: dict[str, torch.Tensor], x: torch.Tensor, labels: torch.Tensor | None
                        ) -> torch.Tensor:
        """Every site's D on one batch: x (B, C, H, W), labels (B,) or None -> logits (K, B)."""
        return vmap(self._forward, in_dims=(0, None, None))(params, x, labels)

    # ---- one UA round, every site's half at once ----
    def train_round(self, fake: torch.Tensor, labels: torch.Tensor | None, round_index: int | None = None
                    ) -> dict[int, SiteReply]:
        """Every site's D step(s) on its real stream vs `fake`, then its logits and ∂logit/∂fake (by site id)."""
        if self.batching == "loop" or len(self.sites) == 1:  # each site's own code: exactly the `Site` numbers
            replies = {}
            for index, site in enumerate(self.sites):  # the Sites update the stacked tensors through their views
                replies[site.site_id] = site.train_round(fake, labels, round_index)
                self.adam_steps[index] += float(self.options.d_steps if site.shard.has_real else 0)
            return replies
        fake = fake.to(self.device, torch.float32)
        labels = labels.to(self.device) if (labels is not None and self.conditional) else None
        active = torch.tensor([site.shard.has_real for site in self.sites])
        stats = torch.zeros(len(self.sites), 3)
        lr = self.options.lr * learning_rate_factor(self.options.lr_schedule, round_index, self.options.total_rounds)
        if self.options.lr_schedule != "constant":  # the rate a later stage uses, as a Site's own round leaves it
            for site in self.sites:
                for param_group in site.optimizer.param_groups:
                    param_group["lr"] = lr
        for _ in range(self.options.d_steps if bool(active.any()) else 0):
            stats = torch.where(active[:, None], self._discriminator_step(fake, labels, active, lr), stats)
        logits, input_grads = self._logits_and_input_grads(fake, labels)
        return {site_id: SiteReply(logits[k].cpu(), input_grads[k].cpu(), *map(float, stats[k]))
                for k, site_id in enumerate(self.site_ids)}

    def _real_batches(self, active: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each site's real batch from its own stream, stacked (K, B, C, H, W); an inactive site repeats another's
        (its loss is masked out and it takes no step)."""
        batch = self.options.batch_size
        drawn = {k: site.sample_real(batch) for k, site in enumerate(self.sites) if active[k]}
        filler = next(iter(drawn.values()))
        pairs = [drawn.get(k, filler) for k in range(len(self.sites))]
        images = torch.stack([p[0] for p in pairs])
        labels = torch.stack([p[1] for p in pairs]) if self.conditional else None
        return images, labels

    def _discriminator_step(self, fake: torch.Tensor, fake_labels: torch.Tensor | None, active: torch.Tensor,
                            lr: float) -> torch.Tensor:
        # ---------------- update every D: BCE(D(real), 1) + BCE(D(x̂), 0) [+ γ/2·‖∇_x ℓ(real)‖²] ----------------
        real, real_labels = self._real_batches(active)
        params = {name: p.detach().requires_grad_(True) for name, p in self.params.items()}
        use_r1 = self.options.r1_gamma > 0
        real.requires_grad_(use_r1)
        with self._autocast():  # forward passes only, as in `Site`; the logits are float32 either way
            real_logits = self._forward_each(params, real, real_labels)  # (K, B)
            fake_logits = self._forward_shared(params, fake, fake_labels)  # (K, B)
        loss = F.softplus(-real_logits).mean(1) + F.softplus(fake_logits).mean(1)  # (K,)
        if use_r1:
            target = real_logits if self.options.r1_target == "logit" else torch.sigmoid(real_logits)
            (grad_real,) = torch.autograd.grad(target.sum(), real, create_graph=True)
            loss = loss + 0.5 * self.options.r1_gamma * grad_real.pow(2).flatten(2).sum(2).mean(1)
        # Sites are independent, so the gradient of the summed loss is every site's own gradient.
        grads = torch.autograd.grad((loss * active.to(loss.dtype).to(loss.device)).sum(), list(params.values()))
        self._adam_step(dict(zip(params, grads)), active, lr)
        for k, site in enumerate(self.sites):
            site.steps += int(active[k])
        with torch.no_grad():
            return torch.stack([loss, torch.sigmoid(real_logits).mean(1), torch.sigmoid(fake_logits).mean(1)], 1).cpu()

    @torch.no_grad()
    def _adam_step(self, grads: dict[str, torch.Tensor], active: torch.Tensor, lr: float) -> None:
        """torch.optim.Adam's update (its default formulas), per site, on the stacked tensors; inactive sites keep
        their weights, moments and step count."""
        beta1, beta2 = self.options.betas
        eps = 1e-8
        self.adam_steps += active.to(torch.float64)
        steps = self.adam_steps.tolist()
        step_size = torch.tensor([lr / (1 - beta1 ** t) if t > 0 else 0.0 for t in steps], dtype=torch.float32)
        correction2_sqrt = torch.tensor([(1 - beta2 ** t) ** 0.5 if t > 0 else 1.0 for t in steps],
                                        dtype=torch.float32)
        mask = active.to(self.device)
        for name, grad in grads.items():
            shape = (-1,) + (1,) * (grad.dim() - 1)
            keep = mask.view(shape)
            exp_avg = torch.where(keep, self.exp_avg[name].lerp(grad, 1 - beta1), self.exp_avg[name])
            exp_avg_sq = torch.where(keep, self.exp_avg_sq[name] * beta2 + (1 - beta2) * grad * grad,
                                     self.exp_avg_sq[name])
            denom = exp_avg_sq.sqrt() / correction2_sqrt.to(self.device).view(shape) + eps
            update = exp_avg / denom * step_size.to(self.device).view(shape)
            # In place: each member Site's parameters and moments are views of these tensors.
            self.params[name].copy_(torch.where(keep, self.params[name] - update, self.params[name]))
            self.exp_avg[name].copy_(exp_avg)
            self.exp_avg_sq[name].copy_(exp_avg_sq)

    def _logits_and_input_grads(self, fake: torch.Tensor, labels: torch.Tensor | None
                                ) -> tuple[torch.Tensor, torch.Tensor]:
        # D has no batch norm: sample b's logit depends on x̂[b] only, so the gradient of the summed logits with
        # respect to each site's copy of the batch is that site's per-sample input gradients.
        x = fake.detach().expand(len(self.sites), *fake.shape).clone().requires_grad_(True)
        labels_each = labels.expand(len(self.sites), *labels.shape) if labels is not None else None
        params = {name: p.detach() for name, p in self.params.items()}
        with self._autocast():
            logits = self._forward_each(params, x, labels_each)  # (K, B)
        (input_grads,) = torch.autograd.grad(logits.sum(), x)  # (K, B, C, H, W)
        return logits.detach(), input_grads

    # ---- one site at a time: measurement, unlearning stages, state ----
    @torch.no_grad()
    def discriminator_logits(self, index: int, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Site `index`'s D logits on candidate images (a measurement: nothing changes)."""
        labels = labels.to(self.device) if (labels is not None and self.conditional) else None
        params = {name: p[index] for name, p in self.params.items()}
        return self._forward(params, images.to(self.device), labels).cpu()

    def unlearn_stage(self, index: int, fake: torch.Tensor, fake_labels: torch.Tensor | None,
                      forget_ids: np.ndarray, options: UnlearnStageOptions) -> dict[str, float]:
        """One unlearning stage at site `index`, run on its own `Site`."""
        site = self.materialise(index)
        stats = site.unlearn_stage(fake, fake_labels, forget_ids, options)
        self.absorb(index)
        return stats

    def unlearn_stages(self, fake: torch.Tensor, fake_labels: torch.Tensor | None,
                       requests: Mapping[int, tuple[np.ndarray, UnlearnStageOptions]]) -> dict[int, dict[str, float]]:
        """One unlearning stage at each requesting site (index -> its forget ids and stage options), all on the
        same synthetic batch. With ``vmap`` batching, the fake-label stages (the cascade's and `uniform`'s) of
        two or more sites run as one stacked computation, each site with its own step count, λ, y_fake, forget
        and real streams; the other kinds (noise, fnn) run on each site's own `Site`."""
        stacked = sorted(k for k, (_, options) in requests.items() if options.kind == "fake_label")
        if self.batching != "vmap" or len(stacked) < 2:
            stacked = []
        stats = {}
        if stacked:
            stats.update(self._fake_label_stages(fake, fake_labels, {k: requests[k] for k in stacked}))
        for index in sorted(set(requests) - set(stacked)):
            stats[index] = self.unlearn_stage(index, fake, fake_labels, *requests[index])
        return dict(sorted(stats.items()))

    def _fake_label_stages(self, fake: torch.Tensor, fake_labels: torch.Tensor | None,
                           requests: Mapping[int, tuple[np.ndarray, UnlearnStageOptions]]
                           ) -> dict[int, dict[str, float]]:
        """`fedgan.site_unlearning` fake-label stages of several sites as one stacked computation: per D step,
        BCE(D(x_retain), 1) + BCE(D(x̂), 0) + λ·BCE(D(x_forget), y_fake) at every site still within its step count,
        one backward, per-site Adam on the stacked tensors. Each site draws its forget batch, then its retained
        batch, from its own stream, as its `Site` does, so the numbers are the per-site stage's."""
        indices = sorted(requests)
        sites = [self.sites[k] for k in indices]
        options = [requests[k][1] for k in indices]
        fake = fake.to(self.device, torch.float32)
        fake_labels = fake_labels.to(self.device) if (fake_labels is not None and self.conditional) else None
        forget_pos = [torch.from_numpy(site.shard.positions_of(requests[k][0])).to(self.device)
                      for k, site in zip(indices, sites)]
        probes = [positions[:STAGE_PROBE_ITEMS] for positions in forget_pos]
        before = [mean_probability(site, probe) for site, probe in zip(sites, probes)]  # views of the stacked D
        subset = torch.tensor(indices, device=self.device)
        targets = self._stage_targets(fake, fake_labels, subset, options)
        weights = torch.tensor([o.weight for o in options], device=self.device)
        steps = [o.steps for o in options]
        lr = float(sites[0].optimizer.param_groups[0]["lr"])  # the rate the sites' last round used
        for step in range(max(steps)):
            active = torch.tensor([step < count for count in steps])
            grads = self._fake_label_gradients(fake, fake_labels, subset, sites, forget_pos, active, targets,
                                               weights)
            mask = torch.zeros(len(self.sites), dtype=torch.bool)
            mask[subset.cpu()] = active
            self._adam_step(grads, mask, lr)
            for site, on in zip(sites, active.tolist()):
                site.steps += int(on)
        return {k: {"d_forget_before": b, "d_forget_after": mean_probability(site, probe), "fake_label": float(t),
                    "steps": float(count)}
                for k, site, probe, b, t, count in zip(indices, sites, probes, before, targets.tolist(), steps)}

    @torch.no_grad()
    def _stage_targets(self, fake: torch.Tensor, fake_labels: torch.Tensor | None, subset: torch.Tensor,
                       options: list[UnlearnStageOptions]) -> torch.Tensor:
        """Each stage's y_fake: its number, or ``"generated"``: the mean D(x̂) of that site's D on the batch."""
        if any(o.fake_label == "generated" for o in options):
            with self._autocast():
                generated = torch.sigmoid(self._forward_shared({n: p[subset] for n, p in self.params.items()},
                                                               fake, fake_labels)).mean(1).float()
        return torch.stack([generated[i] if o.fake_label == "generated"
                            else torch.tensor(float(o.fake_label), device=self.device)
                            for i, o in enumerate(options)])

    def _fake_label_gradients(self, fake, fake_labels, subset, sites, forget_pos, active, targets, weights
                              ) -> dict[str, torch.Tensor]:
        """The stage loss's gradient at every site of `subset` (zero where a site is done), full-size."""
        batch = self.options.batch_size
        forget, real, has_real = [], [], []
        for site, positions, on in zip(sites, forget_pos, active.tolist()):
            # A site past its step count draws nothing: its stream stays where its own stage left it.
            forget.append(site.shard.sample_from(positions, batch, site.rng) if on else None)
            has_real.append(bool(on and site.shard.has_real))
            real.append(site.sample_real(batch) if has_real[-1] else None)
        forget_x, forget_y, forget_mask = _stack_padded(forget)
        real_x, real_y, _ = _stack_padded(real, like=forget)
        params = {name: p[subset].detach().requires_grad_(True) for name, p in self.params.items()}
        with self._autocast():
            forget_logits = self._forward_each(params, forget_x, forget_y if self.conditional else None)
            real_logits = self._forward_each(params, real_x, real_y if self.conditional else None)
            fake_logits = self._forward_shared(params, fake, fake_labels)
        forget_loss = F.binary_cross_entropy_with_logits(
            forget_logits, targets[:, None].expand_as(forget_logits), reduction="none")
        forget_loss = (forget_loss * forget_mask).sum(1) / forget_mask.sum(1).clamp(min=1)
        real_term = F.softplus(-real_logits).mean(1) * torch.tensor(has_real, device=self.device)
        loss = real_term + F.softplus(fake_logits).mean(1) + weights * forget_loss
        grads = torch.autograd.grad((loss * active.to(self.device, loss.dtype)).sum(), list(params.values()))
        full = {}
        for (name, stacked), grad in zip(self.params.items(), grads):
            full[name] = torch.zeros_like(stacked)
            full[name][subset] = grad
        return full

    def state_dict_of(self, index: int) -> dict[str, Any]:
        """A copy of site `index`'s state in `Site.state_dict` form (snapshots and checkpoints share one format)."""
        return copy.deepcopy(self.materialise(index).state_dict())  # its tensors are views of the stacked state

    def materialise(self, index: int) -> Site:
        """Site `index`'s `Site`, seeing the stacked state: its D's parameters and its Adam moments are views of
        the group's stacked tensors (so its own code updates them in place), and its Adam step is the group's."""
        site = self.sites[index]
        for name, parameter in site.discriminator.named_parameters():
            parameter.data = self.params[name][index]
            site.optimizer.state[parameter] = {
                "step": torch.tensor(float(self.adam_steps[index]), dtype=torch.float32),
                "exp_avg": self.exp_avg[name][index],
                "exp_avg_sq": self.exp_avg_sq[name][index],
            }
        return site

    def absorb(self, index: int) -> None:
        """Take site `index`'s `Site` back into the stacked state: its Adam step, and its weights and moments where
        its own code replaced them (a state load) rather than updating the shared views in place."""
        site = self.sites[index]
        with torch.no_grad():
            for name, parameter in site.discriminator.named_parameters():
                stacked = self.params[name][index]
                if parameter.data_ptr() != stacked.data_ptr():
                    stacked.copy_(parameter.detach())
                state = site.optimizer.state.get(parameter, {})
                for moments, key in ((self.exp_avg, "exp_avg"), (self.exp_avg_sq, "exp_avg_sq")):
                    mine, value = moments[name][index], state.get(key)
                    if value is None:
                        mine.zero_()
                    elif value.data_ptr() != mine.data_ptr():
                        mine.copy_(value)
            first = next(site.discriminator.parameters())
            self.adam_steps[index] = float(site.optimizer.state.get(first, {}).get("step", 0.0))
        self.materialise(index)  # the Site sees the stacked state again

    # ---- the whole group's state at once (snapshots of a forget batch) ----
    def group_state(self) -> dict[str, Any]:
        """A copy of everything the group holds: stacked weights and moments, step counts, each site's RNG and ids."""
        return {
            "params": {n: p.clone() for n, p in self.params.items()},
            "exp_avg": {n: p.clone() for n, p in self.exp_avg.items()},
            "exp_avg_sq": {n: p.clone() for n, p in self.exp_avg_sq.items()},
            "adam_steps": self.adam_steps.clone(),
            "sites": [{"rng": site.rng.get_state(), "steps": site.steps, "forgotten": set(site.shard.forgotten),
                       "excluded": set(site.shard.excluded)} for site in self.sites],
        }

    def load_group_state(self, state: dict[str, Any]) -> None:
        """Return to what `group_state` returned (in place: the sites' views stay valid)."""
        with torch.no_grad():
            for key in ("params", "exp_avg", "exp_avg_sq"):
                for name, value in state[key].items():
                    getattr(self, key)[name].copy_(value)
        self.adam_steps = state["adam_steps"].clone()
        for index, (site, saved) in enumerate(zip(self.sites, state["sites"])):
            self.materialise(index)
            site.rng.set_state(saved["rng"])
            site.steps = saved["steps"]
            site.shard.restore_ids(saved["forgotten"], saved["excluded"])

    def save_state(self, handle: BinaryIO) -> None:
        """The group's state written in the flat format (`fedgan.flat_state`), every tensor on the CPU. The live
        tensors are written as they are (no copy): call it between rounds."""
        state = {"params": self.params, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq,
                 "adam_steps": self.adam_steps,
                 "sites": [{"rng": site.rng.get_state(), "steps": site.steps, "forgotten": site.shard.forgotten,
                            "excluded": site.shard.excluded} for site in self.sites]}
        write_flat(handle, _saved_form(state, on_cpu=self.device.type == "cpu"))

    @staticmethod
    def serialise_state(state: dict[str, Any]) -> bytes:
        """A `group_state` copy in `save_state`'s format (what `load_group_state_bytes` reads)."""
        buffer = io.BytesIO()
        write_flat(buffer, _saved_form(state, on_cpu=False))
        return buffer.getvalue()

    def group_state_bytes(self) -> bytes:
        """`save_state` into bytes."""
        buffer = io.BytesIO()
        self.save_state(buffer)
        return buffer.getvalue()

    def load_state_file(self, path: str | os.PathLike[str]) -> None:
        """Inverse of `save_state` from a file, copied into the group's tensors (a file in the torch.save format
        of earlier versions loads too)."""
        state = read_flat_file(path)
        if state is None:  # the torch.save format of earlier versions
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        self._load_saved(state)

    def load_group_state_bytes(self, data: bytes | bytearray) -> None:
        """Inverse of `group_state_bytes` (bytes in the torch.save format of earlier versions load too)."""
        if is_flat(data):
            self._load_saved(read_flat(data))
        else:
            self._load_saved(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))

    def _load_saved(self, state: dict[str, Any]) -> None:
        for saved in state["sites"]:
            saved["forgotten"] = {int(i) for i in saved["forgotten"].tolist()}
            saved["excluded"] = {int(i) for i in saved["excluded"].tolist()}
        self.load_group_state(state)


def _stack_padded(batches: list[tuple[torch.Tensor, torch.Tensor | None] | None],
                  like: list[tuple[torch.Tensor, torch.Tensor | None] | None] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Per-site batches of unequal sizes (or None: a site that draws nothing) stacked to (K, B_max, ...), zeros
    where a site has fewer items, with the mask of real entries (K, B_max). The padding is masked out of every
    loss, so it changes no number; `like` supplies a shape when every batch is None."""
    present = [b for b in batches if b is not None] or [b for b in (like or []) if b is not None]
    width = max(len(b[0]) for b in present)
    images = present[0][0].new_zeros((len(batches), width, *present[0][0].shape[1:]))
    labels = (present[0][1].new_zeros((len(batches), width)) if present[0][1] is not None else None)
    mask = images.new_zeros((len(batches), width))
    for k, b in enumerate(batches):
        if b is None:
            continue
        images[k, :len(b[0])] = b[0]
        if labels is not None:
            labels[k, :len(b[0])] = b[1]
        mask[k, :len(b[0])] = 1.0
    return images, labels, mask


def _saved_form(state: dict[str, Any], on_cpu: bool) -> dict[str, Any]:
    """A group state as `save_state` writes it: id sets as sorted int64 tensors, every tensor on the CPU."""
    saved = {key: state[key] for key in ("params", "exp_avg", "exp_avg_sq", "adam_steps")}
    saved["sites"] = [{"rng": site["rng"], "steps": site["steps"],
                       "forgotten": torch.tensor(sorted(site["forgotten"]), dtype=torch.int64),
                       "excluded": torch.tensor(sorted(site["excluded"]), dtype=torch.int64)}
                      for site in state["sites"]]
    return saved if on_cpu else to_cpu(saved)
