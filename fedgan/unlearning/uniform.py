"""`uniform`: the discriminator's target for forget items is 1/2, then relearn on retained data.

After adu3010/machine-unlearning (an MLP on MNIST trained towards a uniform output on the forgotten digit, then
relearned on the rest); for a binary discriminator the uniform target is 1/2. Same stages as `cascaded` with
y_fake = 0.5, then `relearn_rounds` more UA rounds on retained data.
"""
from __future__ import annotations

from typing import Any

from fedgan.unlearning.base import UnlearningJob, UnlearningMethod, register_method
from fedgan.unlearning.cascaded import run_cascade


@register_method
class Uniform(UnlearningMethod):
    name = "uniform"

    def run(self, job: UnlearningJob) -> dict[str, Any]:
        run_cascade(job, 0.5)
        job.generator_rounds(job.config.relearn_rounds)
        job.commit()
        return {"fake_label": 0.5, "relearn_rounds": job.config.relearn_rounds}
