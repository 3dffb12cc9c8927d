"""A site's local step: what it returns, that its state round-trips exactly, and R1."""
from __future__ import annotations

import torch

from fedgan.engine import build_site
from tests.conftest import tiny_scenario


def test_score_returns_logits_and_per_sample_input_gradients():
    # Prepare
    site = build_site(tiny_scenario(), 0)
    fake = torch.rand(16, 1, 28, 28) * 2 - 1

    # Execute
    reply = site.score(fake, None)

    # Assert
    assert reply.logits.shape == (16,) and reply.input_grads.shape == (16, 1, 28, 28)
    assert torch.isfinite(reply.input_grads).all() and reply.input_grads.abs().sum() > 0
    assert site.steps == 1


def test_state_bytes_round_trip_reproduces_the_next_step_exactly():
    # Prepare: one site steps twice; a second copy restored after the first step must match its second step.
    scenario = tiny_scenario()
    fake1, fake2 = torch.rand(2, 16, 1, 28, 28) * 2 - 1
    site = build_site(scenario, 1)
    site.score(fake1, None)
    saved = site.state_bytes()

    # Execute
    expected = site.score(fake2, None)
    copy = build_site(scenario, 1)
    copy.load_state_bytes(saved)
    got = copy.score(fake2, None)

    # Assert
    assert torch.equal(expected.logits, got.logits)
    assert torch.equal(expected.input_grads, got.input_grads)


def test_r1_penalty_changes_the_discriminator_update():
    fake = torch.rand(16, 1, 28, 28) * 2 - 1
    plain = build_site(tiny_scenario(), 0).score(fake, None)
    with_r1 = build_site(tiny_scenario(training={"r1-gamma": 10.0}), 0).score(fake, None)
    assert not torch.allclose(plain.logits, with_r1.logits)


def test_class_counts_report_sizes_only():
    site = build_site(tiny_scenario(), 2)
    counts = site.class_counts()
    assert counts.sum() == len(site.shard) and counts.shape == (10,)


def test_site_that_forgot_everything_still_answers_but_no_longer_trains():
    # Prepare
    site = build_site(tiny_scenario(), 0)
    site.forget(site.held_ids())
    before = {k: v.clone() for k, v in site.discriminator.state_dict().items()}

    # Execute
    reply = site.score(torch.rand(16, 1, 28, 28) * 2 - 1, None)

    # Assert: an answer (its weight is zero at the server), no D step, and no item left.
    assert reply.logits.shape == (16,) and site.class_counts().sum() == 0
    for key, value in site.discriminator.state_dict().items():
        assert torch.equal(value, before[key])


def test_forgotten_items_survive_a_state_round_trip_and_excluded_items_leave_the_real_stream():
    scenario = tiny_scenario()
    site = build_site(scenario, 1)
    ids = site.held_ids()
    site.forget(ids[:5])
    site.exclude(ids[5:10])
    copy = build_site(scenario, 1)
    copy.load_state_bytes(site.state_bytes())
    assert set(copy.held_ids().tolist()) == set(ids[5:].tolist())
    assert copy.excluded == set(ids[5:10].tolist())
    assert len(copy._active) == len(ids) - 10
