"""Proofs of forgetting on Ray workers: the same certificates as in line, concurrently, a consistent ledger."""
from __future__ import annotations

import dataclasses

import torch

from fedgan.engine import InProcessEngine, load_federation_data, site_positions
from fedgan.experiment import run_experiment
from fedgan.forget import ForgetLedger
from scenarios.runner import run_scenario
from server.proof_workers import RayProofPool, resolve_workers
from tests.conftest import tiny_scenario

TIMING_FIELDS = {"seconds", "retrain_seconds", "speedup_vs_retrain", "speedup_rounds_vs_retrain", "ran",
                 "retrain_ran"}


def proof_scenario(workers, requests, methods=("cascaded", "finetune", "retrain"), rounds=6, engine="inprocess"):
    return tiny_scenario(
        training={"rounds": rounds},
        evaluation={"every": 0},
        engine={"name": engine},
        unlearning={"methods": list(methods), "stages": 2, "stage-d-steps": 2, "stage-g-rounds": 1,
                    "relearn-rounds": 2, "eval-samples": 128,
                    "lira-references": 0, "downstream-samples": 128, "downstream-epochs": 1,
                    "mia-size": 8, "proof-workers": workers},
        forget=requests,
    )


def held_class(site: int) -> int:
    scenario = proof_scenario(0, [])
    labels = load_federation_data(scenario).train.labels[torch.from_numpy(site_positions(scenario)[site])]
    return int(torch.bincount(labels).argmax())


def without_timings(entries):
    return [{k: v for k, v in entry.items() if k not in TIMING_FIELDS} for entry in entries]


def overlap(a, b) -> bool:
    return a["started_at"] < b["finished_at"] and b["started_at"] < a["finished_at"]


def test_two_ray_workers_give_the_certificates_of_serving_in_line_and_overlap_in_time(tmp_path, one_thread):
    # Prepare: a class request and an item request in two rounds, three methods each.
    klass = held_class(0)
    requests = [{"site": 0, "class": klass, "round": 2}, {"site": 1, "items": [], "round": 3}]
    items = site_positions(proof_scenario(0, []))[1][:6]
    ids = load_federation_data(proof_scenario(0, [])).train.ids[torch.from_numpy(items)].tolist()
    requests[1]["items"] = ids

    # Execute: the proofs in line (the federation waits), then on two Ray workers.
    in_line = run_scenario(proof_scenario(0, requests), tmp_path / "in-line")
    on_workers = run_scenario(proof_scenario(2, requests), tmp_path / "workers")

    # Assert: identical certificates (every field but timings); the final federation is the same too.
    assert len(on_workers["unlearning"]) == 4
    assert without_timings(on_workers["unlearning"]) == without_timings(in_line["unlearning"])
    assert on_workers["fid_lenet"] == in_line["fid_lenet"]
    # The proof tasks ran on workers, two of them at the same time; every request is certified once.
    ledger = ForgetLedger(tmp_path / "workers" / "ledger.jsonl")
    views = list(ledger.states().values())
    assert [v["state"] for v in views] == ["certified", "certified"]
    for view in views:
        tasks = view["proof_tasks"]
        assert {t["task"] for t in tasks} == {"before", "cascaded", "finetune", "retrain"}
        assert all(t["worker"] != "inline" for t in tasks)
        assert any(overlap(a, b) for i, a in enumerate(tasks) for b in tasks[i + 1:])
        assert view["finished_at"] <= view["proved_at"]
    states = [e["state"] for e in ledger.entries()]
    assert states.count("certified") == 2 and states.count("done") == 2


def test_a_request_arriving_while_a_proof_runs_is_served_without_waiting_for_it(tmp_path, one_thread):
    # Prepare: two class requests one round apart; each proof (retrain) takes longer than a round.
    requests = [{"site": 0, "class": held_class(0), "round": 2}, {"site": 1, "class": held_class(1), "round": 3}]
    scenario = proof_scenario(2, requests, methods=("cascaded", "retrain"))

    # Execute
    run_scenario(scenario, tmp_path)

    # Assert: the second request was done before the first's certificate came back; both end certified, and the
    # second retrain started without the first's items only if they were not already forgotten (consistent ids).
    first, second = ForgetLedger(tmp_path / "ledger.jsonl").states().values()
    assert second["finished_at"] < first["proved_at"]
    assert first["state"] == second["state"] == "certified"
    forgotten = ForgetLedger(tmp_path / "ledger.jsonl").forgotten_ids()
    for view in (first, second):
        for site, ids in view["forget_ids"].items():
            assert set(ids) <= forgotten[int(site)]


def test_a_failing_proof_is_recorded_as_proof_failed_and_the_federation_has_still_forgotten(tmp_path):
    # Prepare: proof tasks that cannot run (their scenario names a dataset the worker does not know).
    scenario = proof_scenario(1, [{"site": 0, "class": held_class(0), "round": 2}], methods=("finetune", "retrain"))
    class BrokenTasks(RayProofPool):
        def submit(self, task):
            super().submit(dataclasses.replace(
                task, scenario_json=task.scenario_json.replace('"synthetic"', '"no-such-dataset"')))

    pool = BrokenTasks(1)

    # Execute
    summary = run_experiment(scenario, InProcessEngine(scenario, "cpu"), tmp_path, proofs=pool)

    # Assert
    (view,) = ForgetLedger(tmp_path / "ledger.jsonl").states().values()
    assert view["state"] == "proof-failed" and "no-such-dataset" in view["reason"]
    assert view["forget_ids"] and not summary.get("unlearning")


def test_auto_workers_is_one_per_proof_threads_of_the_machine():
    assert resolve_workers("auto", 1, cpus=8) == 8
    assert resolve_workers("auto", 3, cpus=8) == 2
    assert resolve_workers("auto", 4, cpus=2) == 1
    assert resolve_workers(3, 1, cpus=2) == 3


def test_retrain_seeds_give_the_same_spread_in_line_and_on_workers_and_each_is_that_seeds_retrain(tmp_path, one_thread):
    # Prepare: one class request, retrain under three training seeds (the scenario's 3, then 4 and 5).
    klass = held_class(0)
    requests = [{"site": 0, "class": klass, "round": 2}]

    def spread_scenario(workers):
        scenario = proof_scenario(workers, requests, methods=("cascaded", "retrain"))
        return scenario.replace(unlearning=dataclasses.replace(scenario.unlearning, retrain_seeds=3))

    # Execute: in line, on two workers, and (the definition) a run of seed 4 on seed 3's partition, retrain alone
    in_line = run_scenario(spread_scenario(0), tmp_path / "in-line")
    on_workers = run_scenario(spread_scenario(2), tmp_path / "workers")
    base = proof_scenario(0, requests, methods=("retrain",))
    seed_4 = base.replace(seed=4, partition=dataclasses.replace(base.partition, seed=3))
    alone = run_scenario(seed_4, tmp_path / "seed-4")

    # Assert: the same certificates either way; the reference is the first of the spread, seed 4's retrain the second
    assert without_timings(on_workers["unlearning"]) == without_timings(in_line["unlearning"])
    (entry,) = in_line["unlearning"]
    spread = entry["retrain_spread"]
    assert spread["training_seeds"] == [3, 4, 5]
    rates = spread["forget_class_rate"]["values"]
    assert rates[0] == entry["forget_class_rate"]["retrain"]
    assert rates[1] == alone["unlearning"][0]["forget_class_rate"]["after"]
    assert len(set(spread["fid_lenet_retained"]["values"])) == 3  # three different federations
    fid = spread["fid_lenet_retained"]
    assert abs(fid["after_gap_in_sd"] - (entry["fid_lenet_retained"]["after"] - fid["mean"]) / fid["sd"]) < 1e-12
    assert spread["retained_share_l1_between_retrains"]["values"] and spread["retained_share_l1_to_retrain_mean"] >= 0
    report = (tmp_path / "in-line" / "unlearning.md").read_text()
    assert "Retrain under 3 training seeds (3, 4, 5" in report and "| forget_class_rate |" in report
    (view,) = ForgetLedger(tmp_path / "workers" / "ledger.jsonl").states().values()
    assert {t["task"] for t in view["proof_tasks"]} == {"before", "cascaded", "retrain", "retrain-seed-4",
                                                        "retrain-seed-5"}
