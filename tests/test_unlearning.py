"""Forget requests end to end (in process): every method serves a request, the ledger records it, items go away."""
from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch

from fedgan.engine import InProcessEngine, site_positions
from fedgan.errors import FedganError, ScenarioError
from fedgan.experiment import run_experiment
from fedgan.federation import GeneratorServer
from fedgan.forget import ForgetLedger, ForgetRequest, drop_request, resolve_request
from fedgan.preparation import prepare
from fedgan.scenario import PARTIAL_RECIPE, UnlearningConfig, scenario_from_dict
from fedgan.unlearning import METHODS, UnlearningJob
from fedgan.unlearning.intake import RequestIntake
from fedgan.unlearning.measurement import ForgettingProbe
from fedgan.unlearning.orchestrator import ForgetService
from tests.conftest import tiny_scenario

CERTIFICATE_FIELDS = ("request", "method", "fid_lenet_retained", "downstream_accuracy", "seconds",
                      "speedup_vs_retrain")
FAST_UNLEARNING = {"stages": 2, "stage-d-steps": 2, "stage-g-rounds": 1, "relearn-rounds": 1, "noise-steps": 2,
                   "eval-samples": 64,
                   "lira-references": 0, "downstream-samples": 64, "downstream-epochs": 1, "mia-size": 8}


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


@pytest.mark.parametrize("method", sorted(m for m in METHODS if not METHODS[m].reference))
def test_every_method_serves_a_class_request_and_is_certified_against_retrain(method, tmp_path):
    # Prepare: site 0 forgets its most common class at round 2.
    base = forget_scenario([method, "retrain"], [])
    klass = held_class(base, 0)
    scenario = forget_scenario([method, "retrain"], [{"site": 0, "class": klass, "round": 2}])
    # Execute
    summary = run_experiment(scenario, InProcessEngine(scenario, "cpu"), tmp_path)

    # Assert: one certificate with the contract's fields; each gap is after − retrain; the class is gone from
    # site 0's shard for good and the ledger holds the same certificate.
    (entry,) = summary["unlearning"]
    for field in CERTIFICATE_FIELDS + ("forget_class_rate",):
        assert field in entry, field
    assert entry["method"] == method and entry["rounds"] >= 1
    for key in ("forget_class_rate", "fid_lenet_retained", "downstream_accuracy"):
        m = entry[key]
        assert m["gap_to_retrain"] == pytest.approx(m["after"] - m["retrain"]), key
    assert entry["speedup_vs_retrain"] == pytest.approx(entry["retrain_seconds"] / entry["seconds"])
    forgotten = set(_checkpoint_sites(tmp_path)[0]["forgotten"].tolist())
    assert forgotten == set(_ids_of_class(scenario, 0, klass))
    state = ForgetLedger(tmp_path / "ledger.jsonl").states()
    assert [s["state"] for s in state.values()] == ["certified"]
    assert next(iter(state.values()))["certificate"][0]["fid_lenet_retained"] == entry["fid_lenet_retained"]
    assert (tmp_path / "unlearning.md").read_text().count(method) >= 1


def test_the_retrain_numbers_of_a_certificate_are_those_of_a_federation_trained_without_the_items(tmp_path):
    # Prepare: site 0 forgets its most common class after round 3; cascaded is certified against retrain.
    base = forget_scenario(["cascaded", "retrain"], [], rounds=5)
    klass = held_class(base, 0)
    request = {"site": 0, "class": klass, "round": 3}
    scenario = forget_scenario(["cascaded", "retrain"], [request], rounds=5)
    (entry,) = run_experiment(scenario, InProcessEngine(scenario, "cpu"), tmp_path / "run")["unlearning"]

    # Execute: a federation built independently, whose site 0 never held the class, trained 3 rounds, measured.
    splits, evaluator = prepare(scenario)
    engine = InProcessEngine(scenario, "cpu")
    sites = engine.open({0: np.asarray(_ids_of_class(scenario, 0, klass))})
    server = GeneratorServer(scenario, sites, splits.train.image_shape, splits.train.num_classes, torch.device("cpu"))
    for _ in range(3):
        server.step(engine)
    resolution = resolve_request(ForgetRequest.from_dict(request).with_id(),
                                 RequestIntake(scenario, splits, ForgetLedger(tmp_path / "l.jsonl"), tmp_path,
                                               print).holdings(), splits.train.num_classes)
    counts = np.stack([s.class_counts for s in sites]).sum(0)
    retained = [c for c in range(splits.train.num_classes) if counts[c] > 0]
    (measured,) = ForgettingProbe(scenario, splits, evaluator).measure(server, engine, [resolution], "retrain",
                                                                       retained).values()

    # Assert: the certificate's retrain column is exactly that federation's measurement.
    for key in ("forget_class_rate", "fid_lenet_retained", "kid_retained", "downstream_accuracy"):
        assert entry[key]["retrain"] == measured[key], key
    assert entry["class_histogram"]["retrain"] == measured["class_histogram"]
    assert entry["retrain_rounds"] == 3 and entry["details"]["stage_stats"]


def test_item_request_deletes_the_items_and_certifies_the_attack_against_one_retrain(tmp_path):
    # Prepare: site 1 forgets ten items; two methods are certified against the same retrain.
    base = forget_scenario(["cascaded", "finetune", "retrain"], [])
    items = site_items(base, 1, 10)
    scenario = forget_scenario(["cascaded", "finetune", "retrain"], [{"site": 1, "items": items, "round": 2}])
    engine = InProcessEngine(scenario, "cpu")

    # Execute
    summary = run_experiment(scenario, engine, tmp_path)

    # Assert: no state copy outlives the request (under Flower they ride every message); the attack's numbers
    # share one "before" and one retrain, with gaps after − retrain; only the ids remain at the site.
    assert engine._snapshots == {}
    cascaded, finetune = summary["unlearning"]
    assert (cascaded["method"], finetune["method"]) == ("cascaded", "finetune")
    for key in ("mia_auc_forget_vs_nonmember", "mia_auc_member_vs_nonmember", "mia_auc_forget_vs_member"):
        assert cascaded[key]["before"] == finetune[key]["before"], key
        assert cascaded[key]["retrain"] == finetune[key]["retrain"], key
        assert cascaded[key]["gap_to_retrain"] == pytest.approx(cascaded[key]["after"] - cascaded[key]["retrain"])
    nonmembers = cascaded["mia_sizes"]["before"]["nonmember"]
    assert nonmembers < 100  # the synthetic test split is small: a TPR at 1 % FPR is not resolved, not invented
    assert cascaded["mia_tpr_at_1pct_fpr_forget"]["after"] is None
    assert set(_checkpoint_sites(tmp_path)[1]["forgotten"].tolist()) == set(items)
    ledger = ForgetLedger(tmp_path / "ledger.jsonl")
    assert ledger.forgotten_ids()[1] == set(items)


# ---- what each method does to the requesting site's discriminator ----

TRAINED_ROUNDS = 60  # enough for the tiny D to score its members well above 1/2 (≈ 0.75)


@pytest.fixture(scope="module")
def trained_federation():
    """A tiny federation trained 60 rounds in process, site 0's most common class as the forget set."""
    scenario = tiny_scenario(training={"rounds": TRAINED_ROUNDS}, unlearning={
        "stages": 2, "stage-d-steps": 10, "stage-g-rounds": 1, "relearn-rounds": 1, "noise-steps": 5})
    splits, _ = prepare(scenario)
    engine = InProcessEngine(scenario, "cpu")
    sites = engine.open()
    server = GeneratorServer(scenario, sites, splits.train.image_shape, splits.train.num_classes, torch.device("cpu"))
    for _ in range(TRAINED_ROUNDS):
        server.step(engine)
    klass = held_class(scenario, 0)
    ids = np.asarray(_ids_of_class(scenario, 0, klass))
    positions = np.flatnonzero(np.isin(splits.train.ids.numpy(), ids))
    images = splits.train.float_images()[positions]
    engine.snapshot("trained")
    state, counts = copy.deepcopy(server.state_dict()), server.class_counts.copy()

    def mean_d_on_forget_items(method: str | None) -> float:
        """Mean D_0(x) on the forget items after `method` runs from the trained state (None: as trained)."""
        engine.restore("trained")
        server.load_state_dict(copy.deepcopy(state))
        server.class_counts = counts.copy()
        if method is not None:
            labels_of = dict(zip(splits.train.ids.numpy().tolist(), splits.train.labels.numpy().tolist()))
            job = UnlearningJob(server, engine, {0: ids}, (klass,), scenario.unlearning,
                                lambda i: np.asarray([labels_of[int(x)] for x in i]), training_rounds=TRAINED_ROUNDS)
            METHODS[method]().run(job)
        return float(torch.sigmoid(engine.query_logits(0, images, None)).mean())

    return mean_d_on_forget_items


@pytest.mark.parametrize("method", ["cascaded", "uniform"])
def test_a_site_side_stage_lowers_the_requesting_discriminator_on_the_forget_items(method, trained_federation):
    # Execute
    trained, after_finetune, after = (trained_federation(m) for m in (None, "finetune", method))

    # Assert: members score well above 1/2 before; the stage takes them clearly below what finetune leaves.
    assert trained > 0.65
    assert after < after_finetune - 0.05


def test_the_fnn_stage_lowers_the_requesting_discriminator_below_what_finetune_leaves(trained_federation):
    # fnn has no forget objective: the neurons most active on the forget items decay while D rehearses on retained
    # data, so the items fade, more gently than under a fake label (4 iterations at τ = 20 here: φ = 0.82).
    assert trained_federation("fnn") < trained_federation("finetune") - 0.01


def test_finetune_leaves_the_requesting_discriminator_where_plain_training_does(trained_federation):
    # finetune has no site-side stage: the forget items only leave the real stream, so D_0 still scores them as
    # it did (within plain training's drift over the same few rounds).
    trained, after = trained_federation(None), trained_federation("finetune")
    assert abs(after - trained) < 0.02


@pytest.mark.xfail(strict=True, reason="known shortfall: the UNSIR adaptation's impair phase (noise presented as real "
                   "at 10× the learning rate) raises D_0 on the forget items (measured 0.75 → 0.99), where the other "
                   "stages lower it")
def test_the_noise_stage_lowers_the_requesting_discriminator_on_the_forget_items(trained_federation):
    assert trained_federation("noise") < trained_federation("finetune") - 0.05


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
    done = [s for s in states.values() if s["state"] == "certified"]
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


class FailingStageEngine(InProcessEngine):
    """An in-process federation whose requesting site fails in its second unlearning stage."""

    def __init__(self, scenario, device):
        super().__init__(scenario, device)
        self.stages = 0

    def unlearn(self, orders):
        self.stages += 1
        if self.stages == 2:
            raise RuntimeError("site 0 failed train.unlearn: worker lost")
        return super().unlearn(orders)


def test_a_site_failing_mid_cascade_leaves_nothing_half_applied_and_the_request_refused(tmp_path):
    # Prepare: a federation trained 2 rounds; its state before the request.
    scenario = forget_scenario(["cascaded", "retrain"], [])
    klass = held_class(scenario, 0)
    splits, evaluator = prepare(scenario)
    engine = FailingStageEngine(scenario, "cpu")
    server = GeneratorServer(scenario, engine.open(), splits.train.image_shape, splits.train.num_classes,
                             torch.device("cpu"))
    for _ in range(2):
        server.step(engine)
    generator_before = copy.deepcopy(server.generator.state_dict())
    sites_before = engine.site_states()
    service = ForgetService(scenario, splits, evaluator, tmp_path)

    # Execute
    service.serve(server, engine, [ForgetRequest(site=0, forget_class=klass, round=2).with_id()], 2)

    # Assert: refused with the reason; G, every site's D and shard exactly as before; nothing certified.
    (view,) = ForgetLedger(tmp_path / "ledger.jsonl").states().values()
    assert view["state"] == "refused" and "worker lost" in view["reason"]
    for key, value in server.generator.state_dict().items():
        assert torch.equal(value, generator_before[key]), key
    for site, state in engine.site_states().items():
        assert torch.equal(state["forgotten"], sites_before[site]["forgotten"])
        for key, value in state["discriminator"].items():
            assert torch.equal(value, sites_before[site]["discriminator"][key]), (site, key)
    assert engine._snapshots == {} and service.results == []


def test_every_inbox_file_ends_in_the_ledger_and_late_requests_are_served_before_the_end(tmp_path):
    # Prepare: a malformed inbox file, a request whose id is already taken, and a request dropped during the
    # last round (after that round's inbox check).
    scenario = forget_scenario(["finetune"], [], rounds=3)
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "0-bad.json").write_text('{"site": 1, "items": "lots"}')
    first = ForgetRequest(site=2, items=tuple(site_items(scenario, 2, 2)), source="external")
    drop_request(tmp_path, first)
    taken = first.with_id().request_id
    late = ForgetRequest(site=1, items=tuple(site_items(scenario, 1, 2)), source="external")

    def progress(done, total, line):
        if done == 1:
            drop_request(tmp_path, ForgetRequest(site=0, items=tuple(site_items(scenario, 0, 1)),
                                                 request_id=taken, source="external"))
        if done == total:
            drop_request(tmp_path, late)

    # Execute
    summary = run_experiment(scenario, InProcessEngine(scenario, "cpu"), tmp_path, progress=progress)

    # Assert: four arrivals, four end states; the late request was served and certified.
    views = list(ForgetLedger(tmp_path / "ledger.jsonl").states().values())
    assert len(views) == 4
    by_state = sorted(v["state"] for v in views)
    assert by_state == ["certified", "certified", "refused", "refused"]
    reasons = " ".join(v.get("reason", "") for v in views)
    assert "0-bad.json" in {v.get("file") for v in views} and f"request id {taken} is already used" in reasons
    assert [e["request"]["items"] for e in summary["unlearning"]] == [list(first.items), list(late.items)]


def test_a_run_directory_that_holds_a_run_is_refused_before_anything_is_written(tmp_path):
    scenario = forget_scenario(["finetune"], [], rounds=1)
    run_experiment(scenario, InProcessEngine(scenario, "cpu"), tmp_path)
    before = (tmp_path / "metrics.jsonl").read_bytes()
    with pytest.raises(FedganError, match="--out: .* already holds a run"):
        run_experiment(scenario, InProcessEngine(scenario, "cpu"), tmp_path)
    assert (tmp_path / "metrics.jsonl").read_bytes() == before


class CountingQueries(InProcessEngine):
    def __init__(self, scenario, device):
        super().__init__(scenario, device)
        self.queries = 0

    def query_logits(self, site_id, images, labels):
        self.queries += 1
        return super().query_logits(site_id, images, labels)


@pytest.mark.parametrize("attack", [True, False])
def test_the_membership_attack_channel_can_be_switched_off(tmp_path, attack):
    base = forget_scenario(["finetune"], [])
    scenario = tiny_scenario(training={"rounds": 3}, evaluation={"every": 0},
                             unlearning={**FAST_UNLEARNING, "methods": ["finetune"], "membership-attack": attack},
                             forget=[{"site": 1, "items": site_items(base, 1, 4), "round": 2}])
    engine = CountingQueries(scenario, "cpu")
    (entry,) = run_experiment(scenario, engine, tmp_path)["unlearning"]
    assert ("mia_auc_forget_vs_nonmember" in entry) == attack
    assert (engine.queries > 0) == attack  # off: not one candidate image is sent to a site


def test_the_attack_never_counts_an_item_forgotten_earlier_as_a_retained_member(tmp_path):
    # Prepare: site 1 asks to forget 4 items after an earlier request took most of the same classes' other items.
    scenario = forget_scenario(["finetune"], [])
    splits, evaluator = prepare(scenario)
    probe = ForgettingProbe(scenario, splits, evaluator)
    held = site_items(scenario, 1, 10_000)
    request = ForgetRequest(site=1, items=tuple(held[:4])).with_id()
    resolution = resolve_request(request, RequestIntake(scenario, splits, ForgetLedger(tmp_path / "l.jsonl"),
                                                        tmp_path, print).holdings(), splits.train.num_classes)
    earlier = {1: np.asarray(held[4:-8], dtype=np.int64)}  # all but 8 of the site's other items

    # Execute
    forget, member, nonmember = probe.attack_sets(resolution, 0, earlier)
    _, member_without, _ = probe.attack_sets(resolution, 0, {})

    # Assert: the retained members come only from what the site still holds; without the history they would not.
    assert set(forget) == set(held[:4])
    assert set(member) == set(held[-8:])  # every retained item of the class, up to `mia-nonmembers`
    assert not set(member_without) <= set(held[-8:])


# ---- the proof's measurement: one latent draw, a conditional G asked and not asked, the cost in D steps ----

def _probe_and_server(scenario, tmp_path):
    splits, evaluator = prepare(scenario)
    engine = InProcessEngine(scenario, "cpu")
    sites = engine.open({})
    server = GeneratorServer(scenario, sites, splits.train.image_shape, splits.train.num_classes, torch.device("cpu"))
    server.step(engine)
    holdings = RequestIntake(scenario, splits, ForgetLedger(tmp_path / "l.jsonl"), tmp_path, print).holdings()
    return ForgettingProbe(scenario, splits, evaluator), server, engine, holdings, splits.train.num_classes


@pytest.mark.parametrize("conditional", [False, True])
def test_every_measurement_of_a_batch_is_taken_on_the_same_latent_draw(conditional, tmp_path):
    # Prepare: one federation, one class request; the same G measured under two tags.
    scenario = tiny_scenario(model={"conditional": conditional}, unlearning=FAST_UNLEARNING)
    probe, server, engine, holdings, num_classes = _probe_and_server(scenario, tmp_path)
    klass = held_class(scenario, 0)
    resolution = resolve_request(ForgetRequest(site=0, forget_class=klass).with_id(), holdings, num_classes)
    retained = [c for c in range(num_classes) if c != klass]

    # Execute
    before = probe.measure(server, engine, [resolution], "before", retained)[0]
    retrain = probe.measure(server, engine, [resolution], "retrain", retained)[0]

    # Assert: the tags name the measurement, not the draw: every number is equal; a conditional G is also measured
    # when the class is asked for and when it is not; the shares' standard error is reported.
    assert before == retrain
    assert ("forget_class_rate_unasked" in before) == conditional
    assert ("forget_class_rate_asked" in before) == conditional
    shares = np.asarray(before["class_histogram"])
    assert before["class_share_stderr"] == pytest.approx(float(np.sqrt(shares * (1 - shares) / 64).max()))


def test_a_certificate_counts_the_site_discriminator_steps_beside_the_generator_rounds(tmp_path):
    # Prepare: site 0 forgets a class after round 2; cascaded (2 stages of 2 D steps, 1 G round each) vs retrain.
    base = forget_scenario(["cascaded", "retrain"], [])
    klass = held_class(base, 0)
    scenario = forget_scenario(["cascaded", "retrain"], [{"site": 0, "class": klass, "round": 2}])

    # Execute
    (entry,) = run_experiment(scenario, InProcessEngine(scenario, "cpu"), tmp_path)["unlearning"]

    # Assert: every generator round drives each of the 3 sites' D once (d-steps 1); the stages add 2 × 2 steps at
    # the requesting site; retrain's 2 rounds cost 2 × 3.
    assert entry["rounds"] == 2
    assert entry["site_d_steps"] == 2 * 3 + 2 * 2
    assert entry["retrain_site_d_steps"] == 2 * 3
    assert entry["speedup_site_d_steps_vs_retrain"] == pytest.approx(6 / 10)
    assert entry["retained_share_l1_to_retrain"]["after"] >= 0.0


@pytest.mark.parametrize("classes_per_site", [4, 1])
def test_an_item_request_is_also_certified_by_the_per_example_attack_on_the_same_targets(tmp_path, classes_per_site):
    # Prepare: site 1 forgets 10 items; 4 reference discriminators of 10 steps calibrate the per-example attack.
    # With one class per site, R takes every item the site keeps: the references train on their IN targets alone.
    partition = {"scheme": "classes_per_site", "k": classes_per_site}
    items = site_items(tiny_scenario(partition=partition), 1, 10)
    scenario = tiny_scenario(training={"rounds": 4}, evaluation={"every": 0},
                             partition=partition,
                             unlearning={**FAST_UNLEARNING, "methods": ["cascaded", "retrain"],
                                         "lira-references": 4, "lira-steps": 10},
                             forget=[{"site": 1, "items": items, "round": 2}])

    # Execute
    (entry,) = run_experiment(scenario, InProcessEngine(scenario, "cpu"), tmp_path)["unlearning"]

    # Assert: the LiRA numbers sit beside the population attack's for before, after and retrain, on the same
    # targets (F, R, N sizes equal to the population attack's); TPRs the few non-members cannot resolve are None.
    for key in ("lira_auc_forget_vs_nonmember", "lira_auc_member_vs_nonmember"):
        for side in ("before", "after", "retrain"):
            assert 0.0 <= entry[key][side] <= 1.0, (key, side)
    sizes = entry["mia_sizes"]["before"]
    assert sizes["forget"] == FAST_UNLEARNING["mia-size"]
    assert entry["lira_tpr_at_0.1pct_fpr_forget"]["before"] is None


@pytest.mark.parametrize("method", ["cascaded", "fnn"])
def test_the_method_repairs_with_generator_rounds_at_the_training_learning_rate(tmp_path, monkeypatch, method):
    # Prepare: the method's 2 stages × 1 G round at 4× G's rate, then 3 repair rounds at G's own rate.
    base = forget_scenario([method], [])
    klass = held_class(base, 0)
    scenario = tiny_scenario(training={"rounds": 4}, evaluation={"every": 0},
                             unlearning={**FAST_UNLEARNING, "methods": [method], "repair-rounds": 3,
                                         "generator-lr-scale": 4.0},
                             forget=[{"site": 0, "class": klass, "round": 2}])
    seen_rates = []
    original_step = GeneratorServer.step

    def recording_step(server, engine):
        seen_rates.append(server.optimizer.param_groups[0]["lr"])
        return original_step(server, engine)

    monkeypatch.setattr(GeneratorServer, "step", recording_step)

    # Execute
    (entry,) = run_experiment(scenario, InProcessEngine(scenario, "cpu"), tmp_path)["unlearning"]

    # Assert: 2 + 3 generator rounds; the repair rounds ran at the training rate, the stages' at 4×.
    base_lr = scenario.training.lr_generator
    assert entry["rounds"] == 5 and entry["details"]["repair_rounds"] == 3
    assert seen_rates[2:4] == [pytest.approx(4 * base_lr)] * 2
    assert seen_rates[4:7] == [pytest.approx(base_lr)] * 3


def test_recalibration_rounds_step_the_sites_while_the_generator_holds_still(tmp_path, monkeypatch):
    # Prepare: 2 stages × 1 G round, then 2 recalibration rounds (G frozen), then 3 repair rounds.
    base = forget_scenario(["cascaded"], [])
    klass = held_class(base, 0)
    scenario = tiny_scenario(training={"rounds": 4}, evaluation={"every": 0},
                             unlearning={**FAST_UNLEARNING, "methods": ["cascaded"], "recalibrate-rounds": 2,
                                         "repair-rounds": 3},
                             forget=[{"site": 0, "class": klass, "round": 2}])
    calls, sent = [], []
    original_step, original_round = GeneratorServer.step, InProcessEngine.train_round

    def counting_round(engine, *args, **kwargs):
        sent.append(True)
        return original_round(engine, *args, **kwargs)

    def recording_step(server, engine, update_generator=True):
        before, messages = [p.detach().clone() for p in server.generator.parameters()], len(sent)
        record = original_step(server, engine, update_generator)
        moved = any(not torch.equal(a, b) for a, b in zip(before, server.generator.parameters()))
        calls.append((update_generator, moved, len(sent) - messages))
        return record

    monkeypatch.setattr(InProcessEngine, "train_round", counting_round)
    monkeypatch.setattr(GeneratorServer, "step", recording_step)

    # Execute
    (entry,) = run_experiment(scenario, InProcessEngine(scenario, "cpu"), tmp_path)["unlearning"]

    # Assert: training 2, stages 2, recalibration 2, repair 3; every round reached the sites, and G moved in every
    # round but the recalibration's.
    assert entry["rounds"] == 7 and entry["details"]["recalibrate_rounds"] == 2
    method_calls = calls[2:9]
    assert [flag for flag, _, _ in method_calls] == [True, True, False, False, True, True, True]
    assert [moved for _, moved, _ in method_calls] == [True, True, False, False, True, True, True]
    assert all(sent == 1 for _, _, sent in method_calls)


# ---- partial class requests: [unlearning.partial] ----


def test_the_shipped_partial_recipe_applies_only_when_asked_and_round_trips():
    # Prepare: the shipped recipe, an empty table, and a table of the scenario's own.
    shipped = tiny_scenario(unlearning={"partial": dict(PARTIAL_RECIPE)})
    empty = tiny_scenario()  # the tests' scenario gives an empty table
    own = tiny_scenario(unlearning={"partial": {"stage-g-rounds": 7, "fake-label": "generated"}})

    # Assert: the recipe's keys replace [unlearning]'s for a partial batch only; an empty table changes nothing.
    served = shipped.unlearning.for_batch(True)
    assert (served.stages, served.stage_g_rounds, served.generator_lr_scale, served.drop_class_weight) == (
        PARTIAL_RECIPE["stages"], PARTIAL_RECIPE["stage-g-rounds"], PARTIAL_RECIPE["generator-lr-scale"], True)
    assert shipped.unlearning.for_batch(False) == shipped.unlearning
    assert empty.unlearning.for_batch(True) == empty.unlearning
    mine = own.unlearning.for_batch(True)
    assert mine.stage_g_rounds == 7 and mine.fake_label == "generated"
    assert own.unlearning.for_batch(True).stages == own.unlearning.stages  # keys not named stay [unlearning]'s
    assert scenario_from_dict(json.loads(own.to_json())) == own
    assert UnlearningConfig().partial == PARTIAL_RECIPE  # no table in the file: the shipped recipe


@pytest.mark.parametrize("partial, start", [
    ({"stages": 0}, "unlearning.partial.stages: got 0"),
    ({"generator-lr-scale": -1.0}, "unlearning.partial.generator-lr-scale"),
    ({"mia-size": 3}, "unlearning.partial.mia-size: unknown key"),
    ({"stages": "five"}, "unlearning.partial.stages: got 'five'"),
    ({"fake-label": 2}, "unlearning.partial.fake-label"),
])
def test_a_bad_partial_table_is_refused_naming_its_key(partial, start):
    with pytest.raises(ScenarioError) as caught:
        tiny_scenario(unlearning={"partial": partial})
    assert str(caught.value).startswith(start), str(caught.value)


def test_a_partial_class_request_is_served_with_the_partial_recipe_and_a_sole_holder_request_is_not(tmp_path):
    # Prepare: two classes per site over 3 sites; one class that another site also holds (partial) and one that
    # only the requesting site holds (not partial). [unlearning.partial] asks for 3 G rounds per stage.
    base = forget_scenario(["cascaded"], [])
    labels, positions = _labels_and_positions(base)
    held = [set(np.unique(labels[p]).tolist()) for p in positions]
    shared = next(c for c in held[0] if any(c in other for other in held[1:]))
    alone = next((c for c in held[0] if not any(c in other for other in held[1:])), None)
    partial = {"stage-g-rounds": 3}

    def served_rounds(klass: int, out: str) -> int:
        scenario = tiny_scenario(training={"rounds": 4}, evaluation={"every": 0},
                                 unlearning={**FAST_UNLEARNING, "methods": ["cascaded"], "partial": partial},
                                 forget=[{"site": 0, "class": klass, "round": 2}])
        (entry,) = run_experiment(scenario, InProcessEngine(scenario, "cpu"), tmp_path / out)["unlearning"]
        return entry["rounds"]

    # Execute / Assert: 2 stages × 3 G rounds for the partial request, 2 × 1 ([unlearning]) for the sole holder's.
    assert served_rounds(shared, "partial") == 2 * 3
    if alone is not None:
        assert served_rounds(alone, "alone") == 2 * 1


def _labels_and_positions(scenario):
    from fedgan.engine import load_federation_data

    return load_federation_data(scenario).train.labels.numpy(), site_positions(scenario)


@pytest.mark.parametrize("passes, steps_per_stage", [(0.0, 2), (3.0, 4), (1.0, 2)])
def test_an_item_stage_passes_over_the_forgotten_items_as_often_as_item_stage_passes_asks(
        tmp_path, passes, steps_per_stage):
    # Prepare: site 1 forgets 20 items, batch 16, stage-d-steps 2: 3 passes need ceil(3 * 20 / 16) = 4 steps per
    # stage; 1 pass needs 2 (stage-d-steps already gives it); 0 leaves stage-d-steps as is.
    items = site_items(tiny_scenario(), 1, 20)
    scenario = forget_scenario(["cascaded", "retrain"], [{"site": 1, "items": items, "round": 2}])
    scenario = scenario.replace(unlearning=dataclasses.replace(scenario.unlearning, item_stage_passes=passes))

    # Execute
    (entry,) = run_experiment(scenario, InProcessEngine(scenario, "cpu"), tmp_path)["unlearning"]

    # Assert: 2 G rounds drive the 3 sites' D once each; the 2 stages add their steps at the requesting site.
    assert entry["site_d_steps"] == 2 * 3 + 2 * steps_per_stage


def test_a_class_request_keeps_stage_d_steps_whatever_item_stage_passes_says():
    # A class request's forget set is a whole class: passes over it would multiply the stage many times over.
    scenario = tiny_scenario(unlearning={"item-stage-passes": 50.0})
    klass = held_class(scenario, 0)
    ids = np.asarray(_ids_of_class(scenario, 0, klass))
    job = UnlearningJob(None, None, {0: ids}, (klass,), scenario.unlearning, lambda i: i)
    assert job.stage_steps(0) == scenario.unlearning.stage_d_steps


def test_a_negative_item_stage_passes_is_refused_naming_the_key():
    with pytest.raises(ScenarioError, match="unlearning.item-stage-passes"):
        tiny_scenario(unlearning={"item-stage-passes": -1.0})


def test_shares_averaged_over_snapshots_are_the_mean_of_later_rounds_and_leave_the_federation_unchanged(tmp_path):
    # Prepare: one trained federation and a class request; the same measurement with 1 and with 3 snapshots.
    scenario = tiny_scenario(unlearning=FAST_UNLEARNING)
    averaged = scenario.replace(unlearning=dataclasses.replace(scenario.unlearning, share_snapshots=3,
                                                               share_spacing=2))
    probe, server, engine, holdings, num_classes = _probe_and_server(scenario, tmp_path)
    klass = held_class(scenario, 0)
    resolution = resolve_request(ForgetRequest(site=0, forget_class=klass).with_id(), holdings, num_classes)
    retained = [c for c in range(num_classes) if c != klass]
    state = copy.deepcopy(server.state_dict())

    # Execute: one snapshot; three (the federation continued 2 and 4 rounds); one again; then the shares of the
    # federation actually continued by 2 and 4 rounds.
    single = probe.measure(server, engine, [resolution], "before", retained)[0]
    probe.config = averaged.unlearning
    mean = probe.measure(server, engine, [resolution], "before", retained)[0]
    probe.config = scenario.unlearning
    again = probe.measure(server, engine, [resolution], "before", retained)[0]
    unchanged = copy.deepcopy(server.state_dict())
    later = []
    for _ in range(2):
        for _ in range(2):
            server.step(engine)
        later.append(probe.measure(server, engine, [resolution], "later", retained)[0]["class_histogram"])

    # Assert: the measurement undid its rounds (the same numbers before and after it, the same G); the mean is
    # that of the snapshot and the two later ones, for the shares and for the forget-class rate.
    assert again == single
    assert mean["class_histogram_single"] == single["class_histogram"]
    assert mean["forget_class_rate_single"] == single["forget_class_rate"]
    assert mean["class_share_snapshots"] == 3
    expected = np.mean([single["class_histogram"], *later], axis=0)
    np.testing.assert_allclose(mean["class_histogram"], expected, atol=1e-12)
    assert mean["forget_class_rate"] == pytest.approx(float(expected[klass]))
    rates = [single["class_histogram"][klass], *(h[klass] for h in later)]
    assert mean["forget_class_rate_snapshot_sd"] == pytest.approx(float(np.std(rates, ddof=1)))
    assert mean["class_share_snapshot_sd"] >= mean["forget_class_rate_snapshot_sd"] - 1e-12
    assert mean["fid_lenet_retained"] == single["fid_lenet_retained"]  # quality is measured on the snapshot
    assert unchanged["round"] == state["round"]
    for name, _ in server.generator.named_parameters():  # (sampling in training mode moves batch-norm buffers)
        torch.testing.assert_close(unchanged["generator"][name], state["generator"][name], rtol=0, atol=0)
    torch.testing.assert_close(unchanged["rng"], state["rng"], rtol=0, atol=0)


def test_a_certificate_with_share_snapshots_reports_both_the_mean_and_the_end_of_side_shares(tmp_path):
    base = forget_scenario(["cascaded", "retrain"], [])
    klass = held_class(base, 0)
    scenario = tiny_scenario(training={"rounds": 4}, evaluation={"every": 0},
                             unlearning={**FAST_UNLEARNING, "methods": ["cascaded", "retrain"],
                                         "share-snapshots": 2, "share-spacing": 1},
                             forget=[{"site": 0, "class": klass, "round": 2}])

    (entry,) = run_experiment(scenario, InProcessEngine(scenario, "cpu"), tmp_path)["unlearning"]

    for side in ("before", "after", "retrain"):
        assert entry["class_share_snapshots"][side] == 2
        assert len(entry["class_histogram_single"][side]) == len(entry["class_histogram"][side])
    assert entry["retained_share_l1_to_retrain_single"]["after"] >= 0.0
    assert "end-of-side snapshot" in (tmp_path / "unlearning.md").read_text()


@pytest.mark.parametrize("key", ["share-snapshots", "share-spacing"])
def test_share_snapshots_and_spacing_must_be_positive(key):
    with pytest.raises(ScenarioError, match=f"unlearning.{key}"):
        tiny_scenario(unlearning={key: 0})


def test_retrain_seeds_is_a_positive_count_and_repeats_only_a_listed_retrain():
    from fedgan.errors import ScenarioError
    from fedgan.unlearning.retrain_spread import extra_training_seeds
    from tests.conftest import tiny_scenario

    with pytest.raises(ScenarioError, match="unlearning.retrain-seeds"):
        tiny_scenario(unlearning={"retrain-seeds": 0})
    assert extra_training_seeds(tiny_scenario(unlearning={"retrain-seeds": 3})) == [4, 5]  # seed 3, then 4, 5
    # a bench or a CLI override that drops retrain leaves nothing to repeat (no error: the setting is inert)
    assert extra_training_seeds(tiny_scenario(unlearning={"methods": ["cascaded"], "retrain-seeds": 3})) == []


@pytest.mark.parametrize("mode", ["holders", "all"])
def test_a_balanced_repair_scales_only_the_repair_rounds_and_leaves_the_true_weights_afterwards(
        tmp_path, monkeypatch, mode):
    # Prepare: a partial class request (a class another site also holds), 3 repair rounds with the balance on.
    base = forget_scenario(["cascaded"], [])
    labels, positions = _labels_and_positions(base)
    held = [set(np.unique(labels[p]).tolist()) for p in positions]
    shared = next(c for c in held[0] if any(c in other for other in held[1:]))
    holders = [site for site, classes in enumerate(held) if site != 0 and shared in classes]
    partial = {"repair-rounds": 3, "repair-balance": mode}
    scenario = tiny_scenario(training={"rounds": 4}, evaluation={"every": 0},
                             unlearning={**FAST_UNLEARNING, "methods": ["cascaded"], "partial": partial},
                             forget=[{"site": 0, "class": shared, "round": 2}])
    scales_seen = []
    original_step = GeneratorServer.step

    def recording_step(server, engine):
        scales_seen.append(dict(server.answer_weight_scale or {}))
        return original_step(server, engine)

    monkeypatch.setattr(GeneratorServer, "step", recording_step)

    # Execute
    (entry,) = run_experiment(scenario, InProcessEngine(scenario, "cpu"), tmp_path)["unlearning"]

    # Assert: the stages' rounds and the first repair round use the true weights; the later repair rounds scale
    # the balanced answers only (the remaining holders, or every answer), and training afterwards is unscaled.
    stage_rounds = FAST_UNLEARNING["stages"] * FAST_UNLEARNING["stage-g-rounds"]
    repair = scales_seen[2 + stage_rounds:2 + stage_rounds + 3]
    assert all(not scales for scales in scales_seen[:2 + stage_rounds]) and repair[0] == {}
    balanced = set(holders) if mode == "holders" else set(range(scenario.sites.count))
    assert all(set(scales) == balanced and all(0.5 <= v <= 2.0 for v in scales.values()) for scales in repair[1:])
    assert all(not scales for scales in scales_seen[2 + stage_rounds + 3:])
    assert entry["details"]["repair_balance"] == mode and set(entry["details"]["balance_ratios"]) == set(
        map(str, balanced))


def test_an_unknown_repair_balance_is_refused_naming_the_key():
    with pytest.raises(ScenarioError, match="unlearning.repair-balance"):
        tiny_scenario(unlearning={"repair-balance": "some"})
    with pytest.raises(ScenarioError, match="unlearning.partial.repair-balance-gain"):
        tiny_scenario(unlearning={"partial": {"repair-balance-gain": 0}})
