"""`fnn` and its four layer types: forgetting neural networks at the requesting sites — a reconstruction.

Hatua, Nguyen, Cano, Sung, "Machine Unlearning using Forgetting Neural Networks" (arXiv 2410.22374; only the
abstracts are reachable): forgetting layers multiply each neuron's activation by φ_i(t) = exp(−t/τ_i), t counting
unlearning iterations, in four types (`fedgan.forgetting_layers`: fixed or varying τ, all neurons or those ranked
most active on the forget set). Federated like the other methods: only the requesting sites' discriminators change
locally (the site stage ``fnn`` of `fedgan.site_unlearning`: decay, rehearse on retained data, fold the factors
into D's weights), the generator follows through normal UA rounds, and the same certificate compares it with
retrain. Per stage: substitution as in the cascade, one fnn stage of `stage-d-steps` iterations at every
requesting site, then `stage-g-rounds` generator rounds; then `repair-rounds` G rounds at G's own rate (as in the
cascade); the items are deleted at the end.

`fnn` uses `[unlearning] fnn-layer`; `fnn-fixed-all`, `fnn-fixed-ranked`, `fnn-varying-all` and
`fnn-varying-ranked` fix the type, so one scenario can compare them (`scenarios/fnn-compare.toml`).
"""
from __future__ import annotations

from typing import Any

from fedgan.site_unlearning import UnlearnStageOptions
from fedgan.unlearning.base import UnlearningJob, UnlearningMethod, register_method


class ForgettingNetworks(UnlearningMethod):
    """Substitution, S × (fnn stage at the requesting sites → G rounds), repair rounds, delete (reconstruction)."""

    name = "fnn"
    layer: str | None = None  # None: `[unlearning] fnn-layer`

    def run(self, job: UnlearningJob) -> dict[str, Any]:
        c = job.config
        layer = self.layer or c.fnn_layer
        options = UnlearnStageOptions(kind="fnn", steps=c.stage_d_steps, fnn_layer=layer, fnn_tau=c.fnn_tau,
                                      fnn_tau_min=c.fnn_tau_min, fnn_tau_max=c.fnn_tau_max,
                                      fnn_fraction=c.fnn_fraction)
        job.substitute()
        for stage in range(1, c.stages + 1):
            job.site_stage(options, stage)
            job.generator_rounds(c.stage_g_rounds)
        job.repair(c.repair_rounds)  # as the cascade's repair: G settles at its own rate
        job.commit()
        return {"fnn_layer": layer, "fnn_tau": c.fnn_tau, "fnn_tau_min": c.fnn_tau_min, "fnn_tau_max": c.fnn_tau_max,
                "fnn_fraction": c.fnn_fraction, "stages": c.stages, "repair_rounds": c.repair_rounds}


register_method(ForgettingNetworks)


@register_method
class ForgettingNetworksFixedAll(ForgettingNetworks):
    """`fnn` with fixed-all layers: one τ, every neuron."""

    name, layer = "fnn-fixed-all", "fixed-all"


@register_method
class ForgettingNetworksFixedRanked(ForgettingNetworks):
    """`fnn` with fixed-ranked layers: one τ, the neurons most active on the forget set."""

    name, layer = "fnn-fixed-ranked", "fixed-ranked"


@register_method
class ForgettingNetworksVaryingAll(ForgettingNetworks):
    """`fnn` with varying-all layers: τ by activity rank, every neuron."""

    name, layer = "fnn-varying-all", "varying-all"


@register_method
class ForgettingNetworksVaryingRanked(ForgettingNetworks):
    """`fnn` with varying-ranked layers: τ by activity rank among the neurons most active on the forget set."""

    name, layer = "fnn-varying-ranked", "varying-ranked"
