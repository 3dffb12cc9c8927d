"""A forget request's certificate: every metric before, after a method, and for retrain, with the cost.

Each entry is what one method did for one request (`summary.json` `unlearning`, `ledger.jsonl`, `unlearning.md`):
for every certified metric `{before, after, retrain, gap_to_retrain}`, and the cost — seconds, generator rounds,
bytes, retrain's seconds and rounds, and the speed-ups over retrain in seconds and in rounds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fedgan.evaluation.forgetting import with_retrain_gap
from fedgan.forget import ForgetRequest

CERTIFIED = ("forget_class_rate", "fid_lenet_retained", "kid_retained", "downstream_accuracy",
             "mia_auc_forget_vs_nonmember", "mia_auc_member_vs_nonmember", "mia_auc_forget_vs_member",
             "mia_tpr_at_1pct_fpr_forget", "class_histogram")


@dataclass
class MethodOutcome:
    """What one method did to the federation (its cost and its measurement), or one measurement alone (rounds 0).

    `started_at` / `finished_at` (wall clock) and `worker` say where and when it ran: a proof worker's host:pid,
    or ``inline`` for the federation's own process.
    """

    name: str
    reference: bool
    seconds: float
    rounds: int
    bytes: int
    details: dict[str, Any]
    metrics: dict[int, dict[str, Any]]  # request index -> measured metrics after this method
    started_at: float = 0.0
    finished_at: float = 0.0
    worker: str = "inline"


def certificate(request: ForgetRequest, index: int, before: dict[int, dict[str, Any]], outcome: MethodOutcome,
                reference: MethodOutcome | None) -> dict[str, Any]:
    """The certificate entry of request number `index` of its batch, for `outcome`, against `reference`."""
    reference_metrics = reference.metrics[index] if reference else {}
    entry: dict[str, Any] = {"request": request.to_dict(), "method": outcome.name}
    entry.update(with_retrain_gap(before[index], outcome.metrics[index], reference_metrics, CERTIFIED))
    entry.update({"seconds": outcome.seconds, "rounds": outcome.rounds, "bytes": outcome.bytes,
                  "details": outcome.details})
    entry["ran"] = where_and_when(outcome)  # proof workers overlap in time: the ledger shows it
    if reference is not None:
        entry["retrain_ran"] = where_and_when(reference)
    if reference is not None:
        entry["retrain_seconds"] = reference.seconds
        entry["retrain_rounds"] = reference.rounds
        entry["speedup_vs_retrain"] = reference.seconds / max(outcome.seconds, 1e-9)
        entry["speedup_rounds_vs_retrain"] = reference.rounds / max(outcome.rounds, 1)
    return entry


def where_and_when(outcome: MethodOutcome) -> dict[str, Any]:
    """The worker an outcome ran on and its wall-clock start and end."""
    return {"worker": outcome.worker, "started_at": outcome.started_at, "finished_at": outcome.finished_at}
