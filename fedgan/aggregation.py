"""How the server turns the sites' answers into the generator's gradient (docs/methods.md, Universal Aggregation).

Each site j returns, for the synthetic batch x̂ the server sent, its logits ℓ_j[b] and the per-sample input
gradients ∂ℓ_j[b]/∂x̂[b]. An aggregator defines the generator loss as a function of the logits only,
L_G = loss(ℓ, log w), so the gradient the server backpropagates through G follows by the chain rule:

    ∂L_G/∂x̂[b] = Σ_j (∂L_G/∂ℓ_j[b]) · ∂ℓ_j[b]/∂x̂[b].

The first factor is computed by autograd on the small (K, B) logit tensor; the second is what the sites sent.
No discriminator weight is needed at the server. Aggregators:

- ``ua``   Universal Aggregation (Zhang et al. 2021), logit form: ℓ_ua = logsumexp_j(ℓ_j + log w_j),
           L_G = mean_b softplus(−ℓ_ua[b]) (non-saturating). Odds add: Φ(D_ua) = Σ_j w_j Φ(D_j).
- ``avg``  Avg-GAN: D_avg = Σ_j w_j σ(ℓ_j), L_G = −mean_b log D_avg[b].
- ``mdgan`` MD-GAN's error feedback (Hardy et al. 2019): L_G = Σ_j w_j mean_b softplus(−ℓ_j[b]); the feedback is
           averaged over workers. Discriminator swapping between workers is not done: here a discriminator's
           weights never leave its site.

Weights w_j[b] may differ per sample (conditional models weight sites per class); see `site_log_weights`.

Pre-aggregation at a node (`sites.pre-aggregate`, docs/methods.md): for each aggregator a group of sites with
within-group weights v_j = r_j / R (R = Σ_j r_j) has an *equivalent site* — one logit ℓ_g[b] and one input gradient
∂ℓ_g[b]/∂x̂[b] — such that the aggregation over groups, weighted by R_g, gives exactly the loss and gradient of the
aggregation over all sites. `Aggregator.equivalent_site` computes it, `pre_aggregate` is what a node sends.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F

from fedgan.registry import Registry
from fedgan.reply_screen import screen_replies
from fedgan.site import GroupReply, SiteReply

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
AGGREGATORS: Registry[Aggregator] = Registry("aggregator")


class Aggregator:
    """One way of combining site logits into a generator loss and a central discriminator probability."""

    name: str = ""

    def loss(self, logits: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
        """Generator loss (scalar) from logits (K, B) and log weights (K, B) (each column sums to 1 in w)."""
        raise NotImplementedError

    def probability(self, logits: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
        """The aggregated discriminator's probability that each sample is real, shape (B,)."""
        raise NotImplementedError

    def generator_gradient(
        self, logits: torch.Tensor, input_grads: torch.Tensor, log_weights: torch.Tensor
    ) -> tuple[float, torch.Tensor]:
        """Loss value and ∂L_G/∂x̂ of shape (B, C, H, W), from logits (K, B) and input_grads (K, B, C, H, W)."""
        logits = logits.detach().double().requires_grad_(True)
        loss = self.loss(logits, log_weights.detach().double())
        (dloss_dlogits,) = torch.autograd.grad(loss, logits)  # (K, B)
        coefficient = dloss_dlogits.to(input_grads.dtype).view(*dloss_dlogits.shape, *([1] * (input_grads.dim() - 2)))
        return float(loss.detach()), (coefficient * input_grads).sum(0)

    def equivalent_site(self, logits: torch.Tensor, input_grads: torch.Tensor, log_weights: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """One site standing for a group: its logits (B,) and input gradients (B, C, H, W), from the group's logits
        (n, B), input gradients (n, B, C, H, W) and within-group log weights (n, B) (each column sums to 1).

        Computed as ℓ_g = link(Σ_j v_j · f(ℓ_j)) for the aggregator's own f, so that replacing the group by this
        site, weighted by the group's total weight, changes neither the loss nor its gradient; and
        ∂ℓ_g/∂x̂ = Σ_j c_j · ∂ℓ_j/∂x̂ with c_j = ∂ℓ_g/∂ℓ_j (a convex combination for every aggregator here).
        """
        logits64 = logits.detach().double().requires_grad_(True)
        equivalent = self._equivalent_logit(logits64, log_weights.detach().double())  # (B,)
        (coefficient,) = torch.autograd.grad(equivalent.sum(), logits64)  # (n, B): sample b's logit uses column b
        coefficient = coefficient.view(*coefficient.shape, *([1] * (input_grads.dim() - 2)))
        grads = (coefficient * input_grads.double()).sum(0)
        return equivalent.detach().float(), grads.float()

    def _equivalent_logit(self, logits: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def register_aggregator(cls: type[Aggregator]) -> type[Aggregator]:
    """Class decorator: make an aggregator selectable by its `name` in scenarios."""
    AGGREGATORS.add(cls.name, cls())
    return cls


@register_aggregator
class UniversalAggregation(Aggregator):
    """UA-GAN: the odds of the central discriminator are the weighted sum of the sites' odds."""

    name = "ua"

    def loss(self, logits: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
        return F.softplus(-self.logit(logits, log_weights)).mean()

    def probability(self, logits: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logit(logits, log_weights))

    @staticmethod
    def logit(logits: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
        """ℓ_ua = logsumexp_j(ℓ_j + log w_j): log of Σ_j w_j exp(ℓ_j), i.e. the log-odds of D_ua."""
        return torch.logsumexp(logits + log_weights, dim=0)

    def _equivalent_logit(self, logits: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
        # The group's odds are the weighted sum of its sites' odds: the log-sum-exp decomposes over groups.
        return self.logit(logits, log_weights)


@register_aggregator
class AverageAggregation(Aggregator):
    """Avg-GAN: the central discriminator is the weighted mean of the sites' probabilities."""

    name = "avg"

    def loss(self, logits: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
        # log Σ_j w_j σ(ℓ_j), computed without leaving log space.
        return -torch.logsumexp(F.logsigmoid(logits) + log_weights, dim=0).mean()

    def probability(self, logits: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid(logits) * log_weights.exp()).sum(0)

    def _equivalent_logit(self, logits: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
        # σ(ℓ_g) = Σ_j v_j σ(ℓ_j): ℓ_g = log p − log(1 − p), both terms in log space.
        return (torch.logsumexp(F.logsigmoid(logits) + log_weights, dim=0)
                - torch.logsumexp(F.logsigmoid(-logits) + log_weights, dim=0))


@register_aggregator
class MDGANAggregation(Aggregator):
    """MD-GAN: each site's own non-saturating loss, feedback averaged with the site weights."""

    name = "mdgan"

    def loss(self, logits: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
        return (log_weights.exp() * F.softplus(-logits)).sum(0).mean()

    def probability(self, logits: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid(logits) * log_weights.exp()).sum(0)

    def _equivalent_logit(self, logits: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
        # softplus(−ℓ_g) = Σ_j v_j softplus(−ℓ_j) =: s, so ℓ_g = −log(expm1(s)) (s floored: a group of
        # sites all certain that the batch is real would give +inf). The equivalent site keeps MD-GAN's loss and
        # gradient exactly; the recorded D_aggregate (Σ_j w_j σ(ℓ_j)) is then over the equivalent sites.
        s = (log_weights.exp() * F.softplus(-logits)).sum(0).clamp_min(1e-300)
        return -torch.log(torch.expm1(s))


def get_aggregator(name: str) -> Aggregator:
    """The registered aggregator called `name` (KeyError if none)."""
    return AGGREGATORS[name]


def site_raw_weights(class_counts: np.ndarray, labels: torch.Tensor | None, mode: str, batch: int) -> np.ndarray:
    """Unnormalised weights r_j[b] (n, batch) of the sites whose class counts (n, C) are given (see
    `site_log_weights` for the modes)."""
    counts = np.asarray(class_counts, dtype=np.float64)
    if mode == "size":
        raw = np.repeat(counts.sum(1, keepdims=True), batch, axis=1)
    elif mode == "uniform":
        raw = np.ones((len(counts), batch))
    elif mode == "per_class":
        if labels is None:
            raise ValueError("per_class site weights need labels (a conditional generator)")
        raw = counts[:, labels.cpu().numpy()]
    else:
        raise KeyError(mode)
    return raw


def normalised_log_weights(raw: np.ndarray, fallback: np.ndarray) -> torch.Tensor:
    """Log of raw (K', B) normalised over the answerers in each column; a column where every raw weight is 0 uses
    `fallback` (K',) instead (1 per site: uniform over the answering sites)."""
    raw = np.asarray(raw, dtype=np.float64)
    fallback = np.asarray(fallback, dtype=np.float64)[:, None]
    total = raw.sum(0, keepdims=True)
    raw = np.where(total > 0, raw, np.broadcast_to(fallback, raw.shape))
    weights = raw / raw.sum(0, keepdims=True)
    with np.errstate(divide="ignore"):  # a site without the class gets weight 0, log weight -inf
        return torch.from_numpy(np.log(weights))


def site_log_weights(
    class_counts: np.ndarray,
    present: np.ndarray,
    labels: torch.Tensor | None,
    mode: str,
) -> torch.Tensor:
    """Log weights (K_present, B) of the answering sites for each sample, each column normalised to sum 1.

    class_counts: (K, C) items per site and class, as reported by the sites. present: indices of the sites that
    answered this round (a missing site is dropped and the rest renormalised, docs/methods.md, Universal Aggregation).
    mode: ``size`` w_j = n_j / n (the paper's π_j); ``uniform`` w_j = 1/K (the reference code's unconditional
    choice); ``per_class`` w_j(y) = n_{j,y} / Σ_k n_{k,y} (the reference code's conditional choice; needs labels).
    Where every answering site has zero weight for a sample's class, that sample falls back to uniform weights
    over the answering sites rather than dividing by zero.
    """
    batch = 1 if labels is None else int(labels.shape[0])
    raw = site_raw_weights(np.asarray(class_counts)[present], labels, mode, batch)
    return normalised_log_weights(raw, np.ones(len(present)))


def answer_log_weights(replies: dict[int, SiteReply], class_counts: np.ndarray, site_ids: list[int],
                       labels: torch.Tensor | None, mode: str, batch: int) -> torch.Tensor:
    """Log weights (len(replies), batch) of a round's answers in key order: a site's from the server's class counts,
    a node's pre-aggregated answer (`GroupReply`) with the total weight of its sites — the same normalised weights
    the sites would have had one by one, summed per group."""
    raw, fallback = [], []
    for key in sorted(replies):
        reply = replies[key]
        if isinstance(reply, GroupReply):
            raw.append(np.broadcast_to(reply.raw_weight.numpy().astype(np.float64), (batch,)))
            fallback.append(float(len(reply.sites)))
        else:
            counts = np.asarray(class_counts)[[site_ids.index(key)]]
            raw.append(np.broadcast_to(site_raw_weights(counts, labels, mode, 1 if labels is None else batch)[0],
                                       (batch,)))
            fallback.append(1.0)
    return normalised_log_weights(np.stack(raw), np.asarray(fallback))


def pre_aggregate(aggregator: Aggregator, replies: dict[int, SiteReply], class_counts: np.ndarray,
                  labels: torch.Tensor | None, mode: str, fake: torch.Tensor, limit: float) -> GroupReply:
    """What a node that pre-aggregates sends for its sites' `replies` (by site id, in the order of the rows of
    `class_counts`, the server's counts of these sites): its screen first (`fedgan.reply_screen`, as the server's),
    then one equivalent site for the accepted sites (`Aggregator.equivalent_site`) under their within-group weights
    r_j / R, with R per sample; where R is 0 (no accepted site has weight for the sample), the equivalent site under
    uniform weights, which the server uses when no answer anywhere has weight for that sample."""
    accepted, rejected = screen_replies(replies, fake, limit)
    order = sorted(replies)
    kept = [site for site in order if site in accepted]
    batch = int(fake.shape[0])
    if not kept:
        empty = torch.zeros(0)
        nan = float("nan")
        return GroupReply(empty, empty, nan, nan, nan, sites=(), raw_weight=empty.double(), rejected=rejected)
    counts = np.asarray(class_counts)[[order.index(site) for site in kept]]
    raw = np.broadcast_to(site_raw_weights(counts, labels, mode, 1 if labels is None else batch), (len(kept), batch))
    total = raw.sum(0)
    log_v = normalised_log_weights(raw, np.ones(len(kept)))
    logits = torch.stack([accepted[s].logits for s in kept])
    input_grads = torch.stack([accepted[s].input_grads for s in kept])
    logit, grads = aggregator.equivalent_site(logits, input_grads, log_v)
    stats = np.mean([[accepted[s].d_loss, accepted[s].d_real, accepted[s].d_fake] for s in kept], axis=0)
    return GroupReply(logit, grads, *map(float, stats), sites=tuple(kept), raw_weight=torch.from_numpy(total.copy()),
                      rejected=rejected)


def site_responsibilities(logits: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """Each site's mean responsibility for G's samples under UA, shape (K,): ρ_j = mean_x softmax_j(ℓ_j(x) + log w_j).

    logits (K, B): the sites' discriminator logits on B samples of G; log_weights (K, B) or (K, 1): the UA log
    weights. With calibrated discriminators, ℓ_j ≈ log p_j / q and softmax_j is w_j p_j / Σ_k w_k p_k, whose mean over
    samples of G equals w_j when G's distribution is the mixture Σ_k w_k p_k; ρ_j / w_j far from 1 says which site's
    data G over- or under-serves, read from the sites' own discriminators, without a retrain (a diagnostic of ours,
    not a paper's measurement; `bench/ua_responsibility.py`).
    """
    if logits.dim() != 2 or log_weights.dim() != 2 or log_weights.shape[0] != logits.shape[0]:
        raise ValueError(f"site_responsibilities: logits (K, B) and log_weights (K, B or 1) expected, got "
                         f"{tuple(logits.shape)} and {tuple(log_weights.shape)}")
    return torch.softmax(logits.double() + log_weights.double(), dim=0).mean(dim=1)
