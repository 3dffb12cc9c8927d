"""Round time and peak memory against the number of sites, for every way fedgan can run the sites.

Configurations (each in a fresh subprocess, so that its memory is its own):
- ``loop``         in process, `InProcessEngine`: one `Site` after another;
- ``batched``      in process, `BatchedEngine`: `--nodes` site groups of equal size, `engine.batching` as given;
- ``flower-node``  Flower's Ray simulation engine, one SuperNode per site (the default of `sites.per-node`);
- ``flower-group`` Flower with site groups: `--nodes` SuperNodes, each hosting one group, the same as ``batched``;
- ``flower-preagg`` the same, each node answering for its group as one equivalent site (`sites.pre-aggregate`).
Every configuration runs the same scenario (Fashion-MNIST, Dirichlet(0.3) label skew, DCGAN width 32, batch 64, the
UA server step included) for `--warmup` untimed and `--rounds` timed rounds. Peak memory is the largest sum of the
resident set sizes of the subprocess and all its descendants (driver, Ray daemons and actors), sampled every 0.2 s.
Ratios are taken within one run of this script (these machines are noisy). Usage:

    .venv/bin/python bench/scale.py [--sites 10,30,100,300,1000]
        [--configs loop,batched,flower-node,flower-group,flower-preagg] [--nodes 4] [--batching auto]
        [--rounds 5] [--warmup 2] [--device cpu] [--width 32] [--precision float32]
        [--flower-node-max 100]
        [--out bench/results/scale.json]

Prints one JSON line per (configuration, sites) and the ratios; writes them all to `--out`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flower_overhead import time_rounds  # noqa: E402  (this folder: the same timed loop for every engine)

CONFIGS = ("loop", "batched", "flower-node", "flower-group", "flower-preagg")


def scenario_for(sites: int, per_node: int, batching: str, device: str, engine: str, width: int = 32,
                 precision: str = "float32", pre_aggregate: bool = False):
    """The benchmark's scenario at `sites` sites."""
    from fedgan.scenario import scenario_from_dict

    min_size = 8 if sites >= 1000 else 10  # as the shipped many-site scenarios (Dirichlet(0.3) leaves some sites small)
    return scenario_from_dict({
        "name": f"scale-{sites}", "seed": 0,
        "data": {"name": "fashion_mnist"},
        "sites": {"count": sites, "per-node": per_node, "pre-aggregate": pre_aggregate},
        "partition": {"scheme": "dirichlet", "alpha": 0.3, "min-size": min_size},
        "model": {"architecture": "dcgan", "latent-dim": 64, "width": width},
        "training": {"rounds": 1000, "batch-size": 64, "lr-generator": 1e-3},
        "engine": {"name": engine, "device": device, "batching": batching, "num-cpus": 1, "precision": precision,
                   "num-gpus": 0.25 if device == "cuda" and engine == "flower" else 0.0},  # 4 nodes share a GPU
    })


def per_node(config: str, sites: int, nodes: int) -> int:
    """Sites per group: one for ``flower-node``, else as many as `nodes` groups need."""
    return 1 if config == "flower-node" else -(-sites // nodes)


def run_one(config: str, sites: int, args: argparse.Namespace) -> list[float]:
    """One configuration at one size, in this process (the child side of `measure`)."""
    group_size = per_node(config, sites, args.nodes)
    scenario = scenario_for(sites, group_size, args.batching, args.device,
                            "inprocess" if config == "loop" else "batched" if config == "batched" else "flower",
                            args.width, args.precision, config == "flower-preagg")
    if config == "loop":
        from fedgan.engine import InProcessEngine

        return time_rounds(scenario, InProcessEngine(scenario), args.rounds, args.warmup)
    if config == "batched":
        from fedgan.batched_engine import BatchedEngine

        return time_rounds(scenario, BatchedEngine(scenario), args.rounds, args.warmup)
    return run_flower(scenario, args)


def run_flower(scenario, args: argparse.Namespace) -> list[float]:
    from scenarios.runner import FLOWER_ENV

    os.environ.update(FLOWER_ENV)
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from clients.app import app as client_app
    from fedgan.protocol import num_nodes
    from server.engine import FlowerEngine
    from server.simulation_latency import install_dispatcher

    result: list[float] = []
    server_app = ServerApp()
    state_dir = tempfile.mkdtemp(prefix="fedgan-scale-")

    @server_app.main()
    def main(grid, context) -> None:
        result.extend(time_rounds(scenario, FlowerEngine(grid, scenario, state_dir=state_dir), args.rounds,
                                  args.warmup))

    backend = {"client_resources": {"num_cpus": scenario.engine.num_cpus, "num_gpus": scenario.engine.num_gpus},
               "init_args": {"include_dashboard": False, "logging_level": "ERROR"}}
    install_dispatcher()
    run_simulation(server_app, client_app, num_supernodes=num_nodes(scenario.sites.per_node, scenario.sites.count),
                   backend_config=backend)
    return result


def tree_rss_bytes(pid: int) -> int:
    """Resident set size of `pid` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            rss[int(entry.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        total += rss.get(current, 0)
        pending.extend(children.get(current, []))
    return total


def measure(config: str, sites: int, args: argparse.Namespace) -> dict:
    """Run one configuration in a subprocess; its round times and the peak memory of its process tree."""
    command = [sys.executable, __file__, "--child", config, "--child-sites", str(sites), "--nodes",
               str(args.nodes), "--batching", args.batching, "--rounds", str(args.rounds), "--warmup",
               str(args.warmup), "--device", args.device, "--width", str(args.width),
               "--precision", args.precision]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss_bytes(process.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate()
    stop.set()
    sampler.join()
    lines = [line for line in output.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        return {"config": config, "sites": sites, "error": f"exit {process.returncode}"}
    seconds = json.loads(lines[-1])["seconds"]
    return {"config": config, "sites": sites, "per_node": per_node(config, sites, args.nodes),
            "batching": args.batching, "precision": args.precision, "rounds_timed": len(seconds),
            "median_s_per_round": statistics.median(seconds), "peak_rss_gb": peak / 2**30}


def ratios(results: list[dict]) -> list[dict]:
    """Within-run ratios at each size: every configuration against ``batched`` (the issue's yardstick), and
pre-aggregating nodes against plain ones."""
    rows = []
    by = {(r["config"], r["sites"]): r for r in results if "median_s_per_round" in r}
    for sites in sorted({r["sites"] for r in results}):
        base = by.get(("batched", sites))
        for config in CONFIGS:
            other = by.get((config, sites))
            if base and other and config != "batched":
                rows.append({"sites": sites, "ratio": f"{config} / batched",
                             "value": other["median_s_per_round"] / base["median_s_per_round"]})
        grouped, pre = by.get(("flower-group", sites)), by.get(("flower-preagg", sites))
        if grouped and pre:  # what answering as one equivalent site per node costs or saves
            rows.append({"sites": sites, "ratio": "flower-preagg / flower-group",
                         "value": pre["median_s_per_round"] / grouped["median_s_per_round"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", default="10,30,100,300,1000")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--nodes", type=int, default=4, help="site groups (Flower nodes) for batched, flower-group")
    parser.add_argument("--batching", default="auto")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=32, help="DCGAN width (64: the GPU reference's model)")
    parser.add_argument("--precision", default="float32", help="engine.precision: float32 or bfloat16")
    parser.add_argument("--flower-node-max", type=int, default=100, help="largest size tried with one node per site")
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-sites", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps({"seconds": run_one(args.child, args.child_sites, args)}), flush=True)
        return
    machine = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
               "command": " ".join(sys.argv)}
    print(json.dumps(machine), flush=True)
    results = []
    for sites in (int(s) for s in args.sites.split(",")):
        for config in args.configs.split(","):
            if config == "flower-node" and sites > args.flower_node_max:
                continue
            result = measure(config, sites, args)
            print(json.dumps(result), flush=True)
            results.append(result)
    for row in ratios(results):
        print(json.dumps(row), flush=True)
    if args.out:
        from fedgan.storage import atomic_write_json

        atomic_write_json(args.out, {"machine": machine, "results": results, "ratios": ratios(results)})


if __name__ == "__main__":
    main()
