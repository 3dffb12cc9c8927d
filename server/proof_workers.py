"""Ray workers for the proofs of forgetting: `fedgan.unlearning.proof.ProofTask`s run beside the federation.

`RayProofPool` runs each task as a Ray task (`run_proof`, the federation rebuilt with its own in-process engine:
never a Flower simulation nested inside a Ray task). At most `workers` run at once; the rest wait in a queue
here. Each task asks Ray for `num_cpus=0` and a `proof-gpus` share of a GPU: under Flower's simulation the
ClientApp actors hold every CPU of the cluster, so a task asking for a CPU would never start (docs/engines.md);
its CPU share is its torch thread count instead (`proof-threads`). Ray starts on the first task: a run without
forget requests never starts it. Inside a Flower simulation (`run_simulation` in this process) the workers join
Flower's Ray instance; elsewhere this process starts a local one, or attaches to a cluster named by `RAY_ADDRESS`.
"""
from __future__ import annotations

import os
from collections import deque
from typing import Any

from fedgan.scenario import Scenario
from fedgan.unlearning.certificate import MethodOutcome
from fedgan.unlearning.proof import ProofTask, run_proof


def resolve_workers(setting: Any, threads: int, cpus: float | None = None) -> int:
    """`proof-workers` as a number: ``auto`` -> one worker per `threads` CPUs (of the Ray cluster, when known)."""
    if setting != "auto":
        return int(setting)
    available = cpus if cpus is not None else (os.cpu_count() or 1)
    return max(1, int(available) // threads)


class RayProofPool:
    """Proof tasks on Ray workers, at most `workers` at once (`auto`: what the machine has)."""

    def __init__(self, workers: Any = "auto", threads: int = 1, gpus: float = 0.0) -> None:
        self.setting, self.threads, self.gpus = workers, threads, gpus
        self.workers = 0  # resolved when Ray starts
        self._queue: deque[ProofTask] = deque()
        self._running: dict[Any, ProofTask] = {}  # Ray object ref -> its task
        self._remote: Any = None

    def _start(self) -> None:
        import ray

        if not ray.is_initialized():
            address = os.environ.get("RAY_ADDRESS")
            options: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": False}
            if address:
                ray.init(address=address, **options)
            else:
                ray.init(address="local", num_cpus=os.cpu_count() or 1, **options)
        cpus = ray.cluster_resources().get("CPU")
        self.workers = resolve_workers(self.setting, self.threads, cpus)
        self._remote = ray.remote(run_proof).options(num_cpus=0, num_gpus=self.gpus, max_retries=0)

    def submit(self, task: ProofTask) -> None:
        """Queue `task`; it starts as soon as one of the workers is free."""
        self._queue.append(task)
        self._launch()

    def _launch(self) -> None:
        import ray

        if self._remote is None or not ray.is_initialized():  # first task, or Ray shut down by an earlier run
            self._start()
        while self._queue and len(self._running) < self.workers:
            task = self._queue.popleft()
            self._running[self._remote.remote(task)] = task

    def finished(self, wait: bool) -> list[tuple[ProofTask, MethodOutcome | BaseException]]:
        """Tasks done since the last call (with `wait`: every task, waiting for those still running)."""
        if not self._running:
            return []
        import ray

        done: list[tuple[ProofTask, MethodOutcome | BaseException]] = []
        while self._running:
            ready, _ = ray.wait(list(self._running), num_returns=1 if wait else len(self._running),
                                timeout=None if wait else 0)
            if not ready:
                break
            for ref in ready:
                task = self._running.pop(ref)
                try:
                    done.append((task, ray.get(ref)))
                except Exception as error:  # a failed proof is recorded (proof-failed), never raised
                    done.append((task, error))
            self._launch()
            if not wait:
                break
        return done


def proof_pool(scenario: Scenario) -> RayProofPool | None:
    """The scenario's proof workers, or None when `[unlearning] proof-workers = 0` (proofs in line)."""
    u = scenario.unlearning
    if u.proof_workers == 0:
        return None
    return RayProofPool(u.proof_workers, u.proof_threads, u.proof_gpus)
