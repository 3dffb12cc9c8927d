"""Forget requests end to end (in process): every method serves a request, the ledger records it, items go away."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fedgan.engine import InProcessEngine, site_positions
from fedgan.experiment import run_experiment
from fedgan.forget import ForgetLedger, ForgetRequest, drop_request
from fedgan.unlearning import METHODS
from tests.conftest import tiny_scenario

CERTIFICATE_FIELDS = ("request", "method", "fid_lenet_retained", "downstream_accuracy", "seconds",
                      "speedup_vs_retrain")
FAST_UNLEARNING = {"stages": 2, "stage-d-steps": 2, "stage-g-rounds": 1, "relearn-rounds": 1, "noise-steps": 2,
                   "eval-samples": 64, "downstream-samples": 64, "downstream-epochs": 1, "mia-size": 8}


def forget_scenario(methods, forget, rounds=4):
    return tiny_scenario(training={"rounds": rounds}, evaluation={"every": 0},
                         unlearning={**FAST_UNLEARNING, "methods": methods}, forget=forget)


def held_class(scenario, site):
    from fedgan.engine import load_federation_data

    labels = load_federation_data(scenario).train.labels.numpy()[site_positions(scenario)[site]]
    return int(np.bincount(labels).argmax())


def site_items(scenario, site, count):
    from fedgan.engine import load_federation_data

    return [int(i) for i in load_federation_data(scenario).train.ids.numpy()[site_positions(scenario)[site][:count]]]


def _ids_of_class(scenario, site, klass):
    from fedgan.engine import load_federation_data

    train = load_federation_data(scenario).train
    positions = site_positions(scenario)[site]
    return [int(i) for i, y in zip(train.ids.numpy()[positions], train.labels.numpy()[positions]) if y == klass]


def _checkpoint_sites(run_dir):
    import torch

    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["sites"]


@pytest.mark.parametrize("method", sorted(m for m in METHODS if m != "retrain"))
def test_every_method_serves_a_class_request_and_is_certified_against_retrain(method, tmp_path):
    # Prepare: site 0 forgets its most common class at round 2.
    base = forget_scenario([method, "retrain"], [])
    klass = held_class(base, 0)
    scenario = forget_scenario([method, "retrain"], [{"site": 0, "class": klass, "round": 2}])
    # Execute
    summary = run_experiment(scenario, InProcessEngine(scenario, "cpu"), tmp_path)

    # Assert: one certificate with the contract's fields; the class is gone from site 0's shard for good.
    (entry,) = summary["unlearning"]
    for field in CERTIFICATE_FIELDS + ("forget_class_rate",):
        assert field in entry, field
    assert entry["method"] == method
    assert set(entry["forget_class_rate"]) == {"before", "after", "retrain", "gap_to_retrain"}
    assert entry["rounds"] >= 1 and entry["retrain_rounds"] == 2
    forgotten = set(_checkpoint_sites(tmp_path)[0]["forgotten"].tolist())
    assert forgotten == set(_ids_of_class(scenario, 0, klass))
    state = ForgetLedger(tmp_path / "ledger.jsonl").states()
    assert [s["state"] for s in state.values()] == ["done"]
    assert (tmp_path / "unlearning.md").read_text().count(method) >= 1


def test_item_request_reports_membership_inference_and_deletes_the_items(tmp_path):
    # Prepare
    base = forget_scenario(["cascaded", "retrain"], [])
    items = site_items(base, 1, 10)
    scenario = forget_scenario(["cascaded", "retrain"], [{"site": 1, "items": items, "round": 2}])
    engine = InProcessEngine(scenario, "cpu")

    # Execute
    summary = run_experiment(scenario, engine, tmp_path)

    # Assert
    assert engine._snapshots == {}  # no state copy outlives the request (under Flower they ride every message)
    (entry,) = summary["unlearning"]
    for key in ("mia_auc_forget_vs_nonmember", "mia_auc_member_vs_nonmember"):
        assert 0.0 <= entry[key]["before"] <= 1.0 and 0.0 <= entry[key]["retrain"] <= 1.0
    assert set(_checkpoint_sites(tmp_path)[1]["forgotten"].tolist()) == set(items)  # only the ids remain
    ledger = ForgetLedger(tmp_path / "ledger.jsonl")
    assert ledger.forgotten_ids()[1] == set(items)


def test_bad_requests_are_refused_with_a_reason_and_duplicates_are_idempotent(tmp_path):
    # Prepare: an item site 2 does not hold, a class site 0 does not hold, and the same valid request twice.
    base = forget_scenario(["finetune"], [])
    foreign = site_items(base, 1, 1)
    missing_class = next(c for c in range(10) if not _ids_of_class(base, 0, c))
    good = {"site": 1, "items": site_items(base, 1, 3), "round": 2}
    scenario = forget_scenario(["finetune"], [
        {"site": 2, "items": foreign, "round": 2}, {"site": 0, "class": missing_class, "round": 2}, good,
        {**good, "round": 3},
    ])

    # Execute
    run_experiment(scenario, InProcessEngine(scenario, "cpu"), tmp_path)

    # Assert
    states = ForgetLedger(tmp_path / "ledger.jsonl").states()
    refused = [s for s in states.values() if s["state"] == "refused"]
    done = [s for s in states.values() if s["state"] == "done"]
    assert len(refused) == 2 and len(done) == 1
    assert any("does not hold item" in s["reason"] for s in refused)
    assert any(f"no item of class {missing_class}" in s["reason"] for s in refused)
    lines = (tmp_path / "ledger.jsonl").read_text().splitlines()
    assert sum(json.loads(line)["state"] == "received" for line in lines) == 3  # the duplicate was not re-received


def test_external_request_in_the_inbox_is_served_at_the_next_round(tmp_path):
    # Prepare: a request dropped by `fedgan forget` before round 1.
    scenario = forget_scenario(["finetune"], [], rounds=3)
    items = site_items(scenario, 2, 4)
    drop_request(tmp_path, ForgetRequest(site=2, items=tuple(items), source="external"))

    # Execute
    summary = run_experiment(scenario, InProcessEngine(scenario, "cpu"), tmp_path)

    # Assert
    (entry,) = summary["unlearning"]
    assert entry["request"]["source"] == "external" and entry["request"]["items"] == items
    assert not list((tmp_path / "inbox").glob("*.json"))  # taken


def test_several_sites_in_the_same_round_are_served_together(tmp_path):
    base = forget_scenario(["cascaded"], [])
    requests = [{"site": s, "items": site_items(base, s, 5), "round": 2} for s in range(3)]
    scenario = forget_scenario(["cascaded"], requests)
    summary = run_experiment(scenario, InProcessEngine(scenario, "cpu"), tmp_path)
    assert len(summary["unlearning"]) == 3
    stats = summary["unlearning"][0]["details"]["stage_stats"][0]
    assert {"site_0", "site_1", "site_2"} <= set(stats)  # one stage served all three sites
