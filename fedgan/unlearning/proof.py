"""Proofs of forgetting, away from the federation: a method or a measurement on a copy of the federation.

A forget batch's proof is everything its certificate needs besides the chosen method itself: the measurement
before, the measurement of the chosen method's result, every other method of `[unlearning] methods` run from the
snapshot taken before the request, and retrain from scratch. Each is a `ProofTask`: the scenario, the batch and a
copy of the federation (the server's state, `server_snapshot`, and every site's, `fedgan.engine.SitesSnapshot`)
— enough for `run_proof` to rebuild the federation in another process (a Ray worker, `server.proof_workers`)
with its own in-process engine. That engine runs the same site code as the federation's (a `Site` per site for
`inprocess`, the `SiteGroup`s of `sites.per-node` for `batched` and Flower nodes), so a proof gives the numbers
the federation's own engine gives, identical at equal thread counts.

`run_method` is the one way a method is run and measured, in line (the orchestrator) and on a worker.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from fedgan.batched_engine import BatchedEngine
from fedgan.datasets import DatasetSplits
from fedgan.engine import InProcessEngine, SiteEngine, SiteIds, SitesSnapshot, resolve_device
from fedgan.federation import GeneratorServer
from fedgan.forget import ForgetRequest, Resolution
from fedgan.preparation import prepare
from fedgan.scenario import Scenario, scenario_from_dict
from fedgan.storage import atomic_torch_save
from fedgan.unlearning.base import METHODS, UnlearningJob, UnlearningMethod
from fedgan.unlearning.certificate import MethodOutcome
from fedgan.unlearning.intake import forget_classes, holds_partial_class_request, union
from fedgan.unlearning.measurement import ForgettingProbe


@dataclass(frozen=True)
class ProofTask:
    """One piece of a batch's proof: `method` run from the snapshot and measured, or (method None) the snapshot
    measured as it is, under the measurement tag `label`. `server` None with `sites` None: a fresh federation
    (retrain needs nothing of the running one but its forgotten ids and its training rounds)."""

    batch_number: int
    label: str
    method: str | None
    scenario_json: str
    batch: tuple[Resolution, ...]
    retained: tuple[int, ...]
    round_index: int
    forgotten_before: SiteIds
    server: bytes | None
    sites: SitesSnapshot | None
    threads: int = 1
    environment: dict[str, str] = field(default_factory=dict)


class ProofPool(Protocol):
    """Where proof tasks run: at most `workers` at once, concurrently with the federation."""

    def submit(self, task: ProofTask) -> None:
        """Start `task` (or queue it until a worker is free)."""
        ...

    def finished(self, wait: bool) -> list[tuple[ProofTask, MethodOutcome | BaseException]]:
        """Tasks done since the last call, each with its outcome or the error it raised; with `wait`, block until
        every submitted task is done."""
        ...


# ---- the server's part of a snapshot ----
def server_snapshot(server: GeneratorServer) -> bytes:
    """G, its optimizer, the sampling RNG, the round, the site weights and the label prior, as bytes."""
    buffer = io.BytesIO()
    torch.save({"state": server.state_dict(), "class_counts": torch.from_numpy(server.class_counts.copy()),
                "label_prior": server.label_prior.clone()}, buffer)
    return buffer.getvalue()


def load_server_snapshot(server: GeneratorServer, data: bytes) -> None:
    """Inverse of `server_snapshot` (loaded on the CPU, moved to the server's device by the loaders)."""
    saved = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    server.load_state_dict(saved["state"])
    server.class_counts = saved["class_counts"].numpy().copy()
    server.label_prior = saved["label_prior"]


# ---- one method, run and measured ----
def run_method(method: UnlearningMethod, job: UnlearningJob, probe: ForgettingProbe | None,
               batch: list[Resolution], retained: list[int]) -> MethodOutcome:
    """Run `method` on the job's federation; measure the result unless `probe` is None (measured elsewhere)."""
    server, engine = job.server, job.engine
    if job.config.drop_class_weight and job.forget_classes and not method.reference:
        job.drop_weights()  # w_s(c) -> 0 before the cascade starts
    bytes_before = engine.traffic.bytes_down + engine.traffic.bytes_up
    started_at, started = time.time(), time.perf_counter()
    details = method.run(job)
    seconds = time.perf_counter() - started
    spent = engine.traffic.bytes_down + engine.traffic.bytes_up - bytes_before
    if not method.reference:
        details["stage_stats"] = job.stage_stats
    details["site_d_steps"] = job.site_d_steps()
    metrics = (probe.measure(server, engine, batch, method.name, retained, job.forgotten_before)
               if probe is not None else {})
    return MethodOutcome(method.name, method.reference, seconds, job.rounds_used, spent, details, metrics,
                         started_at=started_at, finished_at=time.time())


# ---- a proof task, anywhere ----
def rebuild_federation(task: ProofTask, scenario: Scenario, splits: DatasetSplits
                       ) -> tuple[GeneratorServer, SiteEngine]:
    """The federation of `task`: an in-process engine running the federation's site code, loaded from the
    snapshot (or fresh), and a server loaded from its snapshot (or fresh)."""
    engine: Any
    if task.sites is not None:
        engine = (InProcessEngine(scenario) if task.sites.sites is not None
                  else BatchedEngine(scenario, group_size=task.sites.group_size))
    elif scenario.engine.name == "inprocess":
        engine = InProcessEngine(scenario)
    else:  # the nodes' groups of `sites.per-node` under Flower; the scenario's own under `batched`
        engine = BatchedEngine(scenario, group_size=scenario.sites.per_node if scenario.engine.name == "flower"
                               else None)
    sites = engine.open()
    if task.sites is not None:
        engine.load_snapshot(task.sites)
    train = splits.train
    server = GeneratorServer(scenario, sites, train.image_shape, train.num_classes,
                             resolve_device(scenario.engine.device))
    if task.server is not None:
        load_server_snapshot(server, task.server)
    return server, engine


def run_proof(task: ProofTask) -> MethodOutcome:
    """Run one proof task in this process (what a proof worker executes) and return its outcome."""
    os.environ.update(task.environment)  # the cache folder and data roots of the federation's process
    torch.set_num_threads(task.threads)
    started_at = time.time()
    scenario = scenario_from_dict(json.loads(task.scenario_json))
    splits, evaluator = prepare(scenario)
    probe = ForgettingProbe(scenario, splits, evaluator)
    server, engine = rebuild_federation(task, scenario, splits)
    batch, retained = list(task.batch), list(task.retained)
    if task.method is None:
        started = time.perf_counter()
        metrics = probe.measure(server, engine, batch, task.label, retained, task.forgotten_before)
        outcome = MethodOutcome(task.label, False, time.perf_counter() - started, 0, 0, {}, metrics)
    else:
        config = scenario.unlearning.for_batch(holds_partial_class_request(batch, retained))
        job = UnlearningJob(server, engine, union(batch), forget_classes(batch), config, probe.labels_of,
                            forgotten_before=task.forgotten_before, training_rounds=task.round_index)
        outcome = run_method(METHODS[task.method](), job, probe, batch, retained)
    engine.close()
    return dataclasses.replace(outcome, started_at=started_at, finished_at=time.time(),
                               worker=f"{socket.gethostname()}:{os.getpid()}")


PROOFS_DIR = "proofs"


class ProofFiles:
    """The tasks of every batch whose proof is still running, one file per batch in the run's ``proofs/`` folder
    (written atomically before the tasks start, removed once the batch is certified): what a resumed run starts
    again. Plain data only, so the files load with ``weights_only``."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)

    def _path(self, number: int) -> Path:
        return self.folder / f"batch-{number}.pt"

    def save(self, number: int, tasks: list[ProofTask], chosen: MethodOutcome) -> None:
        atomic_torch_save(self._path(number), {"tasks": [_task_to_plain(t) for t in tasks],
                                               "chosen": dataclasses.asdict(chosen)})

    def load(self, number: int) -> tuple[list[ProofTask], MethodOutcome]:
        saved = torch.load(self._path(number), map_location="cpu", weights_only=True)
        return [_task_from_plain(t) for t in saved["tasks"]], MethodOutcome(**saved["chosen"])

    def remove(self, number: int) -> None:
        self._path(number).unlink(missing_ok=True)


def _task_to_plain(task: ProofTask) -> dict[str, Any]:
    plain = {f.name: getattr(task, f.name) for f in dataclasses.fields(task)}
    plain["batch"] = [{"request": r.request.to_dict(), "forget_classes": list(r.forget_classes),
                       "forget_ids": {int(site): np.asarray(ids).tolist() for site, ids in r.forget_ids.items()}}
                      for r in task.batch]
    plain["forgotten_before"] = {int(site): np.asarray(ids).tolist() for site, ids in task.forgotten_before.items()}
    plain["sites"] = None if task.sites is None else dataclasses.asdict(task.sites)
    return plain


def _task_from_plain(plain: dict[str, Any]) -> ProofTask:
    batch = tuple(Resolution(ForgetRequest.from_dict(r["request"]),
                             {site: np.asarray(ids, dtype=np.int64) for site, ids in r["forget_ids"].items()},
                             tuple(r["forget_classes"])) for r in plain["batch"])
    forgotten = {site: np.asarray(ids, dtype=np.int64) for site, ids in plain["forgotten_before"].items()}
    sites = None if plain["sites"] is None else SitesSnapshot(**plain["sites"])
    return ProofTask(**{**plain, "batch": batch, "forgotten_before": forgotten, "sites": sites})


def proof_environment() -> dict[str, str]:
    """The variables a worker needs to find what this process finds (fedgan's cache and data folders)."""
    return {key: value for key, value in os.environ.items() if key.startswith("FEDGAN_")}
