"""The real Flower path: ServerApp + ClientApp on Flower's Ray simulation engine, against the in-process engine.

One simulation (about 20–30 s on 2 cores) pins three promises at once: the Flower run completes and writes the
results contract; it gives the same numbers as the in-process engine for the same seed; and the messages carry
only synthetic images, labels, logits and input gradients — no discriminator weight, no real image.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import torch

from fedgan import protocol as P
from fedgan.engine import build_site, load_federation_data, site_positions
from fedgan.node_state import NodeStateStore
from fedgan.results import SUMMARY_FIELDS
from scenarios.runner import run_scenario
from tests.conftest import tiny_scenario

pytestmark = pytest.mark.flower


def _round_lines(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if line["kind"] == "round"]


FORGET = {"methods": ["cascaded", "retrain"], "stages": 2, "stage-d-steps": 2, "stage-g-rounds": 1,
          "eval-samples": 64, "lira-references": 0, "downstream-samples": 64, "downstream-epochs": 1, "mia-size": 8}


@pytest.fixture(scope="module")
def flower_and_inprocess(tmp_path_factory):
    # Site 1 forgets five of its items after round 2 (cascaded and retrain), through every forget message type.
    base = tiny_scenario()
    items = [int(i) for i in load_federation_data(base).train.ids.numpy()[site_positions(base)[1][:5]]]
    scenario = tiny_scenario(training={"rounds": 4}, engine={"name": "flower", "num-cpus": 1}, unlearning=FORGET,
                             forget=[{"site": 1, "items": items, "round": 2}])
    out = tmp_path_factory.mktemp("runs")
    wire_log: list[dict] = []
    flower = run_scenario(scenario, out / "flower", wire_log=wire_log)
    inprocess = run_scenario(scenario.replace(engine=scenario.engine.__class__(name="inprocess", device="cpu")),
                             out / "inprocess")
    return scenario, out, flower, inprocess, wire_log


def test_flower_run_writes_the_results_contract(flower_and_inprocess):
    scenario, out, flower, _, _ = flower_and_inprocess
    assert flower["engine"] == "flower"
    for field in SUMMARY_FIELDS:
        assert field in flower, field
    assert flower["rounds"] == 4 and flower["num_sites"] == scenario.sites.count
    for name in ("scenario.toml", "metrics.jsonl", "summary.json", "samples_final.png", "curves.png",
                 "checkpoint.pt"):
        assert (out / "flower" / name).is_file(), name
    # Each node keeps its sites' state in its own files, not in the messages; no snapshot outlives its batch, and
    # the one extra file is the snapshot the last checkpoint names (what a resumed run restores).
    nodes = sorted(p.name for p in (out / "flower" / "node-state").iterdir())
    assert nodes == [f"node-{j}" for j in range(scenario.sites.count)]
    files = {n: sorted(f.name for f in (out / "flower" / "node-state" / n).iterdir()) for n in nodes}
    tag = torch.load(out / "flower" / "checkpoint.pt", weights_only=True)["run_state"]["sites_tag"]
    kept = NodeStateStore(out / "flower" / "node-state" / "node-0").path(tag).name
    assert all(names == sorted(["state.pt", kept]) for names in files.values()), files


def test_flower_and_inprocess_engines_give_the_same_numbers(flower_and_inprocess):
    _, out, flower, inprocess, _ = flower_and_inprocess
    a, b = _round_lines(out / "flower"), _round_lines(out / "inprocess")
    assert len(a) == len(b) == 4
    # Identical, not close: every engine's sites compute with the same torch thread count (engine.num-cpus).
    for key in ("generator_loss", "discriminator_loss", "d_real", "d_fake", "d_aggregate"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    assert flower["fid_lenet"] == inprocess["fid_lenet"]


def test_forget_request_gives_the_same_certificate_through_flower(flower_and_inprocess):
    _, _, flower, inprocess, _ = flower_and_inprocess
    (a,), (b,) = flower["unlearning"], inprocess["unlearning"]
    assert a["request"] == b["request"] and a["rounds"] == b["rounds"]
    for key in ("fid_lenet_retained", "mia_auc_forget_vs_nonmember", "mia_auc_member_vs_nonmember"):
        for side in ("before", "after", "retrain"):
            assert a[key][side] == b[key][side], (key, side)


def test_messages_carry_no_weights_and_no_real_images(flower_and_inprocess):
    scenario, _, _, _, wire_log = flower_and_inprocess
    batch = scenario.training.batch_size
    assert {entry["direction"] for entry in wire_log} == {"down", "up"}
    param_shapes = {tuple(p.shape) for p in build_site(scenario, 0).discriminator.state_dict().values()}
    # The wire log covers the training protocol (TRAIN_ROUND messages). The forget-request measurement channel
    # (QUERY_LOGITS: the simulated attacker's candidate images) is not training traffic and is documented as such.
    for entry in (e for e in wire_log if e["type"] == P.TRAIN_ROUND):
        arrays = entry["records"][P.ARRAYS]
        allowed = P.DOWN_ARRAY_KEYS if entry["direction"] == "down" else P.UP_ARRAY_KEYS
        assert set(arrays) <= allowed, entry
        sites = len(entry["sites"])
        for key, shape in arrays.items():
            if key in (P.SITE_IDS, P.D_STATS):  # per site of the node: its id, and three numbers about its D
                assert shape == ([sites] if key == P.SITE_IDS else [sites, 3]), entry
                continue
            assert tuple(shape) not in param_shapes or tuple(shape) in ((batch,), (sites, batch)), entry
            if entry["direction"] == "down":
                assert shape[0] == batch, entry  # the synthetic batch (and its labels) only
            else:  # per site of the node: per-sample payloads of the synthetic batch
                assert shape[:2] == [sites, batch], entry
    # And no real image: no image on the wire equals any training image (as float32 or uint8).
    train = load_federation_data(scenario).train
    real = {hashlib.sha256(row.numpy().tobytes()).hexdigest() for row in train.float_images()}
    real |= {hashlib.sha256(row.numpy().tobytes()).hexdigest() for row in train.images}
    sent = {h for entry in wire_log for h in entry["image_row_hashes"]}
    assert len(sent) > 0 and not (sent & real)


UP_ARRAYS = {P.SETUP: {P.SITE_IDS, P.CLASS_COUNTS}, P.TRAIN_ROUND: P.UP_ARRAY_KEYS, P.QUERY_LOGITS: {P.LOGITS}}


def test_every_message_type_keeps_images_weights_and_other_sites_ids_at_their_site(flower_and_inprocess):
    scenario, out, _, _, wire_log = flower_and_inprocess
    # Every kind of message of a run with an item request went over the wire and was logged.
    types = {entry["type"] for entry in wire_log}
    assert {P.SETUP, P.TRAIN_ROUND, P.SNAPSHOT, P.EXCLUDE, P.UNLEARN, P.FORGET, P.DISCARD} <= types, types
    param_shapes = {tuple(p.shape) for p in build_site(scenario, 0).discriminator.state_dict().values()}
    train = load_federation_data(scenario).train
    real = {hashlib.sha256(row.numpy().tobytes()).hexdigest() for row in train.float_images()}
    real |= {hashlib.sha256(row.numpy().tobytes()).hexdigest() for row in train.images}
    for entry in wire_log:
        # No node learns another site's item ids, nor the scenario's forget schedule.
        assert set(entry["id_sites"]) <= set(entry["sites"]) or entry["type"] == P.SETUP and not entry["sites"], entry
        assert entry.get("scenario_forget", []) == [], entry
        images = set(entry["image_row_hashes"])
        if entry["direction"] == "up":
            arrays = entry["records"].get(P.ARRAYS, {})
            assert set(arrays) <= UP_ARRAYS.get(entry["type"], set()), entry  # stages and commands: statistics only
            for shape in arrays.values():  # no discriminator weight: only per-site or per-sample payloads
                assert tuple(shape[1:]) not in param_shapes or shape[0] == len(entry["sites"]), entry
            assert not images & real, entry  # no real image leaves a site
        elif not entry["measurement"]:
            assert not images & real, entry  # only the attacker's channel (query.logits) carries real images down
    # After the request, no file of the run directory holds a forgotten item's pixels (as uint8 or float32).
    forgotten = scenario.forget[0].items
    positions = [int(np.flatnonzero(train.ids.numpy() == item)[0]) for item in forgotten]
    needles = [train.images[p].numpy().tobytes() for p in positions]
    needles += [train.float_images()[p].numpy().tobytes() for p in positions]
    for path in (out / "flower").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(needle in data for needle in needles), path


def test_site_groups_under_flower_give_the_numbers_of_the_same_groups_in_process(tmp_path):
    # Prepare: 5 sites in nodes of 2 (groups of 2, 2 and 1), a conditional G with per-class weights, and a class
    # request served at one site of a group; the same scenario through Flower and through the batched engine.
    base = tiny_scenario(sites={"count": 5})
    labels = load_federation_data(base).train.labels.numpy()[site_positions(base)[2]]
    klass = int(np.bincount(labels).argmax())
    # Then sites 0 and 1 (one node) forget 2 and 20 items: their stages take different step counts
    # (item-stage-passes), which the node must get per site.
    items = {j: [int(i) for i in load_federation_data(base).train.ids.numpy()[site_positions(base)[j][:n]]]
             for j, n in ((0, 2), (1, 20))}
    scenario = tiny_scenario(
        sites={"count": 5, "per-node": 2}, model={"conditional": True},
        training={"rounds": 4, "site-weights": "per_class"},
        evaluation={"every": 0}, engine={"name": "flower", "num-cpus": 1, "batching": "vmap"}, unlearning=FORGET,
        forget=[{"site": 2, "class": klass, "round": 2}, {"site": 0, "items": items[0], "round": 3},
                {"site": 1, "items": items[1], "round": 3}])
    wire_log: list[dict] = []

    # Execute
    flower = run_scenario(scenario, tmp_path / "flower", wire_log=wire_log)
    batched = run_scenario(scenario.replace(engine=dataclasses.replace(scenario.engine, name="batched", device="cpu")),
                           tmp_path / "batched")

    # Assert: one message per node and round, carrying its sites' answers; the same numbers as in process.
    first_round = [e for e in wire_log if e["direction"] == "up" and e["type"] == P.TRAIN_ROUND][:3]  # round 1
    assert {e["round"] for e in first_round} == {1} and sorted(len(e["sites"]) for e in first_round) == [1, 2, 2]
    a, b = _round_lines(tmp_path / "flower"), _round_lines(tmp_path / "batched")
    for key in ("generator_loss", "discriminator_loss", "d_aggregate"):
        np.testing.assert_allclose([r[key] for r in a], [r[key] for r in b], rtol=1e-4, atol=1e-5, err_msg=key)
    (x, *x_items), (y, *y_items) = flower["unlearning"], batched["unlearning"]
    for side in ("before", "after", "retrain"):
        assert x["forget_class_rate"][side] == pytest.approx(y["forget_class_rate"][side], abs=1e-3), side
    assert len(x_items) == len(y_items) == 2  # the item requests, served together
    for a_item, b_item in zip(x_items, y_items):
        assert a_item["site_d_steps"] == b_item["site_d_steps"]
        assert a_item["fid_lenet_retained"]["after"] == pytest.approx(b_item["fid_lenet_retained"]["after"], rel=1e-3)
    assert flower["fid_lenet"] == pytest.approx(batched["fid_lenet"], rel=1e-3)


def test_nodes_that_pre_aggregate_give_the_server_side_aggregation(tmp_path):
    # Prepare: 5 sites on unequal nodes {0, 1}, {2, 3}, {4}; a conditional G with per-class weights; node 1 fails
    # round 2 (its sites dropped) and site 0 answers round 3 with NaN logits (the screen drops it: the server's in
    # one run, node 0's own in the other).
    from tests.test_site_faults import flower_run, round_lines

    options = dict(sites={"count": 5, "per-node": 2}, model={"conditional": True},
                   training={"rounds": 4, "site-weights": "per_class"})
    faults = "raise:1:round:2,nan:0:round:3"

    # Execute
    server_side = flower_run(tmp_path / "server", faults, **options)
    at_nodes = flower_run(tmp_path / "nodes", faults, **{**options, "sites": {**options["sites"],
                                                                               "pre-aggregate": True}})

    # Assert: the same rounds (float tolerance: the nodes sum in float64, the server in its own order), the same
    # drops and rejections, and one equivalent site per node on the way up.
    a, b = round_lines(tmp_path / "server" / "run"), round_lines(tmp_path / "nodes" / "run")
    for r in range(1, 5):
        for key in ("generator_loss", "discriminator_loss", "d_aggregate"):
            assert b[r][key] == pytest.approx(a[r][key], rel=1e-4, abs=1e-5), (r, key)
        assert b[r]["sites_answered"] == a[r]["sites_answered"], r
        assert sorted(b[r].get("dropped", {})) == sorted(a[r].get("dropped", {})), r
        assert b[r].get("rejected", {}) == a[r].get("rejected", {}), r
    assert a[2]["sites_answered"] == 3 and sorted(a[2]["dropped"]) == ["2", "3"]
    assert a[3]["sites_answered"] == 4 and "NaN" in a[3]["rejected"]["0"]
    assert at_nodes["fid_lenet"] == pytest.approx(server_side["fid_lenet"], rel=1e-3)
    # Upward traffic: 3 equivalent sites a round instead of 5 sites' answers.
    assert at_nodes["bytes_up"] < 0.7 * server_side["bytes_up"]
