"""What every unlearning method shares: its settings, the job it works on, and the registry."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedgan.engine import SiteEngine, SiteIds, StageOrder
from fedgan.federation import GeneratorServer, RoundRecord
from fedgan.scenario import UnlearningConfig
from fedgan.site import UnlearnStageOptions

METHODS: dict[str, type[UnlearningMethod]] = {}


@dataclass
class UnlearningJob:
    """A running federation and one forget request's resolved sets; counts the generator rounds a method spends."""

    server: GeneratorServer
    engine: SiteEngine
    forget_ids: SiteIds  # site -> ids to forget there
    forget_classes: tuple[int, ...]
    config: UnlearningConfig
    rounds_used: int = 0
    records: list[RoundRecord] = field(default_factory=list)
    stage_stats: list[dict[str, Any]] = field(default_factory=list)

    def generator_rounds(self, count: int) -> None:
        """`count` normal UA rounds (every site's D step on its real stream, which excludes the forget items)."""
        for _ in range(count):
            self.records.append(self.server.step(self.engine))
        self.rounds_used += count

    def site_stage(self, options: UnlearnStageOptions, stage: int) -> dict[int, dict[str, float]]:
        """One site-side stage at every requesting site, all in one engine call (concurrent under Flower)."""
        batch = self.server.scenario.training.batch_size
        labels = self.server.sample_labels(batch, self.server.rng) if self.server.conditional else None
        fake = self.server.sample(batch, f"unlearn-stage-{stage}-{self.rounds_used}", labels)
        orders = {site: StageOrder(ids, fake, labels, options) for site, ids in self.forget_ids.items()}
        stats = self.engine.unlearn(orders)
        self.stage_stats.append({"stage": stage, **{f"site_{s}": v for s, v in stats.items()}})
        return stats

    def substitute(self) -> None:
        """Forget items leave the requesting sites' real streams now (retained items take their place)."""
        self.engine.exclude(self.forget_ids)

    def commit(self) -> None:
        """Delete the forget items from the sites' shards for good."""
        self.engine.forget(self.forget_ids)

class UnlearningMethod:
    """One way to serve a forget request on a running federation."""

    name: str = ""

    def run(self, job: UnlearningJob) -> dict[str, Any]:
        """Make the federation forget `job.forget_ids`; return method-specific details (JSON-ready)."""
        raise NotImplementedError


def register_method(cls: type[UnlearningMethod]) -> type[UnlearningMethod]:
    """Class decorator: make a method selectable by name in `[unlearning] methods`."""
    METHODS[cls.name] = cls
    return cls
