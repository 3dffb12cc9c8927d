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

ENVIRONMENT = "FEDGAN_FAULT"
SITE_ENVIRONMENT = "FEDGAN_SITE_FAULT"  # KIND:PARTITION:ACTION[:ROUND[:SECONDS]], e.g. raise:1:round:3
SITE_FAULTS = ("raise", "hang", "vanish")
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
    worker process (``vanish``)."""
    wanted = os.environ.get(SITE_ENVIRONMENT)
    if not wanted:
        return
    kind, partition, wanted_action, *rest = wanted.split(":")
    if int(partition) != partition_id or wanted_action != action:
        return
    if rest and rest[0] != "*" and round_index is not None and int(rest[0]) != round_index:
        return
    if kind == "raise":
        raise RuntimeError(f"injected fault: node {partition_id} fails {action}")
    if kind == "hang":
        time.sleep(float(rest[1]) if len(rest) > 1 else 30.0)
    elif kind == "vanish":
        os._exit(1)
