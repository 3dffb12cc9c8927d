"""A forget request's certificate: every metric before, after a method, and for retrain, with the cost.

Each entry is what one method did for one request (`summary.json` `unlearning`, `ledger.jsonl`, `unlearning.md`):
for every certified metric `{before, after, retrain, gap_to_retrain}`, and the cost — seconds, generator rounds,
site D steps, bytes, retrain's seconds, rounds and D steps, and the speed-ups over retrain in each.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fedgan.evaluation.forgetting import with_retrain_gap
from fedgan.forget import ForgetRequest

CERTIFIED = ("forget_class_rate", "forget_class_rate_unasked", "forget_class_rate_asked", "fid_lenet_retained",
             "kid_retained", "downstream_accuracy", "mia_auc_forget_vs_nonmember",
             "mia_auc_forget_vs_nonmember_stderr", "mia_auc_member_vs_nonmember",
             "mia_auc_forget_vs_member", "mia_tpr_at_1pct_fpr_forget", "mia_tpr_at_0.1pct_fpr_forget",
             "mia_tpr_at_1pct_fpr_member", "mia_sizes", "lira_auc_forget_vs_nonmember", "lira_auc_member_vs_nonmember",
             "lira_tpr_at_1pct_fpr_forget", "lira_tpr_at_0.1pct_fpr_forget", "class_histogram",
             "class_share_stderr",
             # with `share-snapshots` > 1: the end-of-side snapshot beside the mean over snapshots
             "class_histogram_single", "forget_class_rate_single", "class_share_snapshots",
             "class_share_snapshot_sd", "forget_class_rate_snapshot_sd")


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
                reference: MethodOutcome | None, spread: dict[str, Any] | None = None) -> dict[str, Any]:
    """The certificate entry of request number `index` of its batch, for `outcome`, against `reference`; `spread`:
    its `retrain_spread` (`fedgan.unlearning.retrain_spread`, with `retrain-seeds` > 1)."""
    reference_metrics = reference.metrics[index] if reference else {}
    entry: dict[str, Any] = {"request": request.to_dict(), "method": outcome.name}
    entry.update(with_retrain_gap(before[index], outcome.metrics[index], reference_metrics, CERTIFIED))
    if reference is not None:
        entry["retained_share_l1_to_retrain"] = retained_share_distance(
            request, before[index], outcome.metrics[index], reference_metrics)
        if "class_histogram_single" in reference_metrics:
            entry["retained_share_l1_to_retrain_single"] = retained_share_distance(
                request, before[index], outcome.metrics[index], reference_metrics, key="class_histogram_single")
    entry.update({"seconds": outcome.seconds, "rounds": outcome.rounds, "site_d_steps": d_steps(outcome),
                  "bytes": outcome.bytes, "details": outcome.details})
    if spread is not None:
        entry["retrain_spread"] = spread
    entry["ran"] = where_and_when(outcome)  # proof workers overlap in time: the ledger shows it
    if reference is not None:
        entry["retrain_ran"] = where_and_when(reference)
    if reference is not None:
        entry["retrain_seconds"] = reference.seconds
        entry["retrain_rounds"] = reference.rounds
        entry["speedup_vs_retrain"] = reference.seconds / max(outcome.seconds, 1e-9)
        entry["speedup_rounds_vs_retrain"] = reference.rounds / max(outcome.rounds, 1)
        entry["retrain_site_d_steps"] = d_steps(reference)
        entry["speedup_site_d_steps_vs_retrain"] = d_steps(reference) / max(d_steps(outcome), 1)
    return entry


def d_steps(outcome: MethodOutcome) -> int:
    """The sites' discriminator steps a method cost (generator rounds drive every site's D; stages add theirs)."""
    return int(outcome.details.get("site_d_steps", 0))


def where_and_when(outcome: MethodOutcome) -> dict[str, Any]:
    """The worker an outcome ran on and its wall-clock start and end."""
    return {"worker": outcome.worker, "started_at": outcome.started_at, "finished_at": outcome.finished_at}


def retained_share_distance(request: ForgetRequest, before: dict[str, Any], after: dict[str, Any],
                            retrain: dict[str, Any], key: str = "class_histogram") -> dict[str, float | None]:
    """L1 distance between the class shares of G's samples and retrain's, over the classes other than the
    request's (all classes for an item request): where the forgotten mass went, before and after the method.
    A method that keeps what is retained leaves `after` no larger than `before`. `key`: the shares compared (the
    mean over snapshots, or ``class_histogram_single``, the end-of-side snapshot)."""
    def distance(side: dict[str, Any]) -> float | None:
        shares, reference = side.get(key), retrain.get(key)
        if shares is None or reference is None:
            return None
        return retained_share_l1(shares, reference, request.forget_class)

    return {"before": distance(before), "after": distance(after)}


def retained_share_l1(shares: Sequence[float], reference: Sequence[float], forget_class: int | None) -> float:
    """L1 distance between two class histograms over every class but `forget_class` (None: all classes). The one
    definition of "where the forgotten mass went" used by the certificate, retrain's spread and bench/."""
    if len(shares) != len(reference):
        raise ValueError(f"class histograms of {len(shares)} and {len(reference)} classes cannot be compared")
    return float(sum(abs(a - b) for c, (a, b) in enumerate(zip(shares, reference)) if c != forget_class))
