"""Forget requests served mid-run: how long the federation pauses, proofs in line against proofs on Ray workers.

Runs one scenario twice in one session — `unlearning.proof-workers = 0` (the whole proof in line: the federation
waits for every method, the retrain and the measurements) and the workers setting given (default ``auto``) — and
optionally drops an external request into the run's inbox (as `fedgan forget` does) once the run has passed a
round. For every request it reads the ledger: the federation's pause (running -> done), the chosen method's own
seconds, the proof's (done -> certified). Usage:

    .venv/bin/python bench/proof_workers.py [--scenario multi-forget] [--engine flower] [--rounds R]
        [--inbox-after 200 --inbox-site 5 --inbox-class 6] [--workers auto] [--out bench/results/proof-workers.json]

Prints one JSON line per run and request, then the ratios the issue's targets name: pause / chosen method's
seconds per request, and wall(workers) / wall(in line).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedgan.forget import ForgetLedger, ForgetRequest, drop_request  # noqa: E402
from fedgan.scenario import load_scenario  # noqa: E402
from fedgan.storage import atomic_write_json  # noqa: E402
from scenarios.runner import run_scenario, with_overrides  # noqa: E402


def drop_when_past(run_dir: Path, after_round: int, request: ForgetRequest, stop: threading.Event) -> None:
    """Drop `request` into the run's inbox as soon as metrics.jsonl shows round `after_round`."""
    metrics = run_dir / "metrics.jsonl"
    while not stop.is_set():
        if metrics.exists():
            for line in metrics.read_text().splitlines():
                record = json.loads(line) if line.strip().startswith("{") else {}
                if record.get("kind") == "round" and record.get("round", 0) >= after_round:
                    drop_request(run_dir, request)
                    return
        time.sleep(0.2)


def one_run(scenario, out: Path, inbox: tuple[int, ForgetRequest] | None) -> dict:
    stop = threading.Event()
    watcher = None
    if inbox is not None:
        watcher = threading.Thread(target=drop_when_past, args=(out, inbox[0], inbox[1], stop), daemon=True)
        watcher.start()
    started = time.perf_counter()
    summary = run_scenario(scenario, out)
    wall = time.perf_counter() - started
    stop.set()
    requests = []
    for view in ForgetLedger(out / "ledger.jsonl").states().values():
        requests.append({
            "request": view["request"]["request_id"], "source": view["request"]["source"],
            "round": view.get("round"), "state": view["state"], "method": view.get("method"),
            "pause_seconds": view.get("seconds"), "method_seconds": view.get("method_seconds"),
            "proof_seconds": view.get("proof_seconds"),
            "pause_over_method": (view["seconds"] / view["method_seconds"]) if view.get("method_seconds") else None,
        })
    return {"workers": scenario.unlearning.proof_workers, "wall_seconds": wall,
            "summary_wall_seconds": summary["wall_seconds"], "requests": requests,
            "certificates": len(summary.get("unlearning", []))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", default="multi-forget")
    parser.add_argument("--engine", help="override engine.name")
    parser.add_argument("--rounds", type=int, help="override training.rounds")
    parser.add_argument("--workers", default="auto", help="proof-workers of the second run (auto or a number)")
    parser.add_argument("--inbox-after", type=int, help="drop an external request once this round has run")
    parser.add_argument("--inbox-site", type=int, default=5)
    parser.add_argument("--inbox-class", type=int)
    parser.add_argument("--out", default="bench/results/proof-workers.json")
    args = parser.parse_args()

    base = with_overrides(load_scenario(args.scenario), engine=args.engine, rounds=args.rounds)
    inbox = None
    if args.inbox_after is not None:
        request = ForgetRequest(site=args.inbox_site, forget_class=args.inbox_class, source="external")
        inbox = (args.inbox_after, request)
    root = Path(os.environ.get("FEDGAN_BENCH_RUNS", "runs")) / f"proof-workers-{time.strftime('%Y%m%d-%H%M%S')}"
    workers = args.workers if args.workers == "auto" else int(args.workers)
    runs = {}
    for label, setting in (("in-line", 0), ("workers", workers)):
        scenario = base.replace(unlearning=dataclasses.replace(base.unlearning, proof_workers=setting))
        runs[label] = one_run(scenario, root / label, inbox)
        print(json.dumps({"run": label, **runs[label]}), flush=True)
    result = {
        "scenario": base.name, "engine": base.engine.name, "rounds": base.training.rounds,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "runs": runs,
        "wall_ratio_workers_over_in_line": runs["workers"]["wall_seconds"] / runs["in-line"]["wall_seconds"],
        "max_pause_over_method": {label: max((r["pause_over_method"] or 0) for r in run["requests"])
                                  for label, run in runs.items()},
    }
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}), flush=True)
    atomic_write_json(Path(args.out), result)


if __name__ == "__main__":
    main()
