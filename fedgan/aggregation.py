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
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F

from fedgan.registry import Registry

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


@register_aggregator
class AverageAggregation(Aggregator):
    """Avg-GAN: the central discriminator is the weighted mean of the sites' probabilities."""

    name = "avg"

    def loss(self, logits: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
        # log Σ_j w_j σ(ℓ_j), computed without leaving log space.
        return -torch.logsumexp(F.logsigmoid(logits) + log_weights, dim=0).mean()

    def probability(self, logits: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid(logits) * log_weights.exp()).sum(0)


@register_aggregator
class MDGANAggregation(Aggregator):
    """MD-GAN: each site's own non-saturating loss, feedback averaged with the site weights."""

    name = "mdgan"

    def loss(self, logits: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
        return (log_weights.exp() * F.softplus(-logits)).sum(0).mean()

    def probability(self, logits: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid(logits) * log_weights.exp()).sum(0)


def get_aggregator(name: str) -> Aggregator:
    """The registered aggregator called `name` (KeyError if none)."""
    return AGGREGATORS[name]


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
    counts = np.asarray(class_counts, dtype=np.float64)[present]  # (K', C)
    batch = 1 if labels is None else int(labels.shape[0])
    if mode == "size":
        raw = np.repeat(counts.sum(1, keepdims=True), batch, axis=1)
    elif mode == "uniform":
        raw = np.ones((len(present), batch))
    elif mode == "per_class":
        if labels is None:
            raise ValueError("per_class site weights need labels (a conditional generator)")
        raw = counts[:, labels.cpu().numpy()]
    else:
        raise KeyError(mode)
    total = raw.sum(0, keepdims=True)
    raw = np.where(total > 0, raw, 1.0)
    weights = raw / raw.sum(0, keepdims=True)
    with np.errstate(divide="ignore"):  # a site without the class gets weight 0, log weight -inf
        return torch.from_numpy(np.log(weights))
