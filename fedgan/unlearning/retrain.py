"""`retrain`: the gold standard — a fresh federation from round 0 without the forgotten items.

Same scenario, same seeds (every stream derives from the scenario seed), same round budget as the original run up
to the request. Run by the orchestrator (it replaces the federation rather than acting on it); registered here so
that scenarios name it like any other method.
"""
from __future__ import annotations

from typing import Any

from fedgan.unlearning.base import UnlearningJob, UnlearningMethod, register_method


@register_method
class Retrain(UnlearningMethod):
    name = "retrain"

    def run(self, job: UnlearningJob) -> dict[str, Any]:
        raise RuntimeError("retrain is run by the orchestrator (fedgan.unlearning.orchestrator.retrain_federation)")
