"""Named fault points: a test hook that kills the process where a crash would hurt most.

`FEDGAN_FAULT=NAME` (or `NAME@N`: the N-th time the point is reached) makes `fault_point(NAME)` send SIGKILL to
this process — no clean-up, no flush, exactly what a power cut or the kernel's OOM killer leaves behind. The points:
``round`` (between a round's site replies and G's step), ``cascade`` (inside an unlearning stage, after the sites
changed), ``retrain`` (between two retrain rounds), ``evaluation`` (inside a periodic evaluation) and
``checkpoint-write`` (a checkpoint's temporary file written, not yet renamed). Unset, a point costs one dict lookup.
"""
from __future__ import annotations

import os
import signal
import time

import torch

ENVIRONMENT = "FEDGAN_FAULT"
SITE_ENVIRONMENT = "FEDGAN_SITE_FAULT"  # KIND:PARTITION:ACTION[:ROUND[:SECONDS]], e.g. raise:1:round:3
SITE_FAULTS = ("raise", "hang", "vanish", "nan")
POINTS = ("round", "cascade", "retrain", "evaluation", "checkpoint-write")
_reached: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Kill this process here if `FEDGAN_FAULT` names this point (and this is the time it names)."""
    wanted = os.environ.get(ENVIRONMENT)
    if not wanted:
        return
    point, _, times = wanted.partition("@")
    if point != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] >= int(times or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def site_fault(partition_id: int, action: str, round_index: int | None = None) -> None:
    """A node's fault, for tests of the real Flower path: `FEDGAN_SITE_FAULT=KIND:PARTITION:ACTION[:ROUND[:SECONDS]]`
    makes node PARTITION, on message ACTION (``round``, ``unlearn``) of round ROUND (``*`` or left out: any), raise
    (``raise``: an error reply), sleep SECONDS (``hang``, 30 by default: past `engine.round-timeout`) or end its
    worker process (``vanish``). Several faults: separated by commas."""
    for kind, rest in _site_faults(partition_id, action, round_index):
        _site_fault(kind, partition_id, action, rest)


def _site_faults(partition_id: int, action: str, round_index: int | None) -> list[tuple[str, list[str]]]:
    """The faults of `FEDGAN_SITE_FAULT` due at this node, action and round: (kind, the fields after ROUND)."""
    due = []
    for fault in filter(None, os.environ.get(SITE_ENVIRONMENT, "").split(",")):
        kind, partition, wanted_action, *rest = fault.split(":")
        if int(partition) != partition_id or wanted_action != action:
            continue
        if rest and rest[0] != "*" and round_index is not None and int(rest[0]) != round_index:
            continue
        due.append((kind, rest))
    return due


def _site_fault(kind: str, partition_id: int, action: str, rest: list[str]) -> None:
    if kind == "nan":  # not here: the reply is spoilt after the work (site_reply_fault)
        return
    if kind == "raise":
        raise RuntimeError(f"injected fault: node {partition_id} fails {action}")
    if kind == "hang":
        time.sleep(float(rest[1]) if len(rest) > 1 else 30.0)
    elif kind == "vanish":
        os._exit(1)


def site_reply_fault(partition_id: int, round_index: int | None, replies: dict) -> None:
    """`FEDGAN_SITE_FAULT=nan:PARTITION:round[:ROUND]`: the first site of node PARTITION answers that round with NaN
    logits (a broken site, for tests of the screens: the server's, or the node's own when it pre-aggregates)."""
    if not replies or "nan" not in [kind for kind, _ in _site_faults(partition_id, "round", round_index)]:
        return
    first = min(replies)
    replies[first].logits = torch.full_like(replies[first].logits, float("nan"))
