"""Mixed precision (`[engine] precision`): off by default, bfloat16 autocast for the training forward passes when
asked, float32 wherever numbers leave a computation (replies, G's batch, losses).

On CPU these tests check the plumbing and that bfloat16 stays close to float32; the speed it buys is a GPU matter
(bench/gpu_check.sh).
"""
from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch

from fedgan.engine import InProcessEngine, build_site
from fedgan.errors import ScenarioError
from fedgan.experiment import run_experiment
from fedgan.precision import PRECISIONS, autocast
from fedgan.site_group import SiteGroup
from fedgan.site_unlearning import UnlearnStageOptions
from tests.conftest import tiny_scenario
from tests.test_site_group import batches
from tests.test_unlearning import FAST_UNLEARNING, held_class

BF16 = {"engine": {"name": "inprocess", "device": "cpu", "precision": "bfloat16"}}


def test_float32_is_the_default_and_changes_nothing():
    assert tiny_scenario().engine.precision == "float32" and PRECISIONS[0] == "float32"
    assert isinstance(autocast("cpu", "float32"), contextlib.nullcontext)


def test_an_unknown_precision_is_refused_naming_the_field():
    with pytest.raises(ScenarioError, match=r"engine\.precision.*float16"):
        tiny_scenario(engine={"precision": "float16"})
    with pytest.raises(ValueError, match="bfloat16"):
        autocast("cpu", "half")


def test_under_bfloat16_the_convolutions_run_in_bfloat16_and_the_logits_come_back_float32():
    # Prepare: record the dtype each convolution computes in.
    site = build_site(tiny_scenario(**BF16), 0)
    seen = []
    for conv in site.discriminator.convs:
        conv.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))

    # Execute
    reply = site.train_round(torch.rand(16, 1, 28, 28) * 2 - 1, None)

    # Assert
    assert set(seen) == {torch.bfloat16}
    assert reply.logits.dtype == reply.input_grads.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in site.discriminator.parameters())
    assert torch.isfinite(reply.input_grads).all() and np.isfinite(reply.d_loss)


@pytest.mark.parametrize("training", [{}, {"r1-gamma": 1.0, "d-steps": 2}])
def test_bfloat16_site_rounds_stay_close_to_float32(training):
    # Prepare: the same site twice, float32 and bfloat16.
    exact = build_site(tiny_scenario(training=training), 0)
    mixed = build_site(tiny_scenario(training=training, **BF16), 0)

    # Execute / Assert: bfloat16 keeps 8 bits of mantissa, so logits differ by about 1 % of their spread over a few
    # rounds, no more (a bound that fails if the precision is applied wrongly, e.g. to the optimizer state).
    for round_index, (fake, _labels) in enumerate(batches(3), start=1):
        a, b = exact.train_round(fake, None, round_index), mixed.train_round(fake, None, round_index)
        spread = float(a.logits.abs().max())
        assert not torch.equal(a.logits, b.logits)
        assert float((a.logits - b.logits).abs().max()) < 0.05 * spread + 1e-3
        cosine = torch.nn.functional.cosine_similarity(a.input_grads.flatten(), b.input_grads.flatten(), dim=0)
        assert float(cosine) > 0.99


def test_a_bfloat16_group_matches_its_bfloat16_sites():
    # Prepare: the group's stacked computation runs under the same autocast as each Site.
    scenario = tiny_scenario(model={"conditional": True}, **BF16)
    reference = [build_site(scenario, j) for j in range(3)]
    group = SiteGroup([build_site(scenario, j) for j in range(3)], "vmap")

    # Execute / Assert: equal up to bfloat16 rounding of differently batched kernels.
    for round_index, (fake, labels) in enumerate(batches(2), start=1):
        expected = {s.site_id: s.train_round(fake, labels, round_index) for s in reference}
        got = group.train_round(fake, labels, round_index)
        for site_id, a in expected.items():
            torch.testing.assert_close(got[site_id].logits, a.logits, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("kind", ["fake_label", "noise", "fnn"])
def test_every_unlearning_stage_runs_under_bfloat16(kind):
    site = build_site(tiny_scenario(**BF16), 0)
    forget = site.shard.held_ids()[:8]
    site.shard.exclude(forget)
    stats = site.unlearn_stage(torch.rand(16, 1, 28, 28) * 2 - 1, None, forget,
                               UnlearnStageOptions(kind=kind, steps=2, noise_steps=2))
    assert stats["steps"] > 0 and all(np.isfinite(v) for v in stats.values())
    assert all(torch.isfinite(p).all() for p in site.discriminator.parameters())


def test_a_bfloat16_run_with_a_forget_request_completes_and_differs_from_float32(tmp_path):
    # Prepare
    base = dict(training={"rounds": 3}, evaluation={"every": 0},
                unlearning={**FAST_UNLEARNING, "methods": ["cascaded", "retrain"]})
    klass = held_class(tiny_scenario(**base), 0)
    forget = [{"site": 0, "class": klass, "round": 2}]
    exact, mixed = tiny_scenario(**base, forget=forget), tiny_scenario(**base, forget=forget, **BF16)

    # Execute
    a = run_experiment(exact, InProcessEngine(exact, "cpu"), tmp_path / "float32")
    b = run_experiment(mixed, InProcessEngine(mixed, "cpu"), tmp_path / "bfloat16")

    # Assert: finite, certified, and not the float32 numbers (the option is live).
    def losses(path):
        lines = [json.loads(x) for x in (path / "metrics.jsonl").read_text().splitlines()]
        return [x["generator_loss"] for x in lines if x["kind"] == "round"]

    assert np.isfinite(losses(tmp_path / "bfloat16")).all()
    assert losses(tmp_path / "bfloat16") != losses(tmp_path / "float32")
    assert len(b["unlearning"]) == len(a["unlearning"]) == 1 and np.isfinite(b["fid_lenet"])
