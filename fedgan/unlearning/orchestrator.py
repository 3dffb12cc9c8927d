"""Serving forget requests on a running federation: requests -> ledger -> methods -> certificates.

At a round boundary, `ForgetService.serve` admits the requests due (`intake.RequestIntake`: ledger, duplicates,
refusals) and serves the accepted ones together (their site-side stages run in one engine call). It measures the
federation once (`measurement.ForgettingProbe`), keeps a snapshot (the server's state here, each site's state at
the site), and runs every method of `[unlearning] methods` from that snapshot, measuring each. The federation then
continues from the first method that is not the reference (retrain's result when retrain ran alone), and each
request's certificate (`certificate.certificate`: every metric before, after each method, and for retrain, with
the gap to retrain and the speed-up) goes into the ledger and the summary.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedgan.datasets import DatasetSplits
from fedgan.engine import SiteEngine
from fedgan.evaluation.classifier import Evaluator
from fedgan.federation import GeneratorServer
from fedgan.forget import ForgetLedger, ForgetRequest, Resolution
from fedgan.scenario import Scenario
from fedgan.unlearning.base import METHODS, UnlearningJob, UnlearningMethod
from fedgan.unlearning.certificate import MethodOutcome, certificate
from fedgan.unlearning.intake import RequestIntake, union
from fedgan.unlearning.measurement import ForgettingProbe

LEDGER_FILE = "ledger.jsonl"

LogFn = Callable[[dict[str, Any]], None]


class ForgetService:
    """Takes forget requests at round boundaries and serves them with the scenario's unlearning methods."""

    def __init__(self, scenario: Scenario, splits: DatasetSplits, evaluator: Evaluator, run_dir: str | Path,
                 log: LogFn | None = None) -> None:
        self.scenario = scenario
        self.config = scenario.unlearning
        self.log = log or (lambda record: None)
        self.ledger = ForgetLedger(Path(run_dir) / LEDGER_FILE)
        self.intake = RequestIntake(scenario, splits, self.ledger, Path(run_dir), self.log)
        self.probe = ForgettingProbe(scenario, splits, evaluator)
        self.num_classes = splits.train.num_classes
        self.results: list[dict[str, Any]] = []

    def due(self, round_index: int) -> list[ForgetRequest]:
        """Scheduled requests for this round plus everything dropped into the inbox since the last round."""
        return self.intake.due(round_index)

    def serve(self, server: GeneratorServer, engine: SiteEngine, requests: list[ForgetRequest], round_index: int
              ) -> None:
        """Record, check and serve `requests` due after training round `round_index`; updates the federation."""
        batch = self.intake.admit(requests)
        if batch:
            self._serve_batch(server, engine, batch, round_index)

    # ---- one batch of accepted requests ----
    def _serve_batch(self, server: GeneratorServer, engine: SiteEngine, batch: list[Resolution], round_index: int
                     ) -> None:
        for resolution in batch:
            self.ledger.mark(resolution.request.request_id, "running", round=round_index)
        retained = self._retained_classes(batch)
        before = self.probe.measure(server, engine, batch, "before", retained)
        tag = f"before-{round_index}"
        engine.snapshot(tag)
        server_before, counts_before = copy.deepcopy(server.state_dict()), server.class_counts.copy()

        outcomes: list[MethodOutcome] = []
        for name in self.config.methods:
            engine.restore(tag)
            server.load_state_dict(copy.deepcopy(server_before))
            server.class_counts = counts_before.copy()
            job = self._job(server, engine, batch, round_index)
            outcomes.append(self._run_method(METHODS[name](), job, batch, round_index, retained))
        chosen = next((o for o in outcomes if not o.reference), outcomes[0])
        self._continue_from(chosen, server, engine)
        for stale in [tag] + [o.site_tag for o in outcomes]:
            engine.discard(stale)  # Flower contexts travel with every message: keep no copy beyond the batch
        self._certify(batch, before, outcomes)

    def _job(self, server: GeneratorServer, engine: SiteEngine, batch: list[Resolution], round_index: int
             ) -> UnlearningJob:
        forget_classes = tuple(sorted({c for r in batch for c in r.forget_classes}))
        return UnlearningJob(server, engine, union(batch), forget_classes, self.config, self.probe.labels_of,
                             forgotten_before=self.intake.forgotten_so_far(), training_rounds=round_index)

    def _run_method(self, method: UnlearningMethod, job: UnlearningJob, batch: list[Resolution], round_index: int,
                    retained: list[int]) -> MethodOutcome:
        server, engine = job.server, job.engine
        if self.config.drop_class_weight and job.forget_classes and not method.reference:
            job.drop_weights()  # w_s(c) -> 0 before the cascade starts
        bytes_before = engine.traffic.bytes_down + engine.traffic.bytes_up
        started = time.perf_counter()
        details = method.run(job)
        seconds = time.perf_counter() - started
        spent = engine.traffic.bytes_down + engine.traffic.bytes_up - bytes_before
        if not method.reference:
            details["stage_stats"] = job.stage_stats
        metrics = self.probe.measure(server, engine, batch, method.name, retained)
        site_tag = f"after-{method.name}-{round_index}"
        engine.snapshot(site_tag)
        self.log({"kind": "forget", "event": "method", "method": method.name, "seconds": seconds,
                  "rounds": job.rounds_used})
        return MethodOutcome(method.name, method.reference, seconds, job.rounds_used, spent, details,
                             copy.deepcopy(server.state_dict()), server.class_counts.copy(), site_tag, metrics)

    @staticmethod
    def _continue_from(chosen: MethodOutcome, server: GeneratorServer, engine: SiteEngine) -> None:
        """The federation goes on from the chosen method's result: its sites' states and the server's."""
        engine.restore(chosen.site_tag)
        server.load_state_dict(copy.deepcopy(chosen.server_state))
        server.class_counts = chosen.class_counts.copy()

    def _retained_classes(self, batch: list[Resolution]) -> list[int]:
        """Classes some site still holds once the batch is served (a class kept at another holder is retained)."""
        holdings = self.intake.holdings()
        remaining = sum(np.bincount(labels, minlength=self.num_classes) for labels in holdings.labels.values())
        for ids in union(batch).values():
            remaining = remaining - np.bincount(self.probe.labels_of(ids), minlength=self.num_classes)
        return [c for c in range(self.num_classes) if remaining[c] > 0]

    # ---- certificates ----
    def _certify(self, batch: list[Resolution], before: dict[int, dict[str, Any]], outcomes: list[MethodOutcome]
                 ) -> None:
        reference = next((o for o in outcomes if o.reference), None)
        certified = [o for o in outcomes if not o.reference] or outcomes
        for index, resolution in enumerate(batch):
            entries = [certificate(resolution.request, index, before, o, reference) for o in certified]
            self.ledger.mark(resolution.request.request_id, "done", forget_ids=resolution.forget_ids,
                             certificate=entries)
            self.results.extend(entries)
