"""`noise`: UNSIR impair–repair (Tarun et al., arXiv 2111.08947) adapted to the discriminator/generator pair.

Zero-glance in spirit: the site-side stage does not train on the forget items themselves. Per stage, at each
requesting site: error-maximising noise for the forget items' labels (D frozen, maximise D's "real" loss, L2 penalty
0.1, Adam lr 0.1, `noise_steps` steps); impair (noise presented as real, with retained real and generated fake, at
`impair_lr_scale` × the site's lr); repair (retained real vs generated only). Then G rounds as in the cascade.
The adaptation (which side plays UNSIR's classifier, what "label" means for D) is the project's own.
"""
from __future__ import annotations

from typing import Any

from fedgan.site_unlearning import UnlearnStageOptions
from fedgan.unlearning.base import UnlearningJob, UnlearningMethod, register_method


@register_method
class Noise(UnlearningMethod):
    name = "noise"

    def run(self, job: UnlearningJob) -> dict[str, Any]:
        c = job.config
        options = UnlearnStageOptions(kind="noise", steps=c.stage_d_steps, weight=c.weight,
                                      noise_steps=c.noise_steps, impair_lr_scale=c.impair_lr_scale)
        job.substitute()
        for stage in range(1, c.stages + 1):
            job.site_stage(options, stage)
            job.generator_rounds(c.stage_g_rounds)
        job.commit()
        return {"noise_steps": c.noise_steps, "impair_lr_scale": c.impair_lr_scale}
