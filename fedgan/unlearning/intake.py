"""Taking forget requests in: which are due, what each site holds, and which can be served.

At a round boundary the scenario's `[[forget]]` schedule and the run directory's inbox (filled by `fedgan forget`)
give the requests due. Each is recorded in the ledger (received); a duplicate of a served request is skipped; the
rest are resolved against what the sites hold now (their partition minus everything the ledger says is forgotten),
and what cannot be served is refused with its reason.
"""
from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from fedgan.datasets import DatasetSplits
from fedgan.engine import SiteIds, site_positions
from fedgan.forget import ForgetLedger, ForgetRequest, Holdings, Refusal, Resolution, resolve_request, take_requests
from fedgan.scenario import Scenario

LogFn = Callable[[dict[str, Any]], None]


class RequestIntake:
    """The requests side of the forget service: the schedule, the inbox, the ledger's first transitions."""

    def __init__(self, scenario: Scenario, splits: DatasetSplits, ledger: ForgetLedger, run_dir: Any,
                 log: LogFn) -> None:
        self.scenario = scenario
        self.splits = splits
        self.ledger = ledger
        self.run_dir = run_dir
        self.log = log

    def due(self, round_index: int | None) -> list[ForgetRequest]:
        """Scheduled requests for this round plus everything dropped into the inbox since the last round (round
        None: the inbox only, after the last round)."""
        scheduled = [r.with_id() for r in self.scenario.forget if r.round == round_index]
        external, malformed = take_requests(self.run_dir, round_index)
        for name, reason in malformed:  # refused in the ledger too: no request that arrived goes unrecorded
            request_id = self.ledger.refuse_unreadable(name, reason)
            self.log({"kind": "forget", "event": "malformed", "file": name, "reason": reason, "request": request_id})
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

    def admit(self, requests: list[ForgetRequest], round_index: int | None = None) -> list[Resolution]:
        """Record every request (received after `round_index`); skip duplicates; refuse what cannot be served;
        resolve the rest."""
        accepted: list[Resolution] = []
        holdings = self.holdings()
        for request in requests:
            try:
                request_id, new = self.ledger.receive(request, round_index)
            except ValueError:  # its id names another request: received under a fresh id, then refused
                self._refuse_taken_id(request)
                continue
            if not new:
                self.log({"kind": "forget", "event": "duplicate", "request": request_id})
                continue
            try:
                accepted.append(resolve_request(request, holdings, self.splits.train.num_classes))
            except Refusal as refusal:
                self.ledger.mark(request_id, "refused", reason=refusal.reason)
                self.log({"kind": "forget", "event": "refused", "request": request_id, "reason": refusal.reason})
        return accepted

    def _refuse_taken_id(self, request: ForgetRequest) -> str:
        taken = request.request_id
        fresh = dataclasses.replace(request, request_id=f"{taken}-{uuid.uuid4().hex[:8]}")
        request_id, _ = self.ledger.receive(fresh, fresh.round)
        reason = f"request id {taken} is already used by another request; drop it again without request-id"
        self.ledger.mark(request_id, "refused", reason=reason)
        self.log({"kind": "forget", "event": "refused", "request": request_id, "reason": reason})
        return request_id

    def forgotten_so_far(self) -> SiteIds:
        """Every id forgotten by a served request, per site (what a retrain from scratch starts without)."""
        return {site: np.asarray(sorted(ids), dtype=np.int64) for site, ids in self.ledger.forgotten_ids().items()}


def union(batch: list[Resolution]) -> SiteIds:
    """Forget sets of several requests, merged per site."""
    merged: dict[int, set[int]] = {}
    for resolution in batch:
        for site, ids in resolution.forget_ids.items():
            merged.setdefault(site, set()).update(map(int, ids))
    return {site: np.asarray(sorted(ids), dtype=np.int64) for site, ids in sorted(merged.items())}


def forget_classes(batch: list[Resolution]) -> tuple[int, ...]:
    """Every class a batch of requests forgets, sorted."""
    return tuple(sorted({c for resolution in batch for c in resolution.forget_classes}))


def holds_partial_class_request(batch: list[Resolution], retained: list[int]) -> bool:
    """Whether the batch forgets a class at some sites that other sites keep (`retained`: the classes some site
    still holds once the batch is served): such a batch is served with [unlearning.partial]."""
    return bool(set(forget_classes(batch)) & set(retained))
