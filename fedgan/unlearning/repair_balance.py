"""The repair balance (ours): repair rounds that lean G away from the sites whose data it over-serves.

After the cascade of a partial class request, G still draws the class above retrain's share: the site that keeps
it is over-served (its UA responsibility ρ_j above its weight w_j, `fedgan.aggregation.site_responsibilities`;
bench/README.md, "UA responsibilities"), and plain repair rounds close that gap slowly (about 200 rounds). The
balance reads ρ_j / w_j off every repair round's own answers — the logits the server receives anyway, so it costs
no message — smooths it over rounds, and scales answer j's weight in G's step by (ρ̄_j / w_j)^(−gain), clipped to
[1 / `MAX_SCALE`, `MAX_SCALE`]: an over-served site's pull on G is weakened until G serves it at its weight. The
sites' own training never sees the scales; the weights are the true ones again once the repair ends.

Modes (`[unlearning] repair-balance`): "none" (plain repair, the default), "holders" (only the answers of sites
that still hold a class of the batch's forget items: the remaining holders of a partial class) and "all".
"""
from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

BALANCE_MODES = ("none", "holders", "all")
MAX_SCALE = 2.0
SMOOTHING = 0.1  # weight of the newest round in ρ̄ / w once ten rounds are in (64 samples each)


@dataclass
class ResponsibilityBalance:
    """Per-answer weight scales for G's step from the smoothed ratio ρ / w of earlier rounds."""

    gain: float
    sites: Collection[int] | None = None  # the sites to balance (None: every answer)
    ratios: dict[int, float] = field(default_factory=dict)  # answer key -> smoothed ρ / w
    readings: dict[int, int] = field(default_factory=dict)  # answer key -> rounds read so far

    def scales(self) -> dict[int, float]:
        """Answer key -> the factor on its weight for the next round (1 where nothing was read yet)."""
        return {key: min(MAX_SCALE, max(1.0 / MAX_SCALE, ratio ** -self.gain)) for key, ratio in self.ratios.items()}

    def observe(self, readings: Mapping[int, tuple[float, float, tuple[int, ...]]]) -> None:
        """Fold one round's readings in: answer key -> (ρ, its mean weight, the sites behind the answer)."""
        for key, (rho, weight, sites) in readings.items():
            if weight <= 0 or (self.sites is not None and not set(sites) & set(self.sites)):
                continue
            # The plain mean until 1 / SMOOTHING rounds are in, then exponential smoothing: a first round of 64
            # samples alone is too noisy to steer by.
            count = self.readings.get(key, 0) + 1
            rate = max(1.0 / count, SMOOTHING)
            self.readings[key] = count
            self.ratios[key] = (1 - rate) * self.ratios.get(key, 0.0) + rate * rho / weight
