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

ENVIRONMENT = "FEDGAN_FAULT"
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
