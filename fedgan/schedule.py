"""Learning-rate schedules shared by the generator (server) and the discriminators (sites).

``constant``: no schedule. ``linear_decay``: the rate is kept for the first half of the training rounds, then falls
linearly towards zero (2/T at the last of T rounds; the UA-GAN paper trains 200 + 200 epochs this way). Only a
schedule touches an optimizer's rate, so unlearning's temporary scaling of G's rate (`generator-lr-scale`) is never
overwritten under ``constant``.
"""
from __future__ import annotations

LR_SCHEDULES = ("constant", "linear_decay")


def learning_rate_factor(schedule: str, round_index: int | None, total_rounds: int) -> float:
    """The learning-rate multiplier of `schedule` at `round_index` (1-based) of `total_rounds`."""
    if schedule == "constant" or round_index is None or total_rounds <= 0:
        return 1.0
    if schedule == "linear_decay":
        half = total_rounds / 2
        return float(min(1.0, max(0.0, (total_rounds - round_index + 1) / half)))
    raise KeyError(f"unknown learning-rate schedule {schedule!r}; use one of {', '.join(LR_SCHEDULES)}")
