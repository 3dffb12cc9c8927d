"""`finetune`: keep training on retained data only, for the same generator budget as `cascaded`.

The forget items leave the real stream (as in the cascade's substitution) and the federation simply trains on:
the baseline that shows what the fake label and the site-side stages add.
"""
from __future__ import annotations

from typing import Any

from fedgan.unlearning.base import UnlearningJob, UnlearningMethod, register_method


@register_method
class Finetune(UnlearningMethod):
    name = "finetune"

    def run(self, job: UnlearningJob) -> dict[str, Any]:
        job.substitute()
        job.generator_rounds(job.config.stages * job.config.stage_g_rounds)
        job.commit()
        return {"rounds": job.config.stages * job.config.stage_g_rounds}
