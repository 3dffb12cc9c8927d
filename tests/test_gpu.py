"""The GPU path (run where CUDA is visible; skipped elsewhere): sites on CUDA give the CPU numbers, their state
moves between devices, and forget requests (snapshots, restores, stages) run with sites on the GPU."""
from __future__ import annotations

import pytest
import torch

from fedgan.batched_engine import BatchedEngine
from fedgan.engine import InProcessEngine, build_site
from fedgan.experiment import run_experiment
from fedgan.site_group import SiteGroup
from tests.conftest import tiny_scenario
from tests.test_unlearning import FAST_UNLEARNING, site_items

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_a_site_state_saved_on_the_gpu_loads_on_the_cpu_and_back():
    scenario = tiny_scenario()
    on_gpu = build_site(scenario, 0, "cuda")
    fake = torch.rand(16, 1, 28, 28) * 2 - 1
    on_gpu.train_round(fake, None)
    on_cpu = build_site(scenario, 0, "cpu")
    on_cpu.load_state_bytes(on_gpu.state_bytes())
    back = build_site(scenario, 0, "cuda")
    back.load_state_bytes(on_cpu.state_bytes())
    a, b = on_gpu.train_round(fake, None), back.train_round(fake, None)
    torch.testing.assert_close(a.logits, b.logits)


@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_the_batched_engine_on_the_gpu_serves_a_forget_request_with_the_cpu_numbers(batching, tmp_path):
    base = tiny_scenario(training={"rounds": 4})
    items = site_items(base, 1, 6)
    scenario = tiny_scenario(training={"rounds": 4}, evaluation={"every": 0}, engine={"batching": batching},
                             unlearning={**FAST_UNLEARNING, "methods": ["cascaded", "retrain"]},
                             forget=[{"site": 1, "items": items, "round": 2}])
    cpu = run_experiment(scenario, InProcessEngine(scenario, "cpu"), tmp_path / "cpu")
    gpu = run_experiment(scenario, BatchedEngine(scenario, "cuda"), tmp_path / "gpu")
    assert gpu["fid_lenet"] == pytest.approx(cpu["fid_lenet"], rel=1e-2)
    (a,), (b,) = cpu["unlearning"], gpu["unlearning"]
    assert b["fid_lenet_retained"]["after"] == pytest.approx(a["fid_lenet_retained"]["after"], rel=1e-2)


def test_bfloat16_on_the_gpu_runs_the_group_in_bfloat16_and_stays_close_to_float32():
    exact = SiteGroup([build_site(tiny_scenario(), j, "cuda") for j in range(3)], "vmap")
    mixed_scenario = tiny_scenario(engine={"precision": "bfloat16"})
    mixed = SiteGroup([build_site(mixed_scenario, j, "cuda") for j in range(3)], "vmap")
    fake = torch.rand(16, 1, 28, 28) * 2 - 1
    a, b = exact.train_round(fake, None, 1), mixed.train_round(fake, None, 1)
    for site_id, reply in a.items():
        assert b[site_id].logits.dtype == torch.float32
        assert not torch.equal(b[site_id].logits, reply.logits)
        torch.testing.assert_close(b[site_id].logits, reply.logits, atol=0.05, rtol=0.02)
