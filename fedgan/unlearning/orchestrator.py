"""Serving forget requests on a running federation: requests -> ledger -> methods -> certificates.

At a round boundary, `ForgetService.serve` admits the requests due (`intake.RequestIntake`: ledger, duplicates,
refusals) and serves the accepted ones together as one batch (their site-side stages run in one engine call). The
federation runs the chosen method — the first of `[unlearning] methods` that is not the reference (retrain when
retrain is alone) — and continues from its result; the request is then `done`. Its proof is everything else the
certificate needs: the measurement before (`measurement.ForgettingProbe`), the measurement after the chosen method,
every other method run from the snapshot taken before the request, and retrain from scratch. With a proof pool
(`proof.ProofPool`, Ray workers) the proof runs on copies of the federation (`proof.ProofTask`) while the
federation trains on; without one, or where the engine cannot export the sites' snapshot, it runs in line and the
federation waits. When the proof is complete, each request's certificate (`certificate.certificate`: every metric
before, after each method, and for retrain, with the gap to retrain and the speed-up) goes into the ledger
(`certified`, or `proof-failed` with the reason) and the summary.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedgan.datasets import DatasetSplits
from fedgan.engine import SiteEngine
from fedgan.evaluation.classifier import Evaluator
from fedgan.federation import GeneratorServer
from fedgan.forget import ForgetLedger, ForgetRequest, Resolution, drop_request
from fedgan.scenario import Scenario
from fedgan.unlearning.base import METHODS, UnlearningJob
from fedgan.unlearning.certificate import MethodOutcome, certificate, where_and_when
from fedgan.unlearning.intake import RequestIntake, forget_classes, holds_partial_class_request, union
from fedgan.unlearning.measurement import ForgettingProbe
from fedgan.unlearning.proof import (
    PROOFS_DIR,
    ProofFiles,
    ProofPool,
    ProofTask,
    load_server_snapshot,
    proof_environment,
    run_method,
    run_proof,
    server_snapshot,
)
from fedgan.unlearning.retrain_spread import (
    extra_training_seeds,
    is_spread_label,
    retrain_spread,
    spread_label,
    with_training_seed,
)

LEDGER_FILE = "ledger.jsonl"

LogFn = Callable[[dict[str, Any]], None]


@dataclass
class PendingProof:
    """A served batch whose proof is still running: what the federation did, and the proof tasks' results."""

    number: int
    batch: list[Resolution]
    chosen: MethodOutcome  # measured by its own proof task (label = its name)
    expected: set[str]
    results: dict[str, MethodOutcome | BaseException] = field(default_factory=dict)


class ForgetService:
    """Takes forget requests at round boundaries and serves them with the scenario's unlearning methods."""

    def __init__(self, scenario: Scenario, splits: DatasetSplits, evaluator: Evaluator, run_dir: str | Path,
                 log: LogFn | None = None, proofs: ProofPool | None = None) -> None:
        self.scenario = scenario
        self.config = scenario.unlearning
        self.log = log or (lambda record: None)
        self.ledger = ForgetLedger(Path(run_dir) / LEDGER_FILE)
        self.intake = RequestIntake(scenario, splits, self.ledger, Path(run_dir), self.log)
        self.probe = ForgettingProbe(scenario, splits, evaluator)
        self.num_classes = splits.train.num_classes
        self.proofs = proofs
        self._batches = 0
        self._pending: dict[int, PendingProof] = {}
        self._certified: list[tuple[tuple[int, int, int], dict[str, Any]]] = []
        self.proof_files = ProofFiles(Path(run_dir) / PROOFS_DIR)

    @property
    def results(self) -> list[dict[str, Any]]:
        """Every certificate entry so far, in the order of batches, requests and methods (not of completion)."""
        return [entry for _, entry in sorted(self._certified, key=lambda item: item[0])]

    def due(self, round_index: int | None) -> list[ForgetRequest]:
        """Scheduled requests for this round plus everything dropped into the inbox since the last round (round
        None: the inbox only)."""
        return self.intake.due(round_index)

    def serve(self, server: GeneratorServer, engine: SiteEngine, requests: list[ForgetRequest], round_index: int
              ) -> None:
        """Record, check and serve `requests` due after training round `round_index`; updates the federation."""
        batch = self.intake.admit(requests, round_index)
        if batch:
            self._batches += 1
            self._serve_batch(server, engine, batch, round_index, self._batches)

    def collect(self, wait: bool = False) -> None:
        """Certify the batches whose proofs have finished (with `wait`: wait for every proof still running)."""
        if self.proofs is None:
            return
        for task, result in self.proofs.finished(wait):
            self._record(task, result)

    def _record(self, task: ProofTask, result: MethodOutcome | BaseException) -> None:
        """One proof task is back; the last one of its batch concludes the batch."""
        pending = self._pending.get(task.batch_number)
        if pending is None:  # its batch failed and was undone
            return
        pending.results[task.label] = result
        if set(pending.results) == pending.expected:
            del self._pending[task.batch_number]
            self._conclude(pending)
            self.proof_files.remove(pending.number)

    # ---- checkpoints ----
    def checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the service (the ledger is its own file): certificates, batch count, and the
        batches whose proofs are still running (their tasks are in the run's proofs/ folder)."""
        return {"batches": self._batches, "certified": [[list(key), entry] for key, entry in self._certified],
                "pending": sorted(self._pending)}

    def resume(self, state: dict[str, Any], ledger_lines: int) -> None:
        """Back to a checkpoint: the ledger rolled back to what it covered (requests from the inbox after it are
        queued again for the round they were taken in), and the proofs that were running started again."""
        self._batches = int(state.get("batches", 0))
        self._certified = [(tuple(key), entry) for key, entry in state.get("certified", [])]
        for entry in self.ledger.roll_back(ledger_lines):
            request = entry.get("request")
            if entry["state"] == "received" and request and request.get("source") == "external":
                redo = {**request, "round": entry.get("round") or request.get("round")}
                drop_request(self.intake.run_dir, ForgetRequest.from_dict(redo))
        for number in state.get("pending", []):
            tasks, chosen = self.proof_files.load(number)
            batch = list(tasks[0].batch)
            self._pending[number] = PendingProof(number, batch, chosen, {t.label for t in tasks})
            for task in tasks:
                self._run_or_submit(task)

    def _run_or_submit(self, task: ProofTask) -> None:
        if self.proofs is not None:
            self.proofs.submit(task)
            return
        try:  # no workers in this run: the proof runs here
            result: MethodOutcome | BaseException = run_proof(task)
        except Exception as error:  # noqa: BLE001 — recorded as proof-failed
            result = error
        self._record(task, result)

    # ---- one batch of accepted requests ----
    def _serve_batch(self, server: GeneratorServer, engine: SiteEngine, batch: list[Resolution], round_index: int,
                     number: int) -> None:
        for resolution in batch:
            self.ledger.mark(resolution.request.request_id, "running", round=round_index)
        tag, saved = f"before-{number}", server_snapshot(server)
        engine.snapshot(tag)
        try:
            self._serve_from_snapshot(server, engine, batch, round_index, number, tag, saved)
        except Exception as error:  # noqa: BLE001 — a failed batch is refused, the run goes on
            self._abandon(server, engine, batch, number, tag, saved, error)
        finally:
            engine.discard(tag)  # Flower nodes keep snapshots as files: keep none beyond the batch

    def _abandon(self, server: GeneratorServer, engine: SiteEngine, batch: list[Resolution], number: int, tag: str,
                 saved: bytes, error: Exception) -> None:
        """Serving failed half-way (a site raised, a node timed out): the federation returns to its state before
        the batch, nothing half-applied, and every request of the batch is refused with the reason."""
        self._pending.pop(number, None)  # proof tasks already started report to nobody
        engine.restore(tag)
        load_server_snapshot(server, saved)
        reason = f"serving failed and was undone: {_one_line(error)}"
        for resolution in batch:
            self.ledger.mark(resolution.request.request_id, "refused", reason=reason)
        self.log({"kind": "forget", "event": "failed", "batch": number, "reason": reason})

    def _serve_from_snapshot(self, server: GeneratorServer, engine: SiteEngine, batch: list[Resolution],
                             round_index: int, number: int, tag: str, saved: bytes) -> None:
        retained = self._retained_classes(batch)
        chosen = next((name for name in self.config.methods if not METHODS[name].reference), self.config.methods[0])
        others = [name for name in self.config.methods if name != chosen]
        sites = engine.export_snapshot(tag) if self.proofs is not None else None
        if sites is None:
            self._serve_in_line(server, engine, batch, round_index, number, retained, chosen, others, tag, saved)
            return
        # ---------------- the proof starts on the workers; the federation serves the chosen method ----------------
        def task(label: str, method: str | None, server_bytes: bytes | None, site_states: Any) -> ProofTask:
            return ProofTask(number, label, method, self.scenario.to_json(), tuple(batch), tuple(retained),
                             round_index, self.intake.forgotten_so_far(), server_bytes, site_states,
                             self.config.proof_threads, proof_environment())

        tasks = [task(name, name, None, None) if METHODS[name].reference  # retrain starts from round 0
                 else task(name, name, saved, sites) for name in others]
        tasks += self._spread_tasks(batch, round_index, number, retained, self.config.proof_threads,
                                    proof_environment())
        tasks.sort(key=lambda t: t.server is not None)  # retrain, the longest, first
        tasks.append(task("before", None, saved, sites))
        job = self._job(server, engine, batch, round_index, retained)
        outcome = run_method(METHODS[chosen](), job, None, batch, retained)
        after_tag = f"after-{number}"
        engine.snapshot(after_tag)
        after = engine.export_snapshot(after_tag)
        engine.discard(after_tag)
        tasks.append(task(chosen, None, server_snapshot(server), after))
        self._pending[number] = PendingProof(number, batch, outcome, {t.label for t in tasks})
        self.proof_files.save(number, tasks, outcome)  # a resumed run starts them again from here
        for proof in tasks:
            self.proofs.submit(proof)
        self._mark_done(batch, outcome)

    def _serve_in_line(self, server: GeneratorServer, engine: SiteEngine, batch: list[Resolution],
                       round_index: int, number: int, retained: list[int], chosen: str, others: list[str],
                       tag: str, saved: bytes) -> None:
        """The whole proof here and now, the federation waiting: every other method from the snapshot, then the
        chosen one, whose result the federation continues from."""
        before = self.probe.measure(server, engine, batch, "before", retained, self.intake.forgotten_so_far())
        outcomes: dict[str, MethodOutcome] = {}
        for name in others:
            job = self._job(server, engine, batch, round_index, retained)
            outcomes[name] = run_method(METHODS[name](), job, self.probe, batch, retained)
            engine.restore(tag)
            load_server_snapshot(server, saved)
        # retrain under the further training seeds: fresh federations of their own, this process's threads kept
        spread = {t.label: run_proof(t) for t in self._spread_tasks(batch, round_index, number, retained,
                                                                     torch.get_num_threads(), {})}
        job = self._job(server, engine, batch, round_index, retained)
        outcomes[chosen] = run_method(METHODS[chosen](), job, self.probe, batch, retained)
        self._mark_done(batch, outcomes[chosen])
        self._certify(number, batch, before, outcomes, spread=spread)

    def _spread_tasks(self, batch: list[Resolution], round_index: int, number: int, retained: list[int],
                      threads: int, environment: dict[str, str]) -> list[ProofTask]:
        """One proof task per extra training seed of `retrain-seeds`: retrain from round 0 on the run's partition."""
        return [ProofTask(number, spread_label(seed), "retrain", with_training_seed(self.scenario, seed).to_json(),
                          tuple(batch), tuple(retained), round_index, self.intake.forgotten_so_far(), None, None,
                          threads, environment)
                for seed in extra_training_seeds(self.scenario)]

    def _job(self, server: GeneratorServer, engine: SiteEngine, batch: list[Resolution], round_index: int,
             retained: list[int]) -> UnlearningJob:
        config = self.config.for_batch(holds_partial_class_request(batch, retained))
        return UnlearningJob(server, engine, union(batch), forget_classes(batch), config, self.probe.labels_of,
                             forgotten_before=self.intake.forgotten_so_far(), training_rounds=round_index)

    def _mark_done(self, batch: list[Resolution], outcome: MethodOutcome) -> None:
        """The federation has forgotten: the ids are gone and the federation continues from `outcome`."""
        self.log({"kind": "forget", "event": "method", "method": outcome.name, "seconds": outcome.seconds,
                  "rounds": outcome.rounds, "worker": outcome.worker})
        for resolution in batch:
            self.ledger.mark(resolution.request.request_id, "done", forget_ids=resolution.forget_ids,
                             method=outcome.name, method_seconds=outcome.seconds, rounds=outcome.rounds)

    def _retained_classes(self, batch: list[Resolution]) -> list[int]:
        """Classes some site still holds once the batch is served (a class kept at another holder is retained)."""
        holdings = self.intake.holdings()
        remaining = sum(np.bincount(labels, minlength=self.num_classes) for labels in holdings.labels.values())
        for ids in union(batch).values():
            remaining = remaining - np.bincount(self.probe.labels_of(ids), minlength=self.num_classes)
        return [c for c in range(self.num_classes) if remaining[c] > 0]

    # ---- certificates ----
    def _conclude(self, pending: PendingProof) -> None:
        """A batch's proof tasks are all back: its certificates, or proof-failed with the reason."""
        failed = {label: r for label, r in pending.results.items() if isinstance(r, BaseException)}
        if failed:
            reason = "; ".join(f"{label}: {_one_line(error)}" for label, error in sorted(failed.items()))
            for resolution in pending.batch:
                self.ledger.mark(resolution.request.request_id, "proof-failed", reason=reason)
            self.log({"kind": "forget", "event": "proof-failed", "batch": pending.number, "reason": reason})
            return
        results: dict[str, Any] = dict(pending.results)
        tasks = [{"task": label, "seconds": r.seconds, **where_and_when(r)} for label, r in sorted(results.items())]
        self.log({"kind": "forget", "event": "proof", "batch": pending.number, "tasks": tasks})
        chosen = replace(pending.chosen, metrics=results.pop(pending.chosen.name).metrics)
        before = results.pop("before").metrics
        spread = {label: results.pop(label) for label in sorted(results) if is_spread_label(label)}
        self._certify(pending.number, pending.batch, before, {chosen.name: chosen, **results}, tasks, spread)

    def _certify(self, number: int, batch: list[Resolution], before: dict[int, dict[str, Any]],
                 outcomes: dict[str, MethodOutcome], tasks: list[dict[str, Any]] | None = None,
                 spread: dict[str, MethodOutcome] | None = None) -> None:
        ordered = [outcomes[name] for name in self.config.methods]
        reference = next((o for o in ordered if o.reference), None)
        certified = [o for o in ordered if not o.reference] or ordered
        retrains = ([(self.scenario.seed, reference)] + [(seed, spread[spread_label(seed)])
                                                         for seed in extra_training_seeds(self.scenario)]
                    if reference is not None and spread else None)
        for index, resolution in enumerate(batch):
            entries = [certificate(resolution.request, index, before, o, reference,
                                   retrain_spread(resolution.request, index, o.metrics[index], retrains)
                                   if retrains else None) for o in certified]
            self.ledger.mark(resolution.request.request_id, "certified", certificate=entries,
                             proof_tasks=tasks or [])
            self._certified += [((number, index, k), entry) for k, entry in enumerate(entries)]


def _one_line(error: BaseException) -> str:
    """The last line of an error's message (a worker's error arrives with its whole traceback)."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__
