"""Load: 200 forget requests over one run — scheduled, and from four `fedgan forget` processes at once — all end in
the ledger exactly once: the valid ones certified, the others refused with their reasons (slow)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedgan.engine import InProcessEngine, load_federation_data, site_positions
from fedgan.experiment import run_experiment
from fedgan.forget import ForgetLedger
from tests.conftest import tiny_scenario

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_two_hundred_requests_from_the_schedule_and_four_concurrent_processes_all_end_once(tmp_path):
    # Prepare: 150 valid one-item requests (each its own item) and 50 that name an item the site does not hold;
    # half scheduled over rounds 1-50, half dropped by four processes while the run trains.
    base = tiny_scenario()
    train = load_federation_data(base).train
    held = {site: train.ids.numpy()[site_positions(base)[site]] for site in range(3)}
    valid = [(site, int(item)) for site in range(3) for item in held[site][:50]]
    invalid = [(site, int(held[(site + 1) % 3][60 + k])) for k, site in enumerate([0, 1, 2] * 17)][:50]
    requests = valid + invalid
    order = np.random.default_rng(0).permutation(len(requests))
    requests = [requests[i] for i in order]
    scheduled, external = requests[:100], requests[100:]
    forget = [{"site": site, "items": [item], "round": 1 + k // 2} for k, (site, item) in enumerate(scheduled)]
    scenario = tiny_scenario(training={"rounds": 60, "checkpoint-every": 0}, evaluation={"every": 0},
                             unlearning={"methods": ["finetune"], "relearn-rounds": 1, "eval-samples": 32,
                                         "lira-references": 0,
                                         "downstream-samples": 32, "downstream-epochs": 1, "mia-size": 4,
                                         "proof-workers": 0}, forget=forget)
    out = tmp_path / "run"
    processes: list[subprocess.Popen] = []

    def start_droppers(done: int, total: int, line: dict) -> None:
        if done == 1:  # the run directory exists: four processes drop 25 requests each, concurrently
            for share in range(4):
                script = "\n".join(
                    f"main(['forget', '--run', {str(out)!r}, '--site', '{site}', '--items', '{item}'])"
                    for site, item in external[share::4])
                processes.append(subprocess.Popen(
                    [sys.executable, "-c", f"from scenarios.cli import main\n{script}"], cwd=ROOT,
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        if done == 40:  # every drop is in the inbox before the run's last inbox check
            for process in processes:
                assert process.wait(timeout=300) == 0, process.stderr.read()

    # Execute
    summary = run_experiment(scenario, InProcessEngine(scenario, "cpu"), out, progress=start_droppers)

    # Assert: 200 requests received, each ending once; the valid ones certified, the rest refused with a reason.
    ledger = ForgetLedger(out / "ledger.jsonl")
    views = ledger.states()
    assert len(views) == 200
    ends = [e for e in ledger.entries() if e["state"] in ("certified", "refused", "proof-failed")]
    assert sorted(e["request_id"] for e in ends) == sorted(views)  # exactly one end per request
    certified = [v for v in views.values() if v["state"] == "certified"]
    refused = [v for v in views.values() if v["state"] == "refused"]
    assert len(certified) == 150 and len(refused) == 50
    assert all("does not hold item" in v["reason"] for v in refused)
    assert len(summary["unlearning"]) == 150
    assert sum(v["request"]["source"] == "external" for v in views.values()) == 100
    forgotten = ledger.forgotten_ids()
    assert sum(len(ids) for ids in forgotten.values()) == 150
