"""Serving forget requests on a running federation: requests -> ledger -> methods -> proof against retraining.

At a round boundary, `ForgetService.serve` takes the requests due (the scenario's `[[forget]]` schedule and the run
directory's inbox, filled by `fedgan forget`), records each in the ledger, refuses what cannot be served (with the
reason), and serves the rest together (their site-side stages run in one engine call). For each method of
`[unlearning] methods` it starts from the same snapshot of the federation (server state here, site states kept at
the sites), runs the method, and measures; `retrain` rebuilds the federation from round 0 without the forgotten
items, same seeds and round budget. The federation then continues from the first method's result (or retrain's,
when it is the only one). Each request's certificate — every metric before, after each method, and for retrain,
with the gap to retrain and the speed-up — goes into the ledger and the summary.
"""
from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedgan.datasets import DatasetSplits
from fedgan.engine import SiteEngine, SiteIds, site_positions
from fedgan.evaluation.classifier import Evaluator
from fedgan.evaluation.forgetting import (
    downstream_accuracy,
    forget_class_rate,
    membership_inference,
    pseudo_label,
    retained_fid,
    with_retrain_gap,
)
from fedgan.evaluation.metrics import class_histogram
from fedgan.federation import GeneratorServer
from fedgan.forget import ForgetLedger, ForgetRequest, Holdings, Refusal, Resolution, resolve_request, take_requests
from fedgan.scenario import Scenario, UnlearningConfig
from fedgan.unlearning.base import METHODS, UnlearningJob

LEDGER_FILE = "ledger.jsonl"
CERTIFIED = ("forget_class_rate", "fid_lenet_retained", "kid_retained", "downstream_accuracy",
             "mia_auc_forget_vs_nonmember", "mia_auc_member_vs_nonmember", "mia_auc_forget_vs_member",
             "mia_tpr_at_1pct_fpr_forget", "class_histogram")

LogFn = Callable[[dict[str, Any]], None]


@dataclass
class MethodOutcome:
    """What one method did to the federation: its cost and the state it left (to continue from)."""

    name: str
    seconds: float
    rounds: int
    bytes: int
    details: dict[str, Any]
    server_state: dict[str, Any] | None
    site_tag: str | None
    metrics: dict[int, dict[str, Any]]  # request index -> measured metrics after this method


class ForgetService:
    """Takes forget requests at round boundaries and serves them with the scenario's unlearning methods."""

    def __init__(self, scenario: Scenario, splits: DatasetSplits, evaluator: Evaluator, run_dir: str | Path,
                 log: LogFn | None = None) -> None:
        self.scenario = scenario
        self.config: UnlearningConfig = scenario.unlearning
        self.splits = splits
        self.evaluator = evaluator
        self.run_dir = Path(run_dir)
        self.ledger = ForgetLedger(self.run_dir / LEDGER_FILE)
        self.log = log or (lambda record: None)
        self.results: list[dict[str, Any]] = []
        train = splits.train
        order = np.argsort(train.ids.numpy())
        self._sorted_ids, self._order = train.ids.numpy()[order], order

    # ---- which requests are due ----
    def due(self, round_index: int) -> list[ForgetRequest]:
        """Scheduled requests for this round plus everything dropped into the inbox since the last round."""
        scheduled = [r.with_id() for r in self.scenario.forget if r.round == round_index]
        external, malformed = take_requests(self.run_dir)
        for name, reason in malformed:
            self.log({"kind": "forget", "event": "malformed", "file": name, "reason": reason})
        return scheduled + [r.with_id() for r in external]

    def holdings(self) -> Holdings:
        """What each site holds now: its partition minus everything the ledger says is forgotten."""
        train = self.splits.train
        forgotten = self.ledger.forgotten_ids()
        ids, labels = {}, {}
        for site, positions in enumerate(site_positions(self.scenario)):
            site_ids = train.ids.numpy()[positions]
            keep = ~np.isin(site_ids, np.fromiter(forgotten.get(site, ()), dtype=np.int64))
            ids[site], labels[site] = site_ids[keep], train.labels.numpy()[positions][keep]
        return Holdings(ids, labels)

    # ---- serving ----
    def serve(self, server: GeneratorServer, engine: SiteEngine, requests: list[ForgetRequest], round_index: int
              ) -> None:
        """Record, check and serve `requests` due after training round `round_index`; updates the federation."""
        accepted: list[Resolution] = []
        holdings = self.holdings()
        for request in requests:
            request_id, new = self.ledger.receive(request)
            if not new:
                self.log({"kind": "forget", "event": "duplicate", "request": request_id})
                continue
            try:
                accepted.append(resolve_request(request, holdings, self.splits.train.num_classes))
            except Refusal as refusal:
                self.ledger.mark(request_id, "refused", reason=refusal.reason)
                self.log({"kind": "forget", "event": "refused", "request": request_id, "reason": refusal.reason})
        if accepted:
            self._serve_batch(server, engine, accepted, round_index)

    def _serve_batch(self, server: GeneratorServer, engine: SiteEngine, batch: list[Resolution], round_index: int
                     ) -> None:
        forget_ids = _union(batch)
        forget_classes = tuple(sorted({c for r in batch for c in r.forget_classes}))
        for resolution in batch:
            self.ledger.mark(resolution.request.request_id, "running", round=round_index)
        tag = f"before-{round_index}"
        before = self._measure(server, engine, batch, "before")
        engine.snapshot(tag)
        server_before = copy.deepcopy(server.state_dict())
        counts_before = server.class_counts.copy()

        outcomes: list[MethodOutcome] = []
        for name in self.config.methods:
            if name == "retrain":
                continue
            engine.restore(tag)
            server.load_state_dict(copy.deepcopy(server_before))
            server.class_counts = counts_before.copy()
            outcomes.append(self._run_method(name, server, engine, forget_ids, forget_classes, batch, round_index))
        retrain = None
        if "retrain" in self.config.methods:
            retrain = self._retrain(server, engine, forget_ids, batch, round_index)
        self._continue_from(outcomes, retrain, server, engine, counts_before, forget_ids)
        for stale in [tag] + [o.site_tag for o in (*outcomes, retrain) if o is not None and o.site_tag]:
            engine.discard(stale)  # Flower contexts travel with every message: keep no copy beyond the batch
        self._certify(batch, before, outcomes, retrain)

    def _run_method(self, name: str, server: GeneratorServer, engine: SiteEngine, forget_ids: SiteIds,
                    forget_classes: tuple[int, ...], batch: list[Resolution], round_index: int) -> MethodOutcome:
        job = UnlearningJob(server, engine, forget_ids, forget_classes, self.config)
        if self.config.drop_class_weight and forget_classes:
            _drop_counts(server, forget_ids, self._labels_of)  # w_s(c) -> 0 before the cascade starts
        bytes_before = engine.traffic.bytes_down + engine.traffic.bytes_up
        started = time.perf_counter()
        with scaled_learning_rate(server.optimizer, self.config.generator_lr_scale):
            details = METHODS[name]().run(job)
        seconds = time.perf_counter() - started
        spent = engine.traffic.bytes_down + engine.traffic.bytes_up - bytes_before
        if not self.config.drop_class_weight or not forget_classes:
            _drop_counts(server, forget_ids, self._labels_of)  # the sites now hold less: weights follow
        details["stage_stats"] = job.stage_stats
        metrics = self._measure(server, engine, batch, name)
        site_tag = f"after-{name}-{round_index}"
        engine.snapshot(site_tag)
        self.log({"kind": "forget", "event": "method", "method": name, "seconds": seconds,
                  "rounds": job.rounds_used})
        return MethodOutcome(name, seconds, job.rounds_used, spent, details, copy.deepcopy(server.state_dict()),
                             site_tag, metrics)

    def _retrain(self, server: GeneratorServer, engine: SiteEngine, forget_ids: SiteIds, batch: list[Resolution],
                 round_index: int) -> MethodOutcome:
        """A fresh federation without every forgotten item, same seeds, trained for the same number of rounds.

        The budget is the original run's training rounds up to the request (generator steps that earlier
        unlearning spent are not part of it: retraining from scratch never needs them).
        """
        forgotten = {s: set(map(int, ids)) for s, ids in self.ledger.forgotten_ids().items()}
        for site, ids in forget_ids.items():
            forgotten.setdefault(site, set()).update(map(int, ids))
        bytes_before = engine.traffic.bytes_down + engine.traffic.bytes_up
        started = time.perf_counter()
        sites = engine.open({s: np.asarray(sorted(v), dtype=np.int64) for s, v in forgotten.items()})
        fresh = GeneratorServer(self.scenario, sites, self.splits.train.image_shape, self.splits.train.num_classes,
                                server.device)
        for _ in range(round_index):
            fresh.step(engine)
        seconds = time.perf_counter() - started
        spent = engine.traffic.bytes_down + engine.traffic.bytes_up - bytes_before
        metrics = self._measure(fresh, engine, batch, "retrain")
        self.log({"kind": "forget", "event": "method", "method": "retrain", "seconds": seconds, "rounds": round_index})
        state = copy.deepcopy(fresh.state_dict())
        state["class_counts"] = fresh.class_counts.copy()
        engine.snapshot(f"after-retrain-{round_index}")
        return MethodOutcome("retrain", seconds, round_index, spent, {}, state, f"after-retrain-{round_index}",
                             metrics)

    def _continue_from(self, outcomes: list[MethodOutcome], retrain: MethodOutcome | None, server: GeneratorServer,
                       engine: SiteEngine, counts_before: np.ndarray, forget_ids: SiteIds) -> None:
        """The federation goes on from the first method's result (retrain's when it ran alone)."""
        chosen = outcomes[0] if outcomes else retrain
        if chosen is None:
            return
        engine.restore(chosen.site_tag)
        state = dict(chosen.server_state)
        state.pop("class_counts", None)
        server.load_state_dict(state)
        server.class_counts = counts_before.copy()
        _drop_counts(server, forget_ids, self._labels_of)

    # ---- measurement ----
    def _labels_of(self, ids: np.ndarray) -> np.ndarray:
        return self.splits.train.labels.numpy()[self._positions(ids)]

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        return self._order[np.searchsorted(self._sorted_ids, np.asarray(ids, dtype=np.int64))]

    def _measure(self, server: GeneratorServer, engine: SiteEngine, batch: list[Resolution], tag: str
                 ) -> dict[int, dict[str, Any]]:
        """Every request's metrics for the federation as it stands (G samples; the requesting site's D)."""
        c = self.config
        fake = server.sample(c.eval_samples, f"certificate-{tag}")
        shared = {"class_histogram": class_histogram(self.evaluator, fake, self.splits.train.num_classes)}
        shared.update(self._generator_metrics(server, fake, self._retained_classes(batch), tag))
        out: dict[int, dict[str, Any]] = {}
        for index, resolution in enumerate(batch):
            metrics = dict(shared)
            if resolution.forget_classes:
                metrics["forget_class_rate"] = forget_class_rate(self.evaluator, fake, resolution.forget_classes)
            if resolution.request.kind == "items":
                metrics.update(self._membership(engine, resolution, index))
            out[index] = metrics
        return out

    def _retained_classes(self, batch: list[Resolution]) -> list[int]:
        """Classes some site still holds once the batch is served (a class kept at another holder is retained)."""
        holdings = self.holdings()
        num_classes = self.splits.train.num_classes
        remaining = sum(np.bincount(labels, minlength=num_classes) for labels in holdings.labels.values())
        for ids in _union(batch).values():
            remaining = remaining - np.bincount(self._labels_of(ids), minlength=num_classes)
        return [c for c in range(num_classes) if remaining[c] > 0]

    def _generator_metrics(self, server: GeneratorServer, fake: torch.Tensor, retained: list[int], tag: str
                           ) -> dict[str, Any]:
        """Quality of G on what the federation still holds: FID/KID against those classes, downstream accuracy."""
        test = self.splits.test
        num_classes = self.splits.train.num_classes
        metrics: dict[str, Any] = {}
        metrics.update(retained_fid(self.evaluator, test.float_images(), test.labels, fake, retained))
        train_images = server.sample(self.config.downstream_samples, f"downstream-{tag}")
        train_labels = pseudo_label(self.evaluator, train_images)  # an unconditional G's samples carry no label
        metrics["downstream_accuracy"] = downstream_accuracy(
            train_images, train_labels, test.float_images(), test.labels, num_classes, classes=retained,
            epochs=self.config.downstream_epochs, seed=0)
        return metrics

    def _membership(self, engine: SiteEngine, resolution: Resolution, index: int) -> dict[str, Any]:
        """LOGAN-style attack on the requesting site's D: F forgotten, R retained members, N test non-members."""
        site = resolution.request.site
        rng = np.random.default_rng(index)
        train, test = self.splits.train, self.splits.test
        forget = np.asarray(resolution.forget_ids[site])
        forget = rng.permutation(forget)[: self.config.mia_size]
        classes = np.unique(self._labels_of(forget))
        positions = site_positions(self.scenario)[site]
        held = train.ids.numpy()[positions]
        member_pool = held[~np.isin(held, np.asarray(resolution.forget_ids[site]))]
        member_pool = member_pool[np.isin(self._labels_of(member_pool), classes)]
        member = rng.permutation(member_pool)[: len(forget)]
        nonmember = rng.permutation(np.flatnonzero(np.isin(test.labels.numpy(), classes)))[: len(forget)]
        scores = []
        for images, labels in ((train.float_images()[self._positions(forget)], train.labels[self._positions(forget)]),
                               (train.float_images()[self._positions(member)], train.labels[self._positions(member)]),
                               (test.float_images()[nonmember], test.labels[nonmember])):
            scores.append(engine.scores(site, images, labels if self.scenario.model.conditional else None).numpy())
        return membership_inference(*scores)

    # ---- certificates ----
    def _certify(self, batch: list[Resolution], before: dict[int, dict[str, Any]], outcomes: list[MethodOutcome],
                 retrain: MethodOutcome | None) -> None:
        for index, resolution in enumerate(batch):
            request = resolution.request
            entries = []
            for outcome in outcomes or ([retrain] if retrain else []):
                entries.append(self._certificate(request, index, before, outcome, retrain))
            self.ledger.mark(request.request_id, "done", forget_ids=resolution.forget_ids, certificate=entries)
            self.results.extend(entries)

    @staticmethod
    def _certificate(request: ForgetRequest, index: int, before: dict[int, dict[str, Any]], outcome: MethodOutcome,
                     retrain: MethodOutcome | None) -> dict[str, Any]:
        retrain_metrics = retrain.metrics[index] if retrain else {}
        entry: dict[str, Any] = {"request": request.to_dict(), "method": outcome.name}
        entry.update(with_retrain_gap(before[index], outcome.metrics[index], retrain_metrics, CERTIFIED))
        entry.update({"seconds": outcome.seconds, "rounds": outcome.rounds, "bytes": outcome.bytes,
                      "details": outcome.details})
        if retrain is not None:
            entry["retrain_seconds"] = retrain.seconds
            entry["retrain_rounds"] = retrain.rounds
            entry["speedup_vs_retrain"] = retrain.seconds / max(outcome.seconds, 1e-9)
            entry["speedup_rounds_vs_retrain"] = retrain.rounds / max(outcome.rounds, 1)
        return entry


@contextlib.contextmanager
def scaled_learning_rate(optimizer: torch.optim.Optimizer, scale: float) -> Iterator[None]:
    """G's learning rate times `scale` inside the block, restored afterwards."""
    saved = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * scale
    try:
        yield
    finally:
        for group, lr in zip(optimizer.param_groups, saved):
            group["lr"] = lr


def _union(batch: list[Resolution]) -> SiteIds:
    """Forget sets of several requests, merged per site."""
    merged: dict[int, set[int]] = {}
    for resolution in batch:
        for site, ids in resolution.forget_ids.items():
            merged.setdefault(site, set()).update(map(int, ids))
    return {site: np.asarray(sorted(ids), dtype=np.int64) for site, ids in sorted(merged.items())}


def _drop_counts(server: GeneratorServer, forget_ids: SiteIds, labels_of: Callable[[np.ndarray], np.ndarray]) -> None:
    """The server's class counts (aggregation weights) after the sites drop these items."""
    for site, ids in forget_ids.items():
        index = server.site_ids.index(site)
        counts = np.bincount(labels_of(ids), minlength=server.class_counts.shape[1])
        server.class_counts[index] = np.maximum(server.class_counts[index] - counts, 0)
