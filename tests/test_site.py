"""A site's local step: what it returns, that its state round-trips exactly, and R1."""
from __future__ import annotations

import pytest
import torch

from fedgan.engine import build_site
from fedgan.scenario import PartitionConfig
from tests.conftest import tiny_scenario


def test_score_returns_logits_and_per_sample_input_gradients():
    # Prepare
    site = build_site(tiny_scenario(), 0)
    fake = torch.rand(16, 1, 28, 28) * 2 - 1

    # Execute
    reply = site.train_round(fake, None)

    # Assert
    assert reply.logits.shape == (16,) and reply.input_grads.shape == (16, 1, 28, 28)
    assert torch.isfinite(reply.input_grads).all() and reply.input_grads.abs().sum() > 0
    assert site.steps == 1


def test_state_bytes_round_trip_reproduces_the_next_step_exactly():
    # Prepare: one site steps twice; a second copy restored after the first step must match its second step.
    scenario = tiny_scenario()
    fake1, fake2 = torch.rand(2, 16, 1, 28, 28) * 2 - 1
    site = build_site(scenario, 1)
    site.train_round(fake1, None)
    saved = site.state_bytes()

    # Execute
    expected = site.train_round(fake2, None)
    copy = build_site(scenario, 1)
    copy.load_state_bytes(saved)
    got = copy.train_round(fake2, None)

    # Assert
    assert torch.equal(expected.logits, got.logits)
    assert torch.equal(expected.input_grads, got.input_grads)


def test_r1_penalty_changes_the_discriminator_update():
    fake = torch.rand(16, 1, 28, 28) * 2 - 1
    plain = build_site(tiny_scenario(), 0).train_round(fake, None)
    with_r1 = build_site(tiny_scenario(training={"r1-gamma": 10.0}), 0).train_round(fake, None)
    assert not torch.allclose(plain.logits, with_r1.logits)


def test_class_counts_report_sizes_only():
    site = build_site(tiny_scenario(), 2)
    counts = site.shard.class_counts()
    assert counts.sum() == len(site.shard) and counts.shape == (10,)


def test_site_that_forgot_everything_still_answers_but_no_longer_trains():
    # Prepare
    site = build_site(tiny_scenario(), 0)
    site.shard.forget(site.shard.held_ids())
    before = {k: v.clone() for k, v in site.discriminator.state_dict().items()}

    # Execute
    reply = site.train_round(torch.rand(16, 1, 28, 28) * 2 - 1, None)

    # Assert: an answer (its weight is zero at the server), no D step, and no item left.
    assert reply.logits.shape == (16,) and site.shard.class_counts().sum() == 0
    for key, value in site.discriminator.state_dict().items():
        assert torch.equal(value, before[key])


def test_forgotten_items_survive_a_state_round_trip_and_excluded_items_leave_the_real_stream():
    scenario = tiny_scenario()
    site = build_site(scenario, 1)
    ids = site.shard.held_ids()
    site.shard.forget(ids[:5])
    site.shard.exclude(ids[5:10])
    copy = build_site(scenario, 1)
    copy.load_state_bytes(site.state_bytes())
    assert set(copy.shard.held_ids().tolist()) == set(ids[5:].tolist())
    assert copy.shard.excluded == set(ids[5:10].tolist())
    assert copy.shard.active_count == len(ids) - 10


def test_r1_on_the_probability_is_a_different_penalty_from_r1_on_the_logit():
    fake = torch.rand(16, 1, 28, 28) * 2 - 1
    on_logit = build_site(tiny_scenario(training={"r1-gamma": 10.0}), 0).train_round(fake, None)
    on_probability = build_site(tiny_scenario(training={"r1-gamma": 10.0, "r1-target": "probability"}), 0).train_round(
        fake, None)
    assert not torch.allclose(on_logit.logits, on_probability.logits)


def test_balanced_real_sampling_draws_every_held_label_about_equally_often():
    # Dirichlet shards are skewed; balanced sampling evens out the labels of the real stream.
    def drawn_label_counts(real_sampling: str) -> tuple[torch.Tensor, torch.Tensor]:
        scenario = tiny_scenario(model={"conditional": True}, training={"real-sampling": real_sampling}).replace(
            partition=PartitionConfig("dirichlet", {"alpha": 0.3}))
        site = build_site(scenario, 0)
        held = torch.unique(site.shard.labels)
        _, labels = site.sample_real(4000)
        return torch.bincount(labels, minlength=site.shard.num_classes)[held].float(), held

    balanced, held = drawn_label_counts("balanced")
    shard, _ = drawn_label_counts("shard")
    assert len(held) >= 3
    assert balanced.min() > 0.8 * balanced.mean()
    assert shard.max() > 2 * shard.min()  # the shard itself is skewed


def test_linear_decay_keeps_the_rate_for_the_first_half_then_falls_to_zero():
    from fedgan.schedule import learning_rate_factor

    assert learning_rate_factor("constant", 90, 100) == 1.0
    assert learning_rate_factor("linear_decay", 50, 100) == 1.0
    assert learning_rate_factor("linear_decay", 76, 100) == pytest.approx(0.5)
    assert learning_rate_factor("linear_decay", 100, 100) == pytest.approx(0.02)
    site = build_site(tiny_scenario(training={"lr-schedule": "linear_decay", "rounds": 10}), 0)
    site.train_round(torch.zeros(4, 1, 28, 28), None, round_index=8)
    assert site.optimizer.param_groups[0]["lr"] == pytest.approx(site.options.lr * 0.6)


def test_state_bytes_hold_cpu_tensors_only_and_load_onto_the_sites_device():
    # The GPU path: a state serialised by a site on any device loads on the CPU first (the RNG is a CPU generator).
    import io

    site = build_site(tiny_scenario(), 0)
    site.train_round(torch.rand(16, 1, 28, 28) * 2 - 1, None)
    state = torch.load(io.BytesIO(site.state_bytes()), map_location=None, weights_only=True)

    def devices(value):
        if isinstance(value, torch.Tensor):
            yield value.device.type
        elif isinstance(value, dict):
            for item in value.values():
                yield from devices(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                yield from devices(item)

    assert set(devices(state)) == {"cpu"}
    copy = build_site(tiny_scenario(), 0)
    copy.load_state_bytes(site.state_bytes())
    assert copy.rng.get_state().device.type == "cpu"
    assert next(copy.discriminator.parameters()).device == copy.device
