"""What every unlearning method shares: the job it acts on, the method interface, and the registry.

A method gets an `UnlearningJob`: the running federation (the server's `GeneratorServer` and the `SiteEngine` that
reaches the sites), the resolved forget sets of the batch of requests, and the `[unlearning]` settings. It uses the
job's verbs — `substitute`, `site_stage`, `generator_rounds`, `commit`, `retrain_from_scratch` — and returns
method-specific details. The orchestrator (`fedgan.unlearning.orchestrator`) runs every method from the same
snapshot and measures each; the method marked `reference` (retrain) is the one the others are certified against.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fedgan.engine import SiteEngine, SiteIds, StageOrder
from fedgan.faults import fault_point
from fedgan.registry import Registry
from fedgan.site_unlearning import UnlearnStageOptions
from fedgan.unlearning.repair_balance import ResponsibilityBalance

if TYPE_CHECKING:  # annotations only: the scenario schema imports this registry to validate method names
    from fedgan.federation import GeneratorServer
    from fedgan.scenario import UnlearningConfig

LabelsOf = Callable[[np.ndarray], np.ndarray]


@dataclass
class UnlearningJob:
    """A running federation and one batch of forget requests' resolved sets; counts the generator rounds spent."""

    server: GeneratorServer
    engine: SiteEngine
    forget_ids: SiteIds  # site -> ids to forget there (this batch)
    forget_classes: tuple[int, ...]
    config: UnlearningConfig
    labels_of: LabelsOf  # global ids -> labels (the server's class counts follow the sites' deletions)
    forgotten_before: SiteIds = field(default_factory=dict)  # forgotten by earlier requests
    training_rounds: int = 0  # training rounds run before the request (a retrain's budget)
    rounds_used: int = 0
    stage_stats: list[dict[str, Any]] = field(default_factory=list)
    weights_dropped: bool = False
    balance_ratios: dict[str, float] = field(default_factory=dict)  # the repair balance's last ρ̄ / w per answer

    def generator_rounds(self, count: int, lr_scale: float | None = None) -> None:
        """`count` normal UA rounds (every site's D step on its real stream, which excludes the forget items),
        with G's learning rate times `lr_scale` (default `generator-lr-scale`: the server's share of the request)."""
        scale = self.config.generator_lr_scale if lr_scale is None else lr_scale
        with scaled_learning_rate(self.server.optimizer, scale):
            for _ in range(count):
                self.server.step(self.engine)
        self.rounds_used += count

    def discriminator_rounds(self, count: int) -> None:
        """`count` rounds of the sites' half only (every site's D step against G's samples; G holds still). They
        cost the sites and the wire what a generator round does, so `rounds_used` counts them as rounds."""
        for _ in range(count):
            self.server.step(self.engine, update_generator=False)
        self.rounds_used += count

    def repair(self, count: int) -> None:
        """`count` repair rounds at G's own learning rate; with `repair-balance`, each answer's weight in G's step
        scaled by its smoothed responsibility ratio (`fedgan.unlearning.repair_balance`, ours)."""
        mode = self.config.repair_balance
        if mode == "none" or count <= 0:
            self.generator_rounds(count, lr_scale=1.0)
            return
        balance = ResponsibilityBalance(self.config.repair_balance_gain,
                                        self.remaining_holders() if mode == "holders" else None)
        try:
            for _ in range(count):
                self.server.answer_weight_scale = balance.scales()
                self.generator_rounds(1, lr_scale=1.0)
                balance.observe(self.server.last_responsibilities)
        finally:
            self.server.answer_weight_scale = None
        self.balance_ratios = {str(key): round(ratio, 4) for key, ratio in sorted(balance.ratios.items())}

    def remaining_holders(self) -> list[int]:
        """Sites that still hold a class of this batch's forget items once those items are gone."""
        counts = np.asarray(self.server.class_counts, dtype=np.int64).copy()
        if not self.weights_dropped:
            for site, ids in self.forget_ids.items():
                counts[self.server.site_ids.index(site)] -= self.removed_counts(ids, counts.shape[1])
        classes = sorted({int(c) for ids in self.forget_ids.values() for c in self.labels_of(np.asarray(ids))})
        return [site for site, row in zip(self.server.site_ids, counts) if row[classes].sum() > 0]

    def removed_counts(self, ids: np.ndarray, num_classes: int) -> np.ndarray:
        """Per class, how many of `ids` (a site's forget items) it holds."""
        return np.bincount(self.labels_of(np.asarray(ids)), minlength=num_classes)

    def site_d_steps(self) -> int:
        """The sites' D steps this job has cost so far: every site's `d-steps` in each generator round it drove
        (sites without real data skip theirs; counted as scheduled) plus the requesting sites' stage steps."""
        training = self.server.scenario.training
        per_round = training.d_steps * self.server.scenario.sites.count
        stage_steps = sum(stats["steps"] for record in self.stage_stats for key, stats in record.items()
                          if key.startswith("site_"))
        return int(self.rounds_used * per_round + stage_steps)

    def stage_steps(self, site: int) -> int:
        """A fake-label stage's D steps at `site`: `stage-d-steps`, raised in a batch of item requests only so that
        the stage passes over the site's forgotten items `item-stage-passes` times (one forget batch per step)."""
        steps = self.config.stage_d_steps
        if self.forget_classes or self.config.item_stage_passes <= 0:
            return steps
        batch = self.server.scenario.training.batch_size
        passes = self.config.item_stage_passes * len(self.forget_ids[site]) / batch
        return max(steps, math.ceil(passes - 1e-9))

    def site_stage(self, options: UnlearnStageOptions | Mapping[int, UnlearnStageOptions], stage: int
                   ) -> dict[int, dict[str, float]]:
        """One site-side stage at every requesting site, all in one engine call (concurrent under Flower);
        `options` is one set for all of them or one per site."""
        batch = self.server.scenario.training.batch_size
        labels = self.server.sample_labels(batch, self.server.rng) if self.server.conditional else None
        fake = self.server.sample(batch, f"unlearn-stage-{stage}-{self.rounds_used}", labels)
        per_site = options if isinstance(options, Mapping) else dict.fromkeys(self.forget_ids, options)
        orders = {site: StageOrder(ids, fake, labels, per_site[site]) for site, ids in self.forget_ids.items()}
        stats = self.engine.unlearn(orders)
        fault_point("cascade")  # the requesting sites have changed, G has not followed
        self.stage_stats.append({"stage": stage, **{f"site_{s}": v for s, v in stats.items()}})
        return stats

    def substitute(self) -> None:
        """Forget items leave the requesting sites' real streams now (retained items take their place)."""
        self.engine.exclude(self.forget_ids)

    def drop_weights(self) -> None:
        """The server's class counts (aggregation weights) without the forget items, once."""
        if self.weights_dropped:
            return
        counts = self.server.class_counts
        for site, ids in self.forget_ids.items():
            index = self.server.site_ids.index(site)
            counts[index] = np.maximum(counts[index] - self.removed_counts(ids, counts.shape[1]), 0)
        self.weights_dropped = True

    def commit(self) -> None:
        """Delete the forget items from the sites' shards for good; the weights follow."""
        self.engine.forget(self.forget_ids)
        self.drop_weights()

    def retrain_from_scratch(self) -> None:
        """A fresh federation (round 0) whose sites never held any forgotten item, trained for the same number
        of training rounds with the same seeds. Generator steps that earlier unlearning spent are not part of
        the budget: a federation retrained from scratch never needs them."""
        forgotten = {site: set(map(int, ids)) for site, ids in self.forgotten_before.items()}
        for site, ids in self.forget_ids.items():
            forgotten.setdefault(site, set()).update(map(int, ids))
        sites = self.engine.open({s: np.asarray(sorted(v), dtype=np.int64) for s, v in forgotten.items()})
        self.server.reset(sites)
        self.weights_dropped = True  # the fresh sites report their counts without the items
        for _ in range(self.training_rounds):
            self.server.step(self.engine)
            fault_point("retrain")
        self.rounds_used += self.training_rounds


class UnlearningMethod:
    """One way to serve a batch of forget requests on a running federation."""

    name: str = ""
    reference: bool = False  # the gold standard the others are certified against (retrain)

    def run(self, job: UnlearningJob) -> dict[str, Any]:
        """Make the federation forget `job.forget_ids`; return method-specific details (JSON-ready)."""
        raise NotImplementedError


METHODS: Registry[type[UnlearningMethod]] = Registry("unlearning method")


def register_method(cls: type[UnlearningMethod]) -> type[UnlearningMethod]:
    """Class decorator: make a method selectable by name in `[unlearning] methods`."""
    METHODS.add(cls.name, cls)
    return cls


@contextlib.contextmanager
def scaled_learning_rate(optimizer: torch.optim.Optimizer, scale: float) -> Iterator[None]:
    """The optimizer's learning rate times `scale` inside the block, restored afterwards."""
    saved = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * scale
    try:
        yield
    finally:
        for group, lr in zip(optimizer.param_groups, saved):
            group["lr"] = lr
