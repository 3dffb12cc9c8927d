"""A forget request's certificate: every metric before, after a method, and for retrain, with the cost.

Each entry is what one method did for one request (`summary.json` `unlearning`, `ledger.jsonl`, `unlearning.md`):
for every certified metric `{before, after, retrain, gap_to_retrain}`, and the cost — seconds, generator rounds,
bytes, retrain's seconds and rounds, and the speed-ups over retrain in seconds and in rounds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fedgan.evaluation.forgetting import with_retrain_gap
from fedgan.forget import ForgetRequest

CERTIFIED = ("forget_class_rate", "fid_lenet_retained", "kid_retained", "downstream_accuracy",
             "mia_auc_forget_vs_nonmember", "mia_auc_member_vs_nonmember", "mia_auc_forget_vs_member",
             "mia_tpr_at_1pct_fpr_forget", "class_histogram")


@dataclass
class MethodOutcome:
    """What one method did to the federation: its cost, its measurement, and the state it left (to continue from)."""

    name: str
    reference: bool
    seconds: float
    rounds: int
    bytes: int
    details: dict[str, Any]
    server_state: dict[str, Any]
    class_counts: np.ndarray
    site_tag: str
    metrics: dict[int, dict[str, Any]]  # request index -> measured metrics after this method


def certificate(request: ForgetRequest, index: int, before: dict[int, dict[str, Any]], outcome: MethodOutcome,
                reference: MethodOutcome | None) -> dict[str, Any]:
    """The certificate entry of request number `index` of its batch, for `outcome`, against `reference`."""
    reference_metrics = reference.metrics[index] if reference else {}
    entry: dict[str, Any] = {"request": request.to_dict(), "method": outcome.name}
    entry.update(with_retrain_gap(before[index], outcome.metrics[index], reference_metrics, CERTIFIED))
    entry.update({"seconds": outcome.seconds, "rounds": outcome.rounds, "bytes": outcome.bytes,
                  "details": outcome.details})
    if reference is not None:
        entry["retrain_seconds"] = reference.seconds
        entry["retrain_rounds"] = reference.rounds
        entry["speedup_vs_retrain"] = reference.seconds / max(outcome.seconds, 1e-9)
        entry["speedup_rounds_vs_retrain"] = reference.rounds / max(outcome.rounds, 1)
    return entry
