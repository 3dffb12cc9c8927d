"""Aggregation math: UA's gradient vs autograd, the disjoint-support example, weight renormalisation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedgan.aggregation import (
    AGGREGATORS,
    answer_log_weights,
    get_aggregator,
    pre_aggregate,
    site_log_weights,
    site_responsibilities,
)
from fedgan.site import SiteReply


def _central_loss_through_sites(name: str, sites: list[nn.Module], x: torch.Tensor, log_w: torch.Tensor):
    """The aggregator's loss computed centrally, with autograd through every site's D to the images."""
    logits = torch.stack([site(x).squeeze(1) for site in sites])
    return get_aggregator(name).loss(logits, log_w)


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_server_gradient_equals_autograd_through_central_loss(name):
    # Prepare: three small "discriminators" and a batch; weights differ per site and per sample.
    torch.manual_seed(0)
    sites = [nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 1)).double() for _ in range(3)]
    x = torch.randn(5, 1, 3, 4, dtype=torch.float64, requires_grad=True)
    log_w = torch.log_softmax(torch.randn(3, 5, dtype=torch.float64), dim=0)

    # Execute: the federated path (sites send logits and per-sample input gradients) ...
    logits, grads = [], []
    for site in sites:
        xi = x.detach().clone().requires_grad_(True)
        out = site(xi).squeeze(1)
        (g,) = torch.autograd.grad(out.sum(), xi)
        logits.append(out.detach())
        grads.append(g)
    loss, grad = get_aggregator(name).generator_gradient(torch.stack(logits), torch.stack(grads), log_w)
    # ... and the central path (autograd through all discriminators at once).
    central = _central_loss_through_sites(name, sites, x, log_w)
    (expected,) = torch.autograd.grad(central, x)

    # Assert
    assert loss == pytest.approx(float(central.detach()), rel=1e-12)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)


def test_ua_gradient_matches_closed_form():
    # Prepare (docs/methods.md, Universal Aggregation):
    # ∂L/∂x[b] = (σ(ℓ_ua[b]) − 1)/B · Σ_j softmax_j(ℓ_j + log π_j)[b] · ∂ℓ_j[b]/∂x[b]
    torch.manual_seed(1)
    K, B = 4, 6
    logits = torch.randn(K, B, dtype=torch.float64) * 3
    grads = torch.randn(K, B, 2, 2, dtype=torch.float64)
    log_pi = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)).view(K, 1).expand(K, B)

    # Execute
    _, grad = get_aggregator("ua").generator_gradient(logits, grads, log_pi)

    # Assert
    l_ua = torch.logsumexp(logits + log_pi, 0)
    s = torch.softmax(logits + log_pi, 0)
    closed = ((torch.sigmoid(l_ua) - 1) / B).view(B, 1, 1) * (s.view(K, B, 1, 1) * grads).sum(0)
    torch.testing.assert_close(grad, closed)


def test_disjoint_support_avg_gives_one_third_and_ua_one_half():
    # Prepare: two sites with disjoint supports, equal weights, a perfect generator q = p = (p1 + p2)/2.
    # At x in site 1's support the optimal D1 = p1/(p1 + q) = 2/3 and D2 = 0.
    d1 = 2.0 / 3.0  # and D2 = 0, a logit of -60
    logits = torch.tensor([[math.log(d1 / (1 - d1))], [-60.0]], dtype=torch.float64)
    log_w = torch.log(torch.tensor([[0.5], [0.5]], dtype=torch.float64))

    # Execute
    avg = float(get_aggregator("avg").probability(logits, log_w))
    ua = float(get_aggregator("ua").probability(logits, log_w))

    # Assert: Avg-GAN's central D is biased (1/3); UA recovers the optimal 1/2 (the true p is a fixed point).
    assert avg == pytest.approx(1 / 3, abs=1e-12)
    assert ua == pytest.approx(1 / 2, abs=1e-12)


def test_one_site_ua_equals_that_site():
    logits = torch.randn(1, 7, dtype=torch.float64)
    log_w = torch.zeros(1, 7, dtype=torch.float64)
    torch.testing.assert_close(get_aggregator("ua").probability(logits, log_w), torch.sigmoid(logits[0]))


def test_weights_renormalise_when_a_site_is_missing():
    # Prepare: three sites of sizes 10, 30, 60; site 1 does not answer.
    counts = np.array([[10, 0], [20, 10], [0, 60]])

    # Execute
    all_sites = site_log_weights(counts, np.array([0, 1, 2]), None, "size").exp()
    without_1 = site_log_weights(counts, np.array([0, 2]), None, "size").exp()

    # Assert
    torch.testing.assert_close(all_sites[:, 0], torch.tensor([0.1, 0.3, 0.6], dtype=torch.float64))
    torch.testing.assert_close(without_1[:, 0], torch.tensor([10 / 70, 60 / 70], dtype=torch.float64))


def test_per_class_weights_follow_class_counts_and_fall_back_to_uniform():
    # Prepare: class 0 held by sites 0 and 1 (1:3); class 1 only by site 2.
    counts = np.array([[10, 0], [30, 0], [0, 50]])
    labels = torch.tensor([0, 1])

    # Execute
    w = site_log_weights(counts, np.array([0, 1, 2]), labels, "per_class").exp()
    w_missing = site_log_weights(counts, np.array([0, 1]), labels, "per_class").exp()

    # Assert: columns sum to one; the class held only by a missing site falls back to uniform.
    torch.testing.assert_close(w[:, 0], torch.tensor([0.25, 0.75, 0.0], dtype=torch.float64))
    torch.testing.assert_close(w[:, 1], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(w_missing[:, 1], torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_ua_is_stable_where_probabilities_saturate():
    # The probability form rounds σ(ℓ) to 1 for ℓ ≳ 17 in float32; the logit form keeps a finite, nonzero gradient.
    logits = torch.tensor([[40.0], [-40.0]])
    grads = torch.ones(2, 1, 1, 1, 1)
    loss, grad = get_aggregator("ua").generator_gradient(logits, grads, torch.log(torch.full((2, 1), 0.5)))
    assert math.isfinite(loss) and torch.isfinite(grad).all()


# ---- pre-aggregation at a node: a group's equivalent site gives the all-site aggregation exactly ----

def _site_replies(count: int, batch: int, seed: int, spread: float = 3.0) -> dict[int, SiteReply]:
    generator = torch.Generator().manual_seed(seed)
    return {site: SiteReply(torch.randn(batch, generator=generator) * spread,
                            torch.randn(batch, 1, 2, 2, generator=generator), 0.1 * site, 0.5, 0.4)
            for site in range(count)}


@pytest.mark.parametrize("mode", ["size", "uniform", "per_class"])
@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_pre_aggregated_groups_give_the_server_side_aggregation(name, mode):
    # Prepare: 6 sites in unequal groups {0, 1, 2}, {3, 4}, {5}; per-class counts with zeros, so that some samples
    # weigh nothing at a whole group and the last label is held by no site (the uniform fallback).
    batch, aggregator = 8, get_aggregator(name)
    replies = _site_replies(6, batch, seed=1)
    counts = np.array([[5, 0, 3, 0], [2, 0, 0, 0], [0, 0, 7, 0], [0, 4, 0, 0], [1, 6, 0, 0], [0, 0, 9, 0]])
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]) if mode == "per_class" else None
    fake = torch.zeros(batch, 1, 2, 2)
    groups = [[0, 1, 2], [3, 4], [5]]
    site_ids = list(range(6))

    # Execute: the server aggregating every site, and the server aggregating the three groups' answers.
    log_w = answer_log_weights(replies, counts, site_ids, labels, mode, batch)
    expected = aggregator.generator_gradient(torch.stack([r.logits for r in replies.values()]),
                                             torch.stack([r.input_grads for r in replies.values()]), log_w)
    answers = {min(g): pre_aggregate(aggregator, {s: replies[s] for s in g}, counts[g], labels, mode, fake, 1e4)
               for g in groups}
    group_w = answer_log_weights(answers, counts, site_ids, labels, mode, batch)
    got = aggregator.generator_gradient(torch.stack([a.logits for a in answers.values()]),
                                        torch.stack([a.input_grads for a in answers.values()]), group_w)

    # Assert: the same loss and gradient (float32 rounding of the equivalent sites), and the same D statistics.
    assert got[0] == pytest.approx(expected[0], rel=1e-5)
    torch.testing.assert_close(got[1], expected[1], atol=1e-5 * float(expected[1].abs().max()), rtol=1e-5)
    assert [a.sites for a in answers.values()] == [tuple(g) for g in groups]
    assert float(np.mean(np.repeat([a.d_loss for a in answers.values()], [3, 2, 1]))) == pytest.approx(0.25)
    if name != "mdgan":  # the central probability too (MD-GAN's is recorded over the equivalent sites)
        torch.testing.assert_close(
            aggregator.probability(torch.stack([a.logits for a in answers.values()]).double(), group_w),
            aggregator.probability(torch.stack([r.logits for r in replies.values()]).double(), log_w))


def test_a_node_screens_its_sites_before_it_aggregates():
    replies = _site_replies(3, 4, seed=2)
    replies[1].logits = torch.full((4,), float("nan"))
    answer = pre_aggregate(get_aggregator("ua"), replies, np.ones((3, 2), int), None, "size",
                           torch.zeros(4, 1, 2, 2), 1e4)
    assert answer.sites == (0, 2) and set(answer.rejected) == {1} and "NaN" in answer.rejected[1]
    assert torch.isfinite(answer.logits).all() and answer.raw_weight.tolist() == [4.0] * 4
    everyone_broken = {s: SiteReply(torch.full((4,), float("nan")), r.input_grads, 0.0, 0.0, 0.0)
                       for s, r in replies.items()}
    empty = pre_aggregate(get_aggregator("ua"), everyone_broken, np.ones((3, 2), int), None, "size",
                          torch.zeros(4, 1, 2, 2), 1e4)
    assert empty.sites == () and sorted(empty.rejected) == [0, 1, 2]


def test_site_responsibilities_equal_the_weights_when_every_site_scores_alike_and_follow_a_confident_site():
    log_w = torch.log(torch.tensor([[0.5], [0.3], [0.2]]))
    alike = torch.full((3, 8), 0.7)
    assert torch.allclose(site_responsibilities(alike, log_w), torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64))
    confident = alike.clone()
    confident[2] = 30.0  # site 2's discriminator calls every sample its own
    rho = site_responsibilities(confident, log_w)
    assert rho[2] > 0.999 and abs(float(rho.sum()) - 1.0) < 1e-12


def test_site_responsibilities_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="site_responsibilities"):
        site_responsibilities(torch.zeros(3, 8), torch.zeros(2, 1))
