"""Turn a scenario into a run: pick the engine, run it, write the run directory (and a comparison if asked).

Engines: ``flower`` runs the real Flower ServerApp and ClientApp on Flower's Ray simulation engine
(`flwr.simulation.run_simulation`); ``inprocess`` runs the same server loop and site code in this process;
``batched`` the same loop with the sites as site groups (`fedgan.batched_engine`).
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from fedgan.batched_engine import BatchedEngine
from fedgan.engine import InProcessEngine
from fedgan.errors import FedganError
from fedgan.evaluation.plots import plot_mixture_shares
from fedgan.experiment import ProgressFn, run_experiment
from fedgan.preparation import prepare
from fedgan.protocol import num_nodes
from fedgan.results import mixture_markdown, refuse_existing_run
from fedgan.scenario import Scenario
from fedgan.storage import atomic_write_json, atomic_write_text
from server.simulation_latency import RAY_ENV

# Flower calls out to the network unless told not to, and would `uv sync` the project per run (docs/engines.md).
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "RAY_DEDUP_LOGS": "0",
    **RAY_ENV,  # Ray calls carry a round's messages inline (server/simulation_latency.py)
}


def with_overrides(scenario: Scenario, *, engine: str | None = None, rounds: int | None = None,
                   data_root: str | None = None, aggregators: tuple[str, ...] | None = None,
                   seeds: tuple[int, ...] | None = None, proof_workers: str | int | None = None) -> Scenario:
    """The scenario with command-line overrides applied (and re-validated)."""
    if proof_workers is not None:
        scenario = scenario.replace(unlearning=dataclasses.replace(scenario.unlearning, proof_workers=proof_workers))
    if aggregators is not None:
        scenario = scenario.replace(compare=dataclasses.replace(scenario.compare, aggregators=aggregators))
    if seeds is not None:
        scenario = scenario.replace(compare=dataclasses.replace(scenario.compare, seeds=seeds))
    if data_root is not None:
        scenario = scenario.replace(data=dataclasses.replace(scenario.data, root=data_root))
    if engine is not None:
        scenario = scenario.replace(engine=dataclasses.replace(scenario.engine, name=engine))
    if rounds is not None:
        scenario = scenario.replace(training=dataclasses.replace(scenario.training, rounds=rounds))
    return scenario


def check_out_dir(out: Path) -> None:
    """Refuse to overwrite an earlier run before anything starts (`fedgan.results.refuse_existing_run`)."""
    refuse_existing_run(out)


def default_out_dir(scenario: Scenario) -> Path:
    """runs/<scenario>-<timestamp> under the current directory."""
    return Path("runs") / f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_inprocess(scenario: Scenario, out: Path, progress: ProgressFn | None, prepared: Any,
                  resume: bool = False) -> dict[str, Any]:
    """An engine in this process: the same loop and site code, no Flower (`inprocess`, or `batched` groups)."""
    from server.proof_workers import proof_pool

    engine = BatchedEngine(scenario) if scenario.engine.name == "batched" else InProcessEngine(scenario)
    return run_experiment(scenario, engine, out, progress=progress, prepared=prepared, proofs=proof_pool(scenario),
                          resume=resume)


def resume_scenario(out: Path, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Continue the run in `out` from its checkpoint, with the scenario it was started with (its scenario.toml)."""
    from fedgan.checkpoint import has_checkpoint, read_checkpoint
    from fedgan.scenario import load_scenario

    if not (out / "scenario.toml").is_file():
        raise FedganError("--resume", f"{out} holds no run (no scenario.toml)", "name the directory of a run")
    if has_checkpoint(out):
        read_checkpoint(out)  # a damaged checkpoint is refused before anything starts
    if (out / "summary.json").exists():
        raise FedganError("--resume", f"{out} already finished (summary.json)", "nothing to resume")
    scenario = load_scenario(out / "scenario.toml")
    if scenario.compare.aggregators:
        raise FedganError("--resume", "comparisons resume per variant", f"resume {out}/<variant> instead")
    if scenario.engine.name in ("inprocess", "batched"):
        return run_inprocess(scenario, out, progress, prepare(scenario), resume=True)
    return run_flower(scenario, out, progress, resume=True)


def run_flower(scenario: Scenario, out: Path, progress: ProgressFn | None,
               wire_log: list[dict[str, Any]] | None = None, resume: bool = False) -> dict[str, Any]:
    """The real Flower apps on Flower's Ray simulation engine, one SuperNode per `sites.per-node` sites."""
    os.environ.update(FLOWER_ENV)
    from flwr.simulation import run_simulation

    from clients.app import app as client_app
    from server.app import make_server_app
    from server.simulation_latency import install_dispatcher

    install_dispatcher()  # the dispatcher wakes when the server pushes, instead of every 0.1 s

    result: dict[str, Any] = {}
    errors: list[BaseException] = []
    server_app = make_server_app(scenario, out, progress=progress, on_done=result.update, wire_log=wire_log,
                                 resume=resume, on_error=errors.append)
    backend_config = {
        "client_resources": {"num_cpus": scenario.engine.num_cpus, "num_gpus": scenario.engine.num_gpus},
        "init_args": {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": True},
    }
    nodes = num_nodes(scenario.sites.per_node, scenario.sites.count)  # one SuperNode per site group
    try:
        run_simulation(server_app, client_app, num_supernodes=nodes, backend_config=backend_config)
    except Exception:
        if not errors:
            raise
    if errors:  # the ServerApp's own error, as raised (a FedganError keeps its field)
        raise errors[0]
    if not result:
        raise RuntimeError("the Flower simulation ended without a result (see the log above)")
    return result


def run_scenario(scenario: Scenario, out: Path, progress: ProgressFn | None = None,
                 wire_log: list[dict[str, Any]] | None = None, jobs: int = 1) -> dict[str, Any]:
    """Run one scenario (or, with [compare], one run per aggregator plus a comparison). Returns the summary."""
    check_out_dir(out)
    if scenario.compare.aggregators:
        return run_comparison(scenario, out, progress, jobs)
    prepared = prepare(scenario)  # bad data or partition fails here, before anything is written
    if scenario.engine.name in ("inprocess", "batched"):
        return run_inprocess(scenario, out, progress, prepared)
    return run_flower(scenario, out, progress, wire_log)


def comparison_variants(scenario: Scenario) -> dict[str, Scenario]:
    """One scenario per aggregator (x seed): keys "ua", "avg" or, with several seeds, "ua-seed0", "ua-seed1"."""
    seeds = scenario.compare.seeds or (scenario.seed,)
    variants = {}
    for name in scenario.compare.aggregators:
        for seed in seeds:
            key = name if len(seeds) == 1 else f"{name}-seed{seed}"
            variants[key] = scenario.replace(
                name=f"{scenario.name}-{key}", seed=seed,
                training=dataclasses.replace(scenario.training, aggregator=name),
                compare=dataclasses.replace(scenario.compare, aggregators=(), seeds=()),
            )
    return variants


def _run_variant(variant: Scenario, out: Path, threads: int) -> dict[str, Any]:
    """One comparison variant in a worker process (torch threads shared out between the workers)."""
    import torch

    torch.set_num_threads(threads)
    return run_scenario(variant, out)


def run_comparison(scenario: Scenario, out: Path, progress: ProgressFn | None, jobs: int = 1) -> dict[str, Any]:
    """The same scenario, seeds and budget once per aggregator (and seed); comparison.md, mixture.png side by side.

    With `jobs` > 1 the variants run in that many worker processes at once, seeded exactly as a sequential run
    (floats may differ in the last digits with the number of torch threads); a GPU has room for several small
    federations side by side.
    """
    planned = comparison_variants(scenario)
    prepare(scenario)  # bad data fails here, before any variant starts (and the evaluator is cached once)
    variants: dict[str, dict[str, Any]] = {}
    if jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        threads = max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {key: pool.submit(_run_variant, variant, out / key, threads) for key, variant in planned.items()}
            variants = {key: future.result() for key, future in futures.items()}
    else:
        for key, variant in planned.items():
            variants[key] = run_scenario(variant, out / key, progress)
    first = next(iter(variants.values()))
    summary = {
        "scenario": scenario.name, "dataset": first["dataset"], "num_sites": first["num_sites"],
        "aggregator": list(scenario.compare.aggregators), "seeds": list(scenario.compare.seeds or [scenario.seed]),
        "rounds": first["rounds"], "wall_seconds": sum(v["wall_seconds"] for v in variants.values()),
        "evaluator_accuracy": first["evaluator_accuracy"], "variants": variants,
    }
    mixtures = {key: v["mixture"] for key, v in variants.items() if "mixture" in v}
    if mixtures:
        summary["mixture"] = mixture_summary(mixtures, scenario)
        plot_mixture_shares(mixtures, out / "mixture.png")
    atomic_write_json(out / "summary.json", summary)
    text = comparison_table(variants)
    if mixtures:
        text += "\n" + mixture_markdown(mixtures)
    atomic_write_text(out / "comparison.md", text)
    return summary


def mixture_summary(mixtures: dict[str, dict[str, Any]], scenario: Scenario) -> dict[str, Any]:
    """Per aggregator: each seed's mixture error and their mean (per-label MAE and/or site-share error)."""
    seeds = scenario.compare.seeds or (scenario.seed,)
    result: dict[str, Any] = {}
    for name in scenario.compare.aggregators:
        runs = [mixtures[name if len(seeds) == 1 else f"{name}-seed{seed}"] for seed in seeds]
        entry: dict[str, Any] = {"seeds": list(seeds)}
        for key in ("mae", "site_share_max_error", "label_fidelity"):
            if key in runs[0]:
                values = [run[key] for run in runs]
                entry[key] = values
                entry[f"{key}_mean"] = float(sum(values) / len(values))
        if "sites" in runs[0]:
            entry["site_shares"] = [[site["share"] for site in run["sites"]] for run in runs]
            entry["site_weights"] = [site["weight"] for site in runs[0]["sites"]]
        result[name] = entry
    return result


def comparison_table(variants: dict[str, dict[str, Any]]) -> str:
    """A Markdown table of the headline numbers of each variant."""
    rows = ["| variant | FID_LeNet | KID | class coverage | real-vs-generated histogram L1 | mixture error | seconds |",
            "|---|---|---|---|---|---|---|"]
    for name, v in variants.items():
        l1 = sum(abs(a - b) for a, b in zip(v["class_histogram"], v["real_class_histogram"]))
        mixture = v.get("mixture", {})
        error = mixture.get("mae", mixture.get("site_share_max_error"))
        rows.append(f"| {name} | {v['fid_lenet']:.2f} | {v['kid']:.4f} | {v.get('class_coverage', float('nan')):.2f} "
                    f"| {l1:.3f} | {'–' if error is None else f'{error:.3f}'} | {v['wall_seconds']:.0f} |")
    return "\n".join(rows) + "\n"
