"""The server's round loop: the central generator trained by aggregation over the sites' discriminators.

One round (docs/methods.md, "Universal Aggregation"; the reference code's training step):
  1. sample z (and labels y) and generate the synthetic batch x̂ = G(z, y);
  2. send x̂ (and y) to every site; each takes its D step(s) and returns ℓ_j(x̂) and ∂ℓ_j/∂x̂ (`SiteEngine.train_round`);
  3. aggregate: the aggregator's loss on the logits gives ∂L_G/∂x̂ (`Aggregator.generator_gradient`);
  4. step G with x̂.backward(∂L_G/∂x̂);
  5. every `evaluation.every` rounds, measure and log.
The loop knows nothing of Flower: it talks to a `SiteEngine`, so the Flower ServerApp and the in-process engine
run exactly this code.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fedgan.aggregation import answer_log_weights, get_aggregator, site_responsibilities
from fedgan.engine import SiteEngine, SiteInfo
from fedgan.faults import fault_point
from fedgan.models import Generator, build_generator
from fedgan.precision import autocast
from fedgan.reply_screen import screen_replies
from fedgan.schedule import learning_rate_factor
from fedgan.seeding import derive_seed, torch_generator
from fedgan.site import GroupReply, SiteReply

if TYPE_CHECKING:  # annotations only (the scenario schema validates against registries that import this module)
    from fedgan.scenario import Scenario


@dataclass
class RoundRecord:
    """What one round measured (one line of metrics.jsonl)."""

    round: int
    generator_loss: float
    discriminator_loss: float
    d_real: float
    d_fake: float
    d_aggregate: float
    sites_answered: int
    seconds: float
    rejected: dict[str, str] = field(default_factory=dict)  # site -> why its reply was not used (reply_screen)
    dropped: dict[str, str] = field(default_factory=dict)  # site -> why it gave no reply (engine: error, timeout)

    def as_dict(self) -> dict[str, Any]:
        record = {"kind": "round", **self.__dict__}
        for key in ("rejected", "dropped"):
            if not record[key]:
                record.pop(key)
        return record


def screen_answers(answers: dict[int, SiteReply], fake: torch.Tensor, limit: float
                   ) -> tuple[dict[int, SiteReply], dict[int, str]]:
    """The answers G may use and the rejected sites with their reasons (`fedgan.reply_screen`): a pre-aggregated
    node's answer (`GroupReply`) brings the sites its own screen dropped, and when the server's screen rejects it,
    every site it stands for is rejected; a node whose screen kept none of its sites sends an empty answer."""
    rejected: dict[int, str] = {}
    for answer in answers.values():
        if isinstance(answer, GroupReply):
            rejected.update(answer.rejected or {})
    kept = {key: a for key, a in answers.items() if not isinstance(a, GroupReply) or a.sites}
    replies, refused = screen_replies(kept, fake, limit)
    for key, reason in refused.items():
        sites = kept[key].sites if isinstance(kept[key], GroupReply) else (key,)
        rejected.update({site: reason for site in sites})
    return replies, dict(sorted(rejected.items()))


def answer_responsibilities(replies: dict[int, SiteReply], logits: torch.Tensor, log_w: torch.Tensor
                            ) -> dict[int, tuple[float, float, tuple[int, ...]]]:
    """Per answer key (in key order, as `logits` and `log_w`), its UA responsibility for the round's batch
    (`site_responsibilities`), its mean normalised weight and the sites behind it: ρ / w above 1 says G's batch leans
    towards that answer's data more than its weight asks."""
    rho = site_responsibilities(logits, log_w)
    weight = log_w.double().exp().mean(dim=1)
    return {key: (float(r), float(w), tuple(replies[key].sites) if isinstance(replies[key], GroupReply) else (key,))
            for key, r, w in zip(sorted(replies), rho, weight)}


def scaled_log_weights(log_w: torch.Tensor, scales: list[float]) -> torch.Tensor:
    """Log weights (K', B) with answer k's weight times scales[k], renormalised over the answers per sample."""
    shifted = log_w.double() + torch.log(torch.tensor(scales, dtype=torch.float64))[:, None]
    return shifted - torch.logsumexp(shifted, dim=0, keepdim=True)


def site_mean(values: list[float], sites: list[int]) -> float:
    """The mean over sites of per-answer means, answer k standing for `sites[k]` sites."""
    return float(np.mean(np.repeat(values, sites)))


class GeneratorServer:
    """The server's side of the federation: G, its optimizer, the sampling RNG and the site weights."""

    def __init__(
        self,
        scenario: Scenario,
        sites: list[SiteInfo],
        image_shape: tuple[int, int, int],
        num_classes: int,
        device: torch.device,
    ) -> None:
        self.scenario = scenario
        self.device = device
        self.image_shape = image_shape
        self.num_classes = num_classes
        self.conditional = scenario.model.conditional
        self.aggregator = get_aggregator(scenario.training.aggregator)
        self.reset(sites)

    def reset(self, sites: list[SiteInfo]) -> None:
        """Round 0: a freshly initialised G, its optimizer and sampling RNG, and the weights of `sites`.

        Seeded from the scenario only, so a reset server is identical to a new one (what a retrain needs).
        """
        s, t = self.scenario, self.scenario.training
        self.generator: Generator = build_generator(
            s.model, self.image_shape, self.num_classes, derive_seed(s.seed, "generator")
        ).to(self.device)
        self.optimizer = torch.optim.Adam(self.generator.parameters(), lr=t.lr_generator, betas=(t.beta1, t.beta2))
        self.class_counts = np.stack([info.class_counts for info in sites])  # (K, C), sizes only
        self.site_ids = [info.site_id for info in sites]
        self.rng = torch_generator(s.seed, "server", "latent")
        self.round = 0
        # Per answer key, a factor on its aggregation weight for G's step while a forget request's repair balance
        # runs (None otherwise: training reads and scales nothing), and what the last such round read off the
        # answers under the unscaled weights.
        self.answer_weight_scale: dict[int, float] | None = None
        self.last_responsibilities: dict[int, tuple[float, float, tuple[int, ...]]] = {}  # key -> (ρ, w, sites)
        total = self.class_counts.sum(0).astype(np.float64)
        self.label_prior = torch.from_numpy(total / total.sum())

    # ---- sampling ----
    def sample_labels(self, batch: int, generator: torch.Generator) -> torch.Tensor | None:
        """Labels for a conditional G: uniform over classes, or the federation's class shares."""
        if not self.conditional:
            return None
        if self.scenario.training.label_sampling == "data":
            return torch.multinomial(self.label_prior, batch, replacement=True, generator=generator)
        return torch.randint(self.num_classes, (batch,), generator=generator)

    @torch.no_grad()
    def sample(self, count: int, seed_tag: str, labels: torch.Tensor | None = None) -> torch.Tensor:
        """`count` images from G on CPU, from their own RNG stream (evaluation never moves the training stream).

        Sampled in batches of the training batch size in training mode, so batch-norm statistics are those G
        was trained with.
        """
        rng = torch_generator(self.scenario.seed, "server", "sample", seed_tag)
        batch = self.scenario.training.batch_size
        if labels is None:
            labels = self.sample_labels(count, rng)
        out = []
        for start in range(0, count, batch):
            stop = min(start + batch, count)
            z = torch.randn(stop - start, self.generator.latent_dim, generator=rng).to(self.device)
            y = labels[start:stop].to(self.device) if labels is not None else None
            out.append(self.generator(z, y).cpu())
        return torch.cat(out)

    # ---- one round ----
    def step(self, engine: SiteEngine, update_generator: bool = True) -> RoundRecord:
        """One generator step against the aggregated site discriminators (`update_generator=False`: the sites'
        half of the round only: G and its optimizer state stay as they are)."""
        started = time.perf_counter()
        t = self.scenario.training
        self.round += 1
        # ---------------- generate the synthetic batch and send it to the sites ----------------
        if t.lr_schedule != "constant":
            for group in self.optimizer.param_groups:
                group["lr"] = t.lr_generator * learning_rate_factor(t.lr_schedule, self.round, t.rounds)
        z = torch.randn(t.batch_size, self.generator.latent_dim, generator=self.rng).to(self.device)
        labels = self.sample_labels(t.batch_size, self.rng)
        with autocast(self.device, self.scenario.engine.precision), torch.set_grad_enabled(update_generator):
            fake = self.generator(z, labels.to(self.device) if labels is not None else None)  # G returns float32
        sent = fake.detach().cpu()
        replies, rejected = screen_answers(engine.train_round(self.round, sent, labels, weights=self.class_counts),
                                           sent, t.reply_limit)
        fault_point("round")  # the sites have stepped, G has not
        if not replies:  # nobody to learn from this round: G stays as it is, the round is recorded as empty
            nan = float("nan")
            return RoundRecord(self.round, nan, nan, nan, nan, nan, 0, time.perf_counter() - started,
                               rejected={str(site): reason for site, reason in sorted(rejected.items())},
                               dropped={str(site): reason for site, reason in
                                        sorted(getattr(engine, "dropped", {}).items())})
        # ---------------- aggregate: the generator's gradient from logits and input gradients ----------------
        # (a pre-aggregated node's answer is one equivalent site for its sites, weighted by their total weight)
        logits = torch.stack([replies[s].logits for s in sorted(replies)])  # (K', B)
        input_grads = torch.stack([replies[s].input_grads for s in sorted(replies)])  # (K', B, C, H, W)
        log_w = answer_log_weights(replies, self.class_counts, self.site_ids, labels, t.site_weights, t.batch_size)
        if self.answer_weight_scale is not None:  # the repair balance: read ρ / w, then scale the weights
            self.last_responsibilities = answer_responsibilities(replies, logits, log_w)
            log_w = scaled_log_weights(log_w, [self.answer_weight_scale.get(key, 1.0) for key in sorted(replies)])
        loss, grad = self.aggregator.generator_gradient(logits, input_grads, log_w)
        # ---------------- update G ----------------
        if update_generator:
            self.optimizer.zero_grad(set_to_none=True)
            fake.backward(grad.to(self.device, fake.dtype))
            self.optimizer.step()
        d_aggregate = float(self.aggregator.probability(logits.double(), log_w.double()).mean())
        answered = list(replies.values())
        sites = [len(r.sites) if isinstance(r, GroupReply) else 1 for r in answered]
        return RoundRecord(
            round=self.round,
            generator_loss=loss,
            discriminator_loss=site_mean([r.d_loss for r in answered], sites),
            d_real=site_mean([r.d_real for r in answered], sites),
            d_fake=site_mean([r.d_fake for r in answered], sites),
            d_aggregate=d_aggregate,
            sites_answered=int(sum(sites)),
            seconds=time.perf_counter() - started,
            rejected={str(site): reason for site, reason in sorted(rejected.items())},
            dropped={str(site): reason for site, reason in sorted(getattr(engine, "dropped", {}).items())},
        )

    # ---- persistence ----
    def state_dict(self) -> dict[str, Any]:
        """G, its optimizer, the sampling RNG and the round: the server's part of a checkpoint."""
        return {
            "generator": self.generator.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.get_state(),
            "round": self.round,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        self.generator.load_state_dict(state["generator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.set_state(state["rng"])
        self.round = int(state["round"])
