"""`retrain`: the gold standard — a fresh federation from round 0 that never held the forgotten items.

Same scenario, same seeds (every stream derives from the scenario seed), same number of training rounds as the
original run up to the request; its sites start without every item forgotten so far (this request's and earlier
ones'). It is the `reference` method: every other method's certificate reports its gap to retrain's numbers and its
speed-up over retrain's seconds. When it is the only method listed, the federation continues from it.
"""
from __future__ import annotations

from typing import Any

from fedgan.unlearning.base import UnlearningJob, UnlearningMethod, register_method


@register_method
class Retrain(UnlearningMethod):
    """Retrain from scratch without the forgotten items (the proof's reference)."""

    name = "retrain"
    reference = True

    def run(self, job: UnlearningJob) -> dict[str, Any]:
        job.retrain_from_scratch()
        return {"training_rounds": job.training_rounds}
