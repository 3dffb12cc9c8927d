"""One round through Flower's Ray simulation engine vs the in-process engine, measured in the same run.

Both engines run the same scenario (same sites, same seed, same site code); the script times the rounds after a
warm-up and prints the median seconds per round of each and their ratio. Usage:

    .venv/bin/python bench/flower_overhead.py [--scenario scenarios/quickstart.toml] [--rounds 40] [--warmup 5]

Prints one JSON line per engine and a final line with the ratio (flower / inprocess).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedgan.engine import InProcessEngine, load_federation_data, resolve_device  # noqa: E402
from fedgan.federation import GeneratorServer  # noqa: E402
from fedgan.scenario import Scenario, load_scenario  # noqa: E402
from scenarios.runner import FLOWER_ENV  # noqa: E402


def time_rounds(scenario: Scenario, engine, rounds: int, warmup: int,
                before_round: Callable[[], None] | None = None,
                after_round: Callable[[], None] | None = None) -> list[float]:
    """Seconds of each timed round (after `warmup` untimed rounds), server step included; the optional hooks run
    just outside each timed round (bench/flower_profile.py marks its timeline with them)."""
    train = load_federation_data(scenario).train
    sites = engine.open()
    server = GeneratorServer(scenario, sites, train.image_shape, train.num_classes,
                             resolve_device(scenario.engine.device))
    for _ in range(warmup):
        server.step(engine)
    seconds = []
    for _ in range(rounds):
        if before_round is not None:
            before_round()
        started = time.perf_counter()
        server.step(engine)
        seconds.append(time.perf_counter() - started)
        if after_round is not None:
            after_round()
    engine.close()
    return seconds


def bench_inprocess(scenario: Scenario, rounds: int, warmup: int) -> list[float]:
    return time_rounds(scenario, InProcessEngine(scenario), rounds, warmup)


def bench_flower(scenario: Scenario, rounds: int, warmup: int) -> list[float]:
    os.environ.update(FLOWER_ENV)
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from clients.app import app as client_app
    from server.engine import FlowerEngine
    from server.simulation_latency import install_dispatcher

    result: list[float] = []
    server_app = ServerApp()

    @server_app.main()
    def main(grid, context) -> None:
        result.extend(time_rounds(scenario, FlowerEngine(grid, scenario), rounds, warmup))

    backend = {"client_resources": {"num_cpus": scenario.engine.num_cpus, "num_gpus": scenario.engine.num_gpus},
               "init_args": {"include_dashboard": False, "logging_level": "ERROR"}}
    install_dispatcher()
    run_simulation(server_app, client_app, num_supernodes=scenario.sites.count, backend_config=backend)
    return result


def summarise(name: str, seconds: list[float], scenario: Scenario) -> dict:
    return {"engine": name, "scenario": scenario.name, "sites": scenario.sites.count,
            "batch": scenario.training.batch_size, "rounds_timed": len(seconds),
            "median_s_per_round": statistics.median(seconds), "mean_s_per_round": statistics.fmean(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="scenarios/quickstart.toml")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    scenario = load_scenario(args.scenario)
    scenario = scenario.replace(engine=dataclasses.replace(scenario.engine, device="cpu"))
    print(json.dumps({"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}))
    inprocess = summarise("inprocess", bench_inprocess(scenario, args.rounds, args.warmup), scenario)
    print(json.dumps(inprocess), flush=True)
    flower = summarise("flower", bench_flower(scenario, args.rounds, args.warmup), scenario)
    print(json.dumps(flower), flush=True)
    ratio = flower["median_s_per_round"] / inprocess["median_s_per_round"]
    print(json.dumps({"flower_over_inprocess": ratio,
                      "flower_overhead_s_per_round": flower["median_s_per_round"] - inprocess["median_s_per_round"]}))


if __name__ == "__main__":
    main()
