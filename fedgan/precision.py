"""Mixed precision for the training computations (`[engine] precision`), off by default.

``float32``: every computation in float32 (the default; the numbers every test and figure of the project pins).
``bfloat16``: the forward passes of G's round step, of each site's D steps, of its logits and input gradients and
of its unlearning stages run under `torch.autocast` with bfloat16 (convolutions and matrix products in bfloat16,
reductions and losses in float32), while parameters, optimizer moments and everything a site sends stay float32.
bfloat16 keeps float32's exponent range, so no loss scaling is needed; float16 would need a gradient scaler per
site and is not offered. Measurements (FID, class shares, attacks, D's logits for the attacker) always run in
float32, so a precision change shows up in what G learns, never in how it is measured.
"""
from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch

PRECISIONS = ("float32", "bfloat16")


def autocast(device: torch.device | str, precision: str) -> AbstractContextManager[object]:
    """The context the training computations of `device` run in under `precision` (see the module docstring)."""
    if precision == "float32":
        return contextlib.nullcontext()
    if precision == "bfloat16":
        return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)
    raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
