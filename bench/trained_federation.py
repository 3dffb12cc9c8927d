"""Train a scenario's federation once, then serve forget requests from that one state (a bench helper).

The ablation benches compare unlearning variants on the same trained federation: `TrainedFederation` trains the
scenario in process up to a round (or loads what an earlier call saved), keeps that state as a snapshot, and
`serve` restores it before each variant, so every variant starts from identical G, sites and class counts.
"""
from __future__ import annotations

import copy
import io
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from fedgan.datasets import DatasetSplits
from fedgan.engine import InProcessEngine, SitesSnapshot
from fedgan.evaluation.classifier import Evaluator
from fedgan.federation import GeneratorServer
from fedgan.forget import ForgetRequest
from fedgan.scenario import Scenario, UnlearningConfig
from fedgan.storage import atomic_write_bytes
from fedgan.unlearning.orchestrator import ForgetService

TRAINED_TAG = "trained"


class TrainedFederation:
    """One federation trained to `rounds`; `serve` answers requests from that state with any [unlearning]."""

    def __init__(self, scenario: Scenario, splits: DatasetSplits, evaluator: Evaluator, rounds: int,
                 cache: Path | None = None, reuse: bool = False) -> None:
        """Train (or, with `reuse` and an existing `cache` file, load) the federation; save it to `cache`."""
        self.scenario, self.splits, self.evaluator, self.rounds = scenario, splits, evaluator, rounds
        self.engine = InProcessEngine(scenario, "cpu")
        sites = self.engine.open()
        self.server = GeneratorServer(scenario, sites, splits.train.image_shape, splits.train.num_classes,
                                      self.engine.device)
        if reuse and cache is not None and cache.exists():
            self._load(cache)
        else:
            started = time.perf_counter()
            for _ in range(rounds):
                self.server.step(self.engine)
            self.train_seconds = time.perf_counter() - started
        self.engine.snapshot(TRAINED_TAG)
        self._trained = copy.deepcopy(self.server.state_dict())
        self._counts = self.server.class_counts.copy()
        if cache is not None:
            self._save(cache)

    def _load(self, cache: Path) -> None:
        saved = torch.load(cache, weights_only=False)
        self.engine.load_snapshot(SitesSnapshot(sites=saved["sites"]))
        self.server.load_state_dict(saved["server"])
        self.server.class_counts, self.train_seconds = saved["counts"], saved["train_seconds"]

    def _save(self, cache: Path) -> None:
        buffer = io.BytesIO()
        torch.save({"sites": self.engine.export_snapshot(TRAINED_TAG).sites, "server": self._trained,
                    "counts": self._counts, "train_seconds": self.train_seconds}, buffer)
        atomic_write_bytes(cache, buffer.getvalue())

    def restore(self) -> None:
        """Back to the trained state: sites, G (with its optimizer and RNG) and the class counts."""
        self.engine.restore(TRAINED_TAG)
        self.server.load_state_dict(copy.deepcopy(self._trained))
        self.server.class_counts = self._counts.copy()

    def serve(self, unlearning: UnlearningConfig, requests: list[ForgetRequest], out: Path) -> list[dict[str, Any]]:
        """Serve `requests` together from the trained state with `unlearning`; one certificate per request. The
        server is left as the served method left it (so that its G can be sampled); `out` starts empty."""
        self.restore()
        shutil.rmtree(out, ignore_errors=True)  # a variant run again starts with an empty ledger
        service = ForgetService(self.scenario.replace(unlearning=unlearning), self.splits, self.evaluator, out)
        service.serve(self.server, self.engine, [r.with_id() for r in requests], self.rounds)
        return service.results
