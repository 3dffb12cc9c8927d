"""The repair balance: weight scales from smoothed responsibility ratios, and G's step under scaled weights."""
from __future__ import annotations

import math

import pytest
import torch

from fedgan.federation import answer_responsibilities, scaled_log_weights
from fedgan.site import SiteReply
from fedgan.unlearning.repair_balance import MAX_SCALE, SMOOTHING, ResponsibilityBalance


def test_an_over_served_answer_gets_a_smaller_weight_and_the_scales_are_clipped():
    balance = ResponsibilityBalance(gain=1.0)
    balance.observe({0: (0.15, 0.10, (0,)), 1: (0.05, 0.10, (1,)), 2: (0.90, 0.10, (2,))})
    scales = balance.scales()
    assert scales[0] == pytest.approx(1 / 1.5) and scales[1] == pytest.approx(2.0)
    assert scales[2] == pytest.approx(1 / MAX_SCALE)  # ρ / w of 9 would be a factor 1/9: clipped


def test_the_ratio_is_smoothed_over_rounds_and_only_the_named_sites_are_balanced():
    balance = ResponsibilityBalance(gain=2.0, sites=[4])
    balance.observe({4: (0.12, 0.10, (4,)), 5: (0.30, 0.10, (5,))})
    balance.observe({4: (0.10, 0.10, (4,)), 5: (0.30, 0.10, (5,))})
    assert balance.ratios == {4: pytest.approx(1.1)}  # the plain mean of the first rounds
    assert balance.scales() == {4: pytest.approx(1.1 ** -2.0)}
    for _ in range(20):
        balance.observe({4: (0.10, 0.10, (4,))})
    before = balance.ratios[4]
    balance.observe({4: (0.20, 0.10, (4,))})  # past 1 / SMOOTHING rounds: exponential smoothing
    assert balance.ratios[4] == pytest.approx((1 - SMOOTHING) * before + SMOOTHING * 2.0)
    grouped = ResponsibilityBalance(gain=1.0, sites=[4])
    grouped.observe({3: (0.2, 0.1, (3, 4)), 7: (0.2, 0.1, (7, 8))})  # a node's answer counts if it holds a site named
    assert set(grouped.ratios) == {3}


def test_scaled_log_weights_renormalise_and_a_scale_of_one_changes_nothing():
    log_w = torch.log(torch.tensor([[0.5, 0.2], [0.3, 0.2], [0.2, 0.6]], dtype=torch.float64))
    assert torch.allclose(scaled_log_weights(log_w, [1.0, 1.0, 1.0]), log_w)
    scaled = scaled_log_weights(log_w, [2.0, 1.0, 1.0]).exp()
    assert torch.allclose(scaled.sum(0), torch.ones(2, dtype=torch.float64))
    assert float(scaled[0, 0]) == pytest.approx(1.0 / 1.5)


def test_answer_responsibilities_read_rho_and_the_mean_weight_of_each_answer():
    replies = {s: SiteReply(torch.zeros(4), torch.zeros(4, 1, 2, 2), 0.0, 0.0, 0.0) for s in (2, 5)}
    logits = torch.tensor([[0.0] * 4, [math.log(3.0)] * 4])  # site 5's D scores every sample 3 times as its own
    log_w = torch.log(torch.full((2, 4), 0.5, dtype=torch.float64))
    readings = answer_responsibilities(replies, logits, log_w)
    assert readings[2] == (pytest.approx(0.25), pytest.approx(0.5), (2,))
    assert readings[5] == (pytest.approx(0.75), pytest.approx(0.5), (5,))
