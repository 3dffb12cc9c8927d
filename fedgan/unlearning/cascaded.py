"""Cascaded GAN unlearning, federated over Universal Aggregation — a reconstruction.

Sun, Zhu, Chang, Zhou, "Generative Adversarial Networks Unlearning" (arXiv 2308.09881) describe a substitution
mechanism and a fake label, with unlearning and learning run in a cascade; only the abstract is reachable, so this
is the project's reading (docs/methods.md, "Cascaded GAN unlearning"), with its choices as options:
- substitution: the forget items leave the requesting site's real stream at once; its retained items take their
  place, and G never gets an explicit "move away" objective;
- fake label: at the requesting site, D_s is trained with BCE(D_s(x_forget), y_fake) (λ = `weight`) next to its
  usual retained-real / generated-fake terms, y_fake = `fake_label` (0 by default, or "generated");
- cascade: S stages, each a site-side D stage (at every requesting site, concurrently) followed by
  `stage_g_rounds` normal UA rounds in which G moves away from what D_s now rejects. Other sites' discriminators
  are untouched by the D stage (they never saw the forget items);
- recalibration (ours, off by default): `recalibrate_rounds` rounds in which every site's D steps against G's
  samples while G holds still, so that the discriminators the stages moved settle before the repair;
- repair (ours): `repair_rounds` more normal UA rounds at G's training learning rate, in which G settles back into
  the mixture of what the sites keep (the removed mass spread as the data spread it, not to the nearest mode).
Federated form: the D stage runs at the requesting site only, on its own shard; the server sends one synthetic
batch per stage and receives four numbers; G's steps are the normal protocol. Afterwards the items are deleted.
"""
from __future__ import annotations

from typing import Any

from fedgan.site_unlearning import UnlearnStageOptions
from fedgan.unlearning.base import UnlearningJob, UnlearningMethod, register_method


def stage_options(job: UnlearningJob, fake_label: Any) -> dict[int, UnlearnStageOptions]:
    """Per requesting site, the site-side stage of the fake-label family with this job's settings (its step count
    from `UnlearningJob.stage_steps`)."""
    c = job.config
    return {site: UnlearnStageOptions(kind="fake_label", steps=job.stage_steps(site), weight=c.weight,
                                      fake_label=fake_label) for site in job.forget_ids}


def run_cascade(job: UnlearningJob, fake_label: Any) -> None:
    """Substitute, then S × (site D stage → G rounds), then `repair-rounds` G rounds at G's own learning rate."""
    job.substitute()
    options = stage_options(job, fake_label)
    for stage in range(1, job.config.stages + 1):
        job.site_stage(options, stage)
        job.generator_rounds(job.config.stage_g_rounds)
    job.discriminator_rounds(job.config.recalibrate_rounds)
    job.repair(job.config.repair_rounds)


@register_method
class Cascaded(UnlearningMethod):
    """The main method: cascaded unlearning with substitution and a fake label (reconstruction)."""

    name = "cascaded"

    def run(self, job: UnlearningJob) -> dict[str, Any]:
        run_cascade(job, job.config.fake_label)
        job.commit()
        details = {"fake_label": job.config.fake_label, "stages": job.config.stages,
                   "recalibrate_rounds": job.config.recalibrate_rounds, "repair_rounds": job.config.repair_rounds}
        if job.config.repair_balance != "none":
            details.update(repair_balance=job.config.repair_balance, balance_ratios=job.balance_ratios)
        return details
