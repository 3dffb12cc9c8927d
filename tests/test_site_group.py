"""A site group gives the numbers of the per-site `Site` it batches, and the batched engine those of `inprocess`.

Tolerance: float32 rounding of the batched kernels (vmap's grouped convolutions, Adam on stacked tensors) — logits
and losses within 1e-5 absolute, input gradients within 1e-5 of their largest magnitude, over several rounds.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fedgan.batched_engine import BatchedEngine, group_sizes
from fedgan.engine import InProcessEngine, build_site
from fedgan.experiment import run_experiment
from fedgan.site_group import SiteGroup
from fedgan.site_unlearning import UnlearnStageOptions
from tests.conftest import tiny_scenario
from tests.test_unlearning import FAST_UNLEARNING, held_class, site_items

TOLERANCE = 1e-5

VARIANTS = {
    "dcgan": {},
    "dcgan conditional": {"model": {"conditional": True}},
    "dcgan r1, 2 d-steps": {"training": {"r1-gamma": 1.0, "d-steps": 2}},
    "mlp": {"model": {"architecture": "mlp"}},
    "mlp conditional, balanced, r1 on probability": {
        "model": {"architecture": "mlp", "conditional": True},
        "training": {"real-sampling": "balanced", "r1-gamma": 1.0, "r1-target": "probability"}},
}


def assert_same_replies(expected, got):
    for site_id, a in expected.items():
        b = got[site_id]
        torch.testing.assert_close(b.logits, a.logits, atol=TOLERANCE, rtol=0)
        scale = float(a.input_grads.abs().max()) or 1.0
        torch.testing.assert_close(b.input_grads / scale, a.input_grads / scale, atol=TOLERANCE, rtol=0)
        for key in ("d_loss", "d_real", "d_fake"):
            assert getattr(b, key) == pytest.approx(getattr(a, key), abs=TOLERANCE), (site_id, key)


def batches(rounds, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(rounds):
        yield torch.rand(16, 1, 28, 28, generator=generator) * 2 - 1, torch.randint(10, (16,), generator=generator)


@pytest.mark.parametrize("batching", ["vmap", "loop"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_a_group_trains_like_its_sites_one_by_one(variant, batching):
    # Prepare: the same three sites twice, once as plain Sites and once as a group.
    scenario = tiny_scenario(**VARIANTS[variant])
    reference = [build_site(scenario, j) for j in range(3)]
    group = SiteGroup([build_site(scenario, j) for j in range(3)], batching)

    # Execute / Assert: every round's replies agree.
    for round_index, (fake, labels) in enumerate(batches(4), start=1):
        expected = {site.site_id: site.train_round(fake, labels, round_index) for site in reference}
        assert_same_replies(expected, group.train_round(fake, labels, round_index))
    assert [s.steps for s in group.sites] == [s.steps for s in reference]


@pytest.mark.parametrize("kind", ["fake_label", "generated", "noise", "fnn-varying-ranked", "fnn-fixed-all"])
def test_a_group_keeps_each_site_exact_through_exclusion_forgetting_and_every_unlearning_stage(kind):
    # Prepare: site 1 excludes and unlearns items, site 2 forgets all it holds (no real data, no D step): their
    # Adam step counts diverge from site 0's, so each needs its own bias correction.
    scenario = tiny_scenario(model={"conditional": True}, training={"r1-gamma": 1.0})
    reference = [build_site(scenario, j) for j in range(3)]
    group = SiteGroup([build_site(scenario, j) for j in range(3)], "vmap")
    rounds = batches(6, seed=1)
    fake, labels = next(rounds)
    expected = {s.site_id: s.train_round(fake, labels, 1) for s in reference}
    assert_same_replies(expected, group.train_round(fake, labels, 1))
    forget = reference[1].shard.held_ids()[:12]
    if kind.startswith("fnn"):  # forgetting layers in a copy of the site's D, folded back into its weights
        options = UnlearnStageOptions(kind="fnn", steps=3, fnn_layer=kind.removeprefix("fnn-"))
    else:
        options = UnlearnStageOptions(kind="noise" if kind == "noise" else "fake_label", steps=3, noise_steps=2,
                                      fake_label="generated" if kind == "generated" else 0.0)

    # Execute
    for sites in (reference, group.sites):
        sites[1].shard.exclude(forget)
        sites[2].shard.forget(sites[2].shard.held_ids())
    stage_a = reference[1].unlearn_stage(fake, labels, forget, options)
    stage_b = group.unlearn_stage(1, fake, labels, forget, options)
    reference[1].shard.forget(forget)
    group.sites[1].shard.forget(forget)

    # Assert: the stage's statistics, then every later round, agree; the step counts have diverged.
    assert stage_b == pytest.approx(stage_a, abs=TOLERANCE)
    for round_index, (fake, labels) in enumerate(rounds, start=2):
        expected = {s.site_id: s.train_round(fake, labels, round_index) for s in reference}
        assert_same_replies(expected, group.train_round(fake, labels, round_index))
    # (the fnn stage rehearses with its own Adam, so site 1's Adam step count stays with site 0's)
    assert len({float(t) for t in group.adam_steps}) == (2 if kind.startswith("fnn") else 3)


@pytest.mark.parametrize("conditional", [False, True])
def test_fake_label_stages_of_several_sites_run_stacked_with_each_sites_own_numbers(conditional):
    # Prepare: four sites; three unlearn at once with different step counts, λ, y_fake (one "generated") and forget
    # set sizes (12, 80 and 5 items: unequal forget batches), and one of them retains nothing (no real term).
    scenario = tiny_scenario(sites={"count": 4}, model={"conditional": conditional},
                             training={"r1-gamma": 1.0, "batch-size": 16})
    reference = [build_site(scenario, j) for j in range(4)]
    group = SiteGroup([build_site(scenario, j) for j in range(4)], "vmap")
    rounds = batches(4, seed=2)
    fake, labels = next(rounds)
    assert_same_replies({s.site_id: s.train_round(fake, labels, 1) for s in reference},
                        group.train_round(fake, labels, 1))
    held = reference[3].shard.held_ids()
    forget = {0: reference[0].shard.held_ids()[:12], 1: reference[1].shard.held_ids()[:80], 3: held}
    options = {0: UnlearnStageOptions(steps=3, weight=1.0, fake_label=0.0),
               1: UnlearnStageOptions(steps=5, weight=0.5, fake_label="generated"),
               3: UnlearnStageOptions(steps=2, weight=2.0, fake_label=0.25)}
    for sites in (reference, group.sites):
        for k, ids in forget.items():
            sites[k].shard.exclude(ids)

    # Execute
    expected = {k: reference[k].unlearn_stage(fake, labels, forget[k], options[k]) for k in forget}
    got = group.unlearn_stages(fake, labels, {k: (forget[k], options[k]) for k in forget})

    # Assert: the stage statistics, the step counts and every later round agree with the sites' own stages.
    assert sorted(got) == sorted(expected)
    for k in forget:
        assert got[k] == pytest.approx(expected[k], abs=TOLERANCE), k
    assert [s.steps for s in group.sites] == [s.steps for s in reference]
    assert group.adam_steps.tolist() == [float(s.optimizer.state[next(s.discriminator.parameters())]["step"])
                                         for s in reference]
    for round_index, (fake, labels) in enumerate(rounds, start=2):
        expected_round = {s.site_id: s.train_round(fake, labels, round_index) for s in reference}
        assert_same_replies(expected_round, group.train_round(fake, labels, round_index))


def test_group_state_round_trips_and_matches_the_site_state_format():
    # Prepare
    scenario = tiny_scenario()
    group = SiteGroup([build_site(scenario, j) for j in range(3)], "vmap")
    fake, labels = next(batches(1))
    group.train_round(fake, labels, 1)
    saved = group.group_state()
    site_state = group.state_dict_of(2)

    # Execute: train on, then go back; and load a Site's state into a fresh site of the same id.
    after = group.train_round(fake, labels, 2)
    group.load_group_state(saved)
    again = group.train_round(fake, labels, 2)
    fresh = build_site(scenario, 2)
    fresh.load_state_dict(site_state)

    # Assert
    assert_same_replies(after, again)
    assert_same_replies({2: fresh.train_round(fake, labels, 2)}, {2: again[2]})


def test_group_sizes_follow_sites_per_node():
    assert group_sizes(10, 1) == [10]
    assert group_sizes(10, 4) == [4, 4, 2]


def test_auto_batching_is_vmap_on_a_gpu_and_the_loop_on_a_cpu():
    from fedgan.site_group import resolve_batching

    assert resolve_batching("auto", torch.device("cpu")) == "loop"
    assert resolve_batching("auto", torch.device("cuda")) == "vmap"
    assert resolve_batching("vmap", torch.device("cpu")) == "vmap"


def test_the_batched_engine_runs_a_scenario_with_a_forget_request_as_inprocess_does(tmp_path):
    # Prepare: unequal groups (4 sites in groups of 3 and 1), a class request at one site and item requests at two
    # more, served together: sites 0 and 1 of the first group run their stages stacked.
    base = tiny_scenario(sites={"count": 4}, training={"rounds": 4}, evaluation={"every": 0},
                         unlearning={**FAST_UNLEARNING, "methods": ["cascaded", "retrain"]})
    klass = held_class(base, 0)
    items = site_items(base, 3, 4)
    scenario = tiny_scenario(sites={"count": 4, "per-node": 3}, training={"rounds": 4}, evaluation={"every": 0},
                             engine={"batching": "vmap"},
                             unlearning={**FAST_UNLEARNING, "methods": ["cascaded", "retrain"]},
                             forget=[{"site": 0, "class": klass, "round": 2}, {"site": 3, "items": items, "round": 2},
                                     {"site": 1, "items": site_items(base, 1, 4), "round": 2}])
    batched = scenario.replace(engine=scenario.engine.__class__(name="batched", device="cpu", batching="vmap"))

    # Execute
    a = run_experiment(scenario, InProcessEngine(scenario, "cpu"), tmp_path / "inprocess")
    b = run_experiment(batched, BatchedEngine(batched, "cpu"), tmp_path / "batched")

    # Assert: the same rounds and certificates, to float tolerance.
    def rounds(path):
        lines = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
        return [x for x in lines if x["kind"] == "round"]

    ra, rb = rounds(tmp_path / "inprocess"), rounds(tmp_path / "batched")
    for key in ("generator_loss", "discriminator_loss", "d_aggregate"):
        np.testing.assert_allclose([r[key] for r in rb], [r[key] for r in ra], rtol=1e-4, atol=1e-5, err_msg=key)
    assert b["engine"] == "batched" and len(a["unlearning"]) == len(b["unlearning"]) == 3
    for x, y in zip(a["unlearning"], b["unlearning"]):
        for key in ("forget_class_rate", "fid_lenet_retained"):
            if key in x:
                for side in ("before", "after", "retrain"):
                    assert y[key][side] == pytest.approx(x[key][side], rel=1e-3, abs=1e-3), (key, side)
    assert b["fid_lenet"] == pytest.approx(a["fid_lenet"], rel=1e-3)
