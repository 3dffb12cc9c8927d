"""The run's checkpoint: everything a crashed run needs to continue exactly where the checkpoint was taken.

Written atomically to ``<run>/checkpoint.pt`` (temporary file + rename: a crash mid-write leaves the previous one)
every `training.checkpoint-every` rounds, after every round in which the forget service changed the ledger, and at
the end. It holds the training round, the server's state (G, its optimizer, the sampling RNG, the site weights:
`fedgan.unlearning.proof.server_snapshot`), the sites' state — as bytes for the in-process engines, or as a
snapshot tag that every Flower node keeps in its own state folder (the server never holds a site's weights) — the
traffic counters, how many lines of metrics.jsonl and ledger.jsonl it covers, the elapsed training seconds, and the
forget service's state (its certificates, its batch count, the proofs still running). `fedgan run --resume DIR`
(`fedgan.experiment.run_experiment(..., resume=True)`) reads it back.
"""
from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from fedgan.engine import SitesSnapshot
from fedgan.errors import FedganError
from fedgan.faults import fault_point
from fedgan.storage import atomic_write_with

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT = 2


@dataclass
class RunState:
    """One checkpoint's content (see the module docstring)."""

    round_index: int
    server: bytes
    sites: dict[str, Any] | None  # SitesSnapshot fields, or None: the sites keep `sites_tag` themselves
    sites_tag: str | None
    traffic: tuple[int, int]
    metrics_lines: int
    ledger_lines: int
    train_seconds: float
    service: dict[str, Any] = field(default_factory=dict)

    def site_snapshot(self) -> SitesSnapshot | None:
        return None if self.sites is None else SitesSnapshot(**self.sites)


def write_checkpoint(out: str | Path, state: RunState, scenario: dict[str, Any], legacy: dict[str, Any]) -> Path:
    """Write the checkpoint atomically. `legacy`: the readable server / site state dicts kept for sampling tools."""
    content = {"format": FORMAT, "scenario": scenario, "run_state": asdict(state), **legacy}

    def write(handle: io.BufferedWriter) -> None:
        torch.save(content, handle)
        handle.flush()
        fault_point("checkpoint-write")  # the temporary file is complete, the rename has not happened

    return atomic_write_with(Path(out) / CHECKPOINT_FILE, write)


def has_checkpoint(out: str | Path) -> bool:
    """Whether `out` holds a checkpoint (a run killed before its first one has none)."""
    return (Path(out) / CHECKPOINT_FILE).is_file()


def read_checkpoint(out: str | Path) -> RunState:
    """The run state of `out`'s checkpoint; a missing, truncated or foreign file is one FedganError naming it."""
    path = Path(out) / CHECKPOINT_FILE
    if not path.is_file():
        raise FedganError("--resume", f"{path} does not exist", "resume a run directory that holds a checkpoint")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
        raw = content["run_state"]
        if content.get("format") != FORMAT:
            raise KeyError("format")
        state = RunState(**raw)
    except Exception as error:  # noqa: BLE001 — any damage reads as one line naming the file
        raise FedganError("--resume", f"{path} is damaged or not a fedgan checkpoint ({type(error).__name__})",
                          "resume from an intact run directory, or start the run again") from None
    state.traffic = tuple(state.traffic)
    return state
