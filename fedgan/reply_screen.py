"""Screening the sites' replies before they touch G: a hostile or broken site is dropped from the round.

A reply is rejected when its logits are not B float32 values or its input gradients not a (B, C, H, W) float32
tensor like the synthetic batch, when any value is NaN or infinite, or when any magnitude exceeds
`training.reply-limit` (a D logit of 1e4 means a probability of exactly 0 or 1 in float32; no honest site sends
one). The round goes on with the others (the aggregation renormalises the weights over who answered), and each
rejection is recorded with its reason in the round's line of metrics.jsonl.
"""
from __future__ import annotations

import math

import torch

from fedgan.site import GroupReply, SiteReply


def reply_problem(reply: SiteReply, fake: torch.Tensor, limit: float) -> str | None:
    """Why `reply` to the synthetic batch `fake` must not reach G, or None when it may."""
    if reply.problem is not None:
        return reply.problem
    batch = fake.shape[0]
    for name, value, shape in (("logits", reply.logits, (batch,)), ("input gradients", reply.input_grads,
                                                                    tuple(fake.shape))):
        if not isinstance(value, torch.Tensor):
            return f"{name} are not a tensor"
        if tuple(value.shape) != shape:
            return f"{name} have shape {tuple(value.shape)}, expected {shape}"
        if value.dtype != torch.float32:
            return f"{name} are {value.dtype}, expected torch.float32"
        if not bool(torch.isfinite(value).all()):
            return f"{name} hold NaN or infinite values"
        peak = float(value.abs().max()) if value.numel() else 0.0
        if peak > limit:
            return f"{name} reach {peak:.3g}, above training.reply-limit = {limit:g}"
    for name in ("d_loss", "d_real", "d_fake"):
        if not math.isfinite(float(getattr(reply, name))):
            return f"{name} is not finite"
    if isinstance(reply, GroupReply):
        weight = reply.raw_weight
        if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != (batch,):
            return f"the group weight is not ({batch},)"
        if not bool(torch.isfinite(weight).all()) or bool((weight < 0).any()):
            return "the group weight must be finite and non-negative"
    return None


def screen_replies(replies: dict[int, SiteReply], fake: torch.Tensor, limit: float
                   ) -> tuple[dict[int, SiteReply], dict[int, str]]:
    """The replies G may use, and the rejected sites with their reasons."""
    accepted, rejected = {}, {}
    for site, reply in replies.items():
        problem = reply_problem(reply, fake, limit)
        if problem is None:
            accepted[site] = reply
        else:
            rejected[site] = problem
    return accepted, rejected
