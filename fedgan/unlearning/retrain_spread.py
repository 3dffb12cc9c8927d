"""Retrain's own spread: the gold standard retrained under several training seeds (`[unlearning] retrain-seeds`).

A certificate compares a method with one retrain, and that retrain is one draw of a random process: G's and the
discriminators' initial weights, the latents, the sites' sampling. With `retrain-seeds` K > 1 the proof also
retrains under the training seeds seed + 1, ..., seed + K − 1, each on the run's own partition (`partition.seed`
fixed, so every site holds the same items and every forgotten id is the same), and the certificate reports, for
each scalar metric, the K retrains' values, their mean and sample standard deviation, and the method's gap to that
mean in standard deviations. The first retrain (the run's seed) stays the reference of every `gap_to_retrain`.
Each extra retrain is measured under its own seed, so its latent draw and its attack sets are its own: the spread
includes that sampling noise too. Ours, not the papers' (docs/methods.md, "The proof of forgetting").
"""
from __future__ import annotations

import dataclasses
import statistics
from typing import Any

from fedgan.forget import ForgetRequest
from fedgan.scenario import Scenario
from fedgan.unlearning.certificate import MethodOutcome, retained_share_l1

SPREAD_LABEL = "retrain-seed-"  # proof task labels: retrain-seed-<training seed>
SPREAD_METRICS = ("forget_class_rate", "forget_class_rate_single", "forget_class_rate_unasked", "fid_lenet_retained",
                  "kid_retained", "downstream_accuracy", "mia_auc_forget_vs_nonmember", "mia_tpr_at_1pct_fpr_forget",
                  "mia_tpr_at_0.1pct_fpr_forget", "lira_auc_forget_vs_nonmember")


def extra_training_seeds(scenario: Scenario) -> list[int]:
    """The training seeds of the extra retrains: seed + 1, ..., seed + K − 1 (none unless retrain is listed)."""
    if "retrain" not in scenario.unlearning.methods:
        return []
    return [scenario.seed + k for k in range(1, scenario.unlearning.retrain_seeds)]


def with_training_seed(scenario: Scenario, seed: int) -> Scenario:
    """`scenario` trained under `seed` on the partition of its own (`partition.seed`, else its seed)."""
    fixed = scenario.partition.seed if scenario.partition.seed is not None else scenario.seed
    return scenario.replace(seed=seed, partition=dataclasses.replace(scenario.partition, seed=fixed))


def spread_label(seed: int) -> str:
    """The proof task label of the retrain under training seed `seed`."""
    return f"{SPREAD_LABEL}{seed}"


def is_spread_label(label: str) -> bool:
    """Whether a proof task label names an extra retrain."""
    return label.startswith(SPREAD_LABEL)


def retrain_spread(request: ForgetRequest, index: int, after: dict[str, Any],
                   retrains: list[tuple[int, MethodOutcome]]) -> dict[str, Any]:
    """The certificate's `retrain_spread` for request number `index`: per metric the retrains' values (in the order
    of `retrains`, the reference first), mean, sd and `after`'s gap to the mean in sds (None where sd is 0); the
    retained classes' shares' L1 between every two retrains (what that L1 reads for two equally good models) and
    from `after` to the retrains' mean shares."""
    metrics = [outcome.metrics[index] for _, outcome in retrains]
    spread: dict[str, Any] = {"training_seeds": [seed for seed, _ in retrains]}
    for key in SPREAD_METRICS:
        values = [m.get(key) for m in metrics]
        if not all(isinstance(v, (int, float)) for v in values):
            continue
        mean, sd = statistics.fmean(values), statistics.stdev(values)
        mine = after.get(key)
        spread[key] = {"values": values, "mean": mean, "sd": sd, "after": mine,
                       "after_gap_in_sd": (mine - mean) / sd if isinstance(mine, (int, float)) and sd > 0 else None}
    shares = [m["class_histogram"] for m in metrics if m.get("class_histogram") is not None]
    if len(shares) == len(metrics):
        mean_shares = [statistics.fmean(column) for column in zip(*shares)]
        pairs = [retained_share_l1(a, b, request.forget_class) for i, a in enumerate(shares) for b in shares[i + 1:]]
        spread["class_histogram_mean"] = mean_shares
        spread["retained_share_l1_between_retrains"] = {"values": pairs, "mean": statistics.fmean(pairs)}
        if after.get("class_histogram") is not None:
            spread["retained_share_l1_to_retrain_mean"] = retained_share_l1(
                after["class_histogram"], mean_shares, request.forget_class)
    return spread
