"""Deterministic seeds: every random stream in a run is derived from the scenario seed and a purpose tag."""
from __future__ import annotations

import hashlib

import torch


def derive_seed(seed: int, *tags: object) -> int:
    """A 63-bit seed for the stream named by `tags` (e.g. ``("site", 3, "discriminator")``), stable across runs."""
    text = ":".join([str(seed), *map(str, tags)]).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & (2**63 - 1)


def torch_generator(seed: int, *tags: object) -> torch.Generator:
    """A CPU torch.Generator seeded for the stream named by `tags`."""
    generator = torch.Generator()
    generator.manual_seed(derive_seed(seed, *tags))
    return generator
