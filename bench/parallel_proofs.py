"""K proofs at once on K Ray workers against one proof alone: does the proof pool scale with the hardware?

Issue 15's target: with more hardware, K proofs in parallel take at most 1.3x the time of one. A proof here is a
retrain from scratch (the costliest proof task). The script runs one scenario's forget request K times in one
session, once per K of `--ks`: `unlearning.retrain-seeds = K` (K retrains under training seeds S ... S + K - 1,
every one a proof task of its own) on `proof-workers = K` workers of `proof-threads` torch threads each, the
workers started beforehand (a worker's start is paid once per worker, not per proof). The request sits at the last
round, so the proofs run after training, alone on the machine but for the run's final evaluation. From each run's
ledger it reads the retrain tasks' start and finish times; the figure is the span from the first start to the last
finish over the K retrains, divided by the K = 1 run's single retrain. Usage:

    .venv/bin/python bench/parallel_proofs.py [--scenario class-forget] [--rounds 200] [--ks 1,2]
        [--threads 1] [--out bench/results/parallel-proofs.json]

Use K x threads <= the machine's CPUs (or GPUs with `--gpus`): past that the workers only share the same cores.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedgan.forget import ForgetLedger  # noqa: E402
from fedgan.scenario import Scenario, load_scenario  # noqa: E402
from fedgan.storage import atomic_write_json  # noqa: E402
from fedgan.unlearning.retrain_spread import is_spread_label  # noqa: E402
from scenarios.runner import run_scenario  # noqa: E402


def proof_scenario(base: Scenario, rounds: int, k: int, threads: int, gpus: float) -> Scenario:
    """`base` trained `rounds` rounds with its requests at the last one, cascaded + retrain, K retrain seeds on K
    workers."""
    forget = tuple(dataclasses.replace(r, round=rounds) for r in base.forget)
    training = dataclasses.replace(base.training, rounds=rounds)
    unlearning = dataclasses.replace(base.unlearning, methods=("cascaded", "retrain"), retrain_seeds=k,
                                     proof_workers=k, proof_threads=threads, proof_gpus=gpus)
    return base.replace(training=training, forget=forget, unlearning=unlearning)


def warm_workers(count: int) -> None:
    """Start Ray as the proof pool would and `count` worker processes with fedgan's proof code imported, so that no
    run's span includes a worker's start (python, torch and fedgan imported: 4-9 s here, paid once per worker)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False, logging_level="ERROR",
                 log_to_driver=False)
    ray.get([ray.remote(_import_proof_code).options(num_cpus=0).remote() for _ in range(count)])


def _import_proof_code() -> int:
    import fedgan.unlearning.proof  # noqa: F401

    return os.getpid()


def retrain_spans(ledger_path: Path) -> list[dict]:
    """Per certified batch: the retrain tasks' (reference and spread) seconds and their span in wall time."""
    spans = []
    for view in ForgetLedger(ledger_path).states().values():
        tasks = [t for t in view.get("proof_tasks", []) if t["task"] == "retrain" or is_spread_label(t["task"])]
        if not tasks:
            continue
        start = min(t["started_at"] for t in tasks)
        finish = max(t["finished_at"] for t in tasks)
        spans.append({"request": view["request"]["request_id"], "state": view["state"], "retrains": len(tasks),
                      "task_seconds": [round(t["finished_at"] - t["started_at"], 2) for t in tasks],
                      "workers": sorted({t["worker"] for t in tasks}), "span_seconds": finish - start})
    return spans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", default="class-forget")
    parser.add_argument("--rounds", type=int, default=200, help="override training.rounds (and each retrain's)")
    parser.add_argument("--ks", default="1,2", help="comma-separated K: proofs (and workers) per run; 1 first")
    parser.add_argument("--threads", type=int, default=1, help="proof-threads: torch threads per worker")
    parser.add_argument("--gpus", type=float, default=0.0, help="proof-gpus: GPU share per worker")
    parser.add_argument("--out", default="bench/results/parallel-proofs.json")
    args = parser.parse_args()

    ks = [int(k) for k in args.ks.split(",")]
    if ks[0] != 1:
        raise SystemExit("--ks: start with 1, the baseline the other runs are divided by (for example --ks 1,2)")
    base = load_scenario(args.scenario)
    root = Path(os.environ.get("FEDGAN_BENCH_RUNS", "runs")) / f"parallel-proofs-{time.strftime('%Y%m%d-%H%M%S')}"
    warm_workers(max(ks))
    runs = {}
    for k in ks:
        out = root / f"k{k}"
        started = time.perf_counter()
        run_scenario(proof_scenario(base, args.rounds, k, args.threads, args.gpus), out)
        spans = retrain_spans(out / "ledger.jsonl")
        if not spans or any(s["retrains"] != k for s in spans):
            raise SystemExit(f"K={k}: expected {k} retrain tasks per batch in {out / 'ledger.jsonl'}, got {spans}")
        runs[k] = {"wall_seconds": time.perf_counter() - started, "batches": spans}
        print(json.dumps({"k": k, **runs[k]}), flush=True)
    one = runs[1]["batches"][0]["span_seconds"]
    ratios = {k: run["batches"][0]["span_seconds"] / one for k, run in runs.items()}
    result = {"scenario": base.name, "rounds": args.rounds, "threads": args.threads, "gpus": args.gpus,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "runs": runs,
              "span_over_one": ratios}
    for k, ratio in ratios.items():
        print(f"K={k}: {k} retrains in {runs[k]['batches'][0]['span_seconds']:.1f} s, {ratio:.2f}x one retrain's "
              f"{one:.1f} s", flush=True)
    atomic_write_json(Path(args.out), result)


if __name__ == "__main__":
    main()
