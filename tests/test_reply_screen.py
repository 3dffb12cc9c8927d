"""Hostile replies never touch G: NaN, inf, wrong shapes or dtypes, absurd magnitudes are dropped per site, the
event is logged, and G takes exactly the step it would take without that site."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from fedgan.engine import InProcessEngine
from fedgan.experiment import run_experiment
from fedgan.federation import GeneratorServer
from fedgan.preparation import prepare
from tests.conftest import tiny_scenario

CORRUPTIONS = {
    "nan logit": lambda r: dataclasses.replace(r, logits=r.logits.clone().index_fill_(0, torch.tensor([3]),
                                                                                      float("nan"))),
    "inf gradient": lambda r: dataclasses.replace(r, input_grads=r.input_grads.clone().fill_(float("inf"))),
    "short logits": lambda r: dataclasses.replace(r, logits=r.logits[:-1]),
    "gradient shape": lambda r: dataclasses.replace(r, input_grads=r.input_grads.flatten(1)),
    "float64 logits": lambda r: dataclasses.replace(r, logits=r.logits.double()),
    "absurd magnitude": lambda r: dataclasses.replace(r, input_grads=r.input_grads * 1e9 + 1e9),
    "nan loss statistic": lambda r: dataclasses.replace(r, d_loss=float("nan")),
    "not a tensor": lambda r: dataclasses.replace(r, logits=[0.0] * len(r.logits)),
}


class HostileSite(InProcessEngine):
    """Site `hostile` answers with `corrupt(reply)`; with `silent`, it does not answer at all."""

    def __init__(self, scenario, hostile, corrupt=None, silent=False):
        super().__init__(scenario, "cpu")
        self.hostile, self.corrupt, self.silent = hostile, corrupt, silent

    def train_round(self, round_index, fake, labels, weights=None):
        replies = super().train_round(round_index, fake, labels, weights)
        if self.silent:
            replies.pop(self.hostile)
        else:
            replies[self.hostile] = self.corrupt(replies[self.hostile])
        return replies


def one_step(scenario, engine):
    train = prepare(scenario)[0].train
    server = GeneratorServer(scenario, engine.open(), train.image_shape, train.num_classes, torch.device("cpu"))
    record = server.step(engine)
    return copy.deepcopy(server.generator.state_dict()), record


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_a_hostile_reply_is_dropped_and_g_steps_as_without_that_site(kind):
    # Prepare
    scenario = tiny_scenario()

    # Execute: site 1 sends a corrupted reply; in the reference, site 1 does not answer at all.
    hostile, record = one_step(scenario, HostileSite(scenario, 1, CORRUPTIONS[kind]))
    reference, _ = one_step(scenario, HostileSite(scenario, 1, silent=True))

    # Assert: identical new weights, and the rejection with its reason in the round record.
    for key, value in reference.items():
        assert torch.equal(hostile[key], value), key
    assert record.sites_answered == 2 and set(record.rejected) == {"1"}
    assert record.as_dict()["rejected"]["1"]


def test_rejections_are_logged_in_metrics_and_the_run_completes(tmp_path):
    scenario = tiny_scenario(evaluation={"every": 0})
    run_experiment(scenario, HostileSite(scenario, 2, CORRUPTIONS["nan logit"]), tmp_path)
    rounds = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"kind": "round"' in line]
    assert len(rounds) == scenario.training.rounds
    assert all('"rejected": {"2": "logits hold NaN or infinite values"}' in line for line in rounds)


def test_a_node_reply_that_cannot_be_decoded_becomes_a_rejection_of_each_of_its_sites():
    import numpy as np
    from flwr.app import Array, ArrayRecord, RecordDict

    from fedgan import protocol as P
    from server.engine import FlowerEngine

    # A node hosting sites 4 and 5 answers with one site's arrays only, and another that names a site it lacks.
    short = RecordDict({P.ARRAYS: ArrayRecord({
        P.SITE_IDS: Array(np.array([4, 5])), P.LOGITS: Array(np.zeros((1, 8), np.float32)),
        P.INPUT_GRADS: Array(np.zeros((1, 8, 1, 28, 28), np.float32)), P.D_STATS: Array(np.zeros((1, 3), np.float32)),
    })})
    foreign = RecordDict({P.ARRAYS: ArrayRecord({
        P.SITE_IDS: Array(np.array([9])), P.LOGITS: Array(np.zeros((1, 8), np.float32)),
        P.INPUT_GRADS: Array(np.zeros((1, 8, 1, 28, 28), np.float32)), P.D_STATS: Array(np.zeros((1, 3), np.float32)),
    })})
    fake = torch.zeros(8, 1, 28, 28)
    from fedgan.reply_screen import screen_replies

    for content in (short, foreign):
        replies = FlowerEngine._decode_or_reject(content, [4, 5])
        accepted, rejected = screen_replies(replies, fake, 1e4)
        assert accepted == {} and sorted(rejected) == [4, 5]
        assert all(reason.startswith("undecodable reply") for reason in rejected.values())


def test_a_round_in_which_no_site_answers_leaves_g_unchanged_and_is_recorded():
    scenario = tiny_scenario()

    class Silent(InProcessEngine):
        def train_round(self, round_index, fake, labels, weights=None):
            super().train_round(round_index, fake, labels, weights)
            return {}

    train = prepare(scenario)[0].train
    engine = Silent(scenario, "cpu")
    server = GeneratorServer(scenario, engine.open(), train.image_shape, train.num_classes, torch.device("cpu"))
    before = {name: p.detach().clone() for name, p in server.generator.named_parameters()}
    record = server.step(engine)
    assert record.sites_answered == 0  # G's weights did not step (its batch-norm statistics saw the batch)
    assert all(torch.equal(p, before[name]) for name, p in server.generator.named_parameters())
