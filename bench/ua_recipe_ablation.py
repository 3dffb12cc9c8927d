"""Which training recipe lets the generator learn the sites' mixture? (issue 9; docs/methods.md, Universal Aggregation.)

Runs named variants of one scenario (default: the hard split, scenarios/ua-hard-split.toml) in process, several at
once in worker processes (a GPU has room for many small federations), and measures the mixture every `--every`
rounds: per-label mode-share error (`mixture_mae`), label fidelity, site-share error (unconditional disjoint sites)
and FID_LeNet, all through the scenario's evaluator on `--samples` samples. A variant stops at `--rounds` or when
`--seconds` of wall time are spent, so a fixed device budget gives each variant the same time; the trend table
shows how the error moves with training length.

    .venv/bin/python bench/ua_recipe_ablation.py --jobs 10 --seconds 480 --out runs/ua-recipe
    .venv/bin/python bench/ua_recipe_ablation.py scenarios/ua-two-sites.toml --variant ua --variant avg

Variants are `name:key=value,...` over [training] and [model] keys (snake_case), e.g.
"ref:site_weights=per_class" or "r1:r1_gamma=1.0"; without --variant a built-in set runs. Writes
<out>/results.json (every measurement) and <out>/ablation.md (one row per variant and seed).
"""
from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.cascade_ablation import parse_variant as parse_overrides  # noqa: E402
from fedgan.engine import InProcessEngine, resolve_device  # noqa: E402
from fedgan.evaluation.metrics import fid_lenet  # noqa: E402
from fedgan.evaluation.mixture import headline, mixture_report  # noqa: E402
from fedgan.experiment import held_labels, mixture_truth, real_reference  # noqa: E402
from fedgan.federation import GeneratorServer  # noqa: E402
from fedgan.models import ModelSpec  # noqa: E402
from fedgan.preparation import prepare  # noqa: E402
from fedgan.scenario import Scenario, TrainingConfig, load_scenario  # noqa: E402
from fedgan.storage import atomic_write_json, atomic_write_text  # noqa: E402

# The built-in set for the hard split: the reference code's weighting, the paper's pi_j, our balanced reading, and
# the knobs the issue names (R1 on real images, D steps, capacity, learning rates), each against the same base.
DEFAULT_VARIANTS = [
    "ua-reference:site_weights=per_class",
    "ua-size:site_weights=size",
    "ua-balanced:site_weights=per_class,real_sampling=balanced",
    "ua-size-r1:site_weights=size,r1_gamma=1.0",
    "ua-size-r1prob:site_weights=size,r1_gamma=10.0,r1_target=probability",
    "ua-size-d2:site_weights=size,d_steps=2",
    "ua-size-wide:site_weights=size,width=64",
    "ua-size-lr2e-4:site_weights=size,lr_generator=2e-4",
    "avg-size:aggregator=avg,site_weights=size",
    "avg-reference:aggregator=avg,site_weights=per_class",
]
MODEL_KEYS = {f.name for f in dataclasses.fields(ModelSpec)}
TRAINING_KEYS = {f.name for f in dataclasses.fields(TrainingConfig)}


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """'name:key=value,...' -> (name, overrides); the overrides parsed as cascade_ablation.py parses its variants."""
    name, _, body = text.partition(":")
    return name, parse_overrides(body)


def apply_variant(scenario: Scenario, name: str, overrides: dict[str, Any], seed: int, rounds: int) -> Scenario:
    """The scenario with a variant's [training]/[model] overrides, its seed and round budget (a variant's own
    `rounds` wins over the budget). Two more keys: `scheme` (the partition scheme, without options: "iid") and
    `sites` (the site count) — so that, say, ten discriminators on IID shards can be compared with one."""
    model = {k: v for k, v in overrides.items() if k in MODEL_KEYS}
    training = {k: v for k, v in overrides.items() if k in TRAINING_KEYS}
    unknown = set(overrides) - set(model) - set(training) - {"scheme", "sites"}
    if unknown:
        raise SystemExit(f"variant {name}: unknown keys {sorted(unknown)} (use [training] or [model] keys, "
                         "scheme or sites)")
    partition = scenario.partition
    if "scheme" in overrides:
        partition = dataclasses.replace(partition, scheme=str(overrides["scheme"]), options={})
    sites = dataclasses.replace(scenario.sites, count=int(overrides.get("sites", scenario.sites.count)))
    return scenario.replace(
        name=f"{scenario.name}-{name}", seed=seed, sites=sites, partition=partition,
        model=dataclasses.replace(scenario.model, **model),
        training=dataclasses.replace(scenario.training, **{"rounds": rounds, **training}),
        compare=dataclasses.replace(scenario.compare, aggregators=(), seeds=()),
    )


def measure(server: GeneratorServer, evaluator: Any, splits: Any, truth: Any, samples: int) -> dict[str, Any]:
    """Mixture headline numbers and FID_LeNet on `samples` fresh samples (their own RNG stream)."""
    labels = server.sample_labels(samples, torch.Generator().manual_seed(1)) if server.conditional else None
    fake = server.sample(samples, "ablation", labels)
    reference = real_reference(splits, samples, held_labels(server))
    result: dict[str, Any] = {"fid_lenet": fid_lenet(evaluator, reference, fake)}
    if truth is not None:
        report = mixture_report(evaluator, fake, labels, truth.real_modes, truth.site_class_counts,
                                truth.source_names, truth.class_names)
        result |= headline(report)
        result["per_label_first_source"] = [row["generated"][0] for row in report.get("per_label", [])]
        result["site_shares"] = [site["share"] for site in report.get("sites", [])]
    return result


def run_variant(scenario: Scenario, every: int, samples: int, seconds: float, threads: int) -> dict[str, Any]:
    """Train one variant in process; measure every `every` rounds; stop at its rounds or after `seconds`."""
    torch.set_num_threads(threads)
    splits, evaluator = prepare(scenario)
    truth = mixture_truth(scenario, splits)
    engine = InProcessEngine(scenario)
    server = GeneratorServer(scenario, engine.open(), splits.train.image_shape, splits.train.num_classes,
                             resolve_device(scenario.engine.device))
    trend: list[dict[str, Any]] = []
    started = time.perf_counter()
    train_seconds = 0.0
    for round_index in range(1, scenario.training.rounds + 1):
        train_seconds += server.step(engine).seconds
        out_of_time = time.perf_counter() - started > seconds
        if round_index % every == 0 or round_index == scenario.training.rounds or out_of_time:
            trend.append({"round": round_index, "train_seconds": round(train_seconds, 1),
                          **measure(server, evaluator, splits, truth, samples)})
            print(f"{scenario.name} seed {scenario.seed} round {round_index}: "
                  f"{ {k: v for k, v in trend[-1].items() if not isinstance(v, list)} }", flush=True)
        if out_of_time:
            break
    engine.close()
    return {"variant": scenario.name, "seed": scenario.seed, "device": str(server.device),
            "rounds_per_second": trend[-1]["round"] / max(train_seconds, 1e-9), "trend": trend,
            "evaluator_accuracy": evaluator.accuracy, "evaluator_mode_accuracy": evaluator.mode_accuracy}


def table(results: list[dict[str, Any]]) -> str:
    """One Markdown row per variant and seed: the error at each measured round, the last FID, rounds per second."""
    measured = results[0]["trend"][-1]
    # the mixture's error where the scenario has a mixture truth; FID_LeNet alone otherwise (one site)
    key = next((k for k in ("mixture_mae", "site_share_max_error") if k in measured), "fid_lenet")
    rounds = sorted({point["round"] for r in results for point in r["trend"]})
    shown = [x for x in rounds if all(x in {p["round"] for p in r["trend"]} for r in results)][-6:]
    lines = [f"{key} by round (lower is better); last column FID_LeNet at the last round measured", "",
             "| variant | seed | " + " | ".join(f"r{x}" for x in shown) + " | last round | last | FID | rounds/s |",
             "|---|---|" + "---|" * (len(shown) + 4)]
    for r in results:
        by_round = {p["round"]: p for p in r["trend"]}
        last = r["trend"][-1]
        cells = [f"{by_round[x][key]:.3f}" for x in shown]
        lines.append(f"| {r['variant']} | {r['seed']} | " + " | ".join(cells) +
                     f" | {last['round']} | {last[key]:.3f} | {last['fid_lenet']:.1f} | {r['rounds_per_second']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", default="scenarios/ua-hard-split.toml")
    parser.add_argument("--variant", action="append", help="name:key=value,... (repeatable); default: built-in set")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--rounds", type=int, default=None, help="round budget (default: the scenario's)")
    parser.add_argument("--seconds", type=float, default=float("inf"), help="wall-time budget per variant")
    parser.add_argument("--every", type=int, default=500)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    base = load_scenario(args.scenario)
    if args.data_root:
        base = base.replace(data=dataclasses.replace(base.data, root=args.data_root))
    out = Path(args.out or f"runs/ua-recipe-{base.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    rounds = args.rounds or base.training.rounds
    prepare(base)  # the evaluator is trained (and cached) once, before the workers start
    jobs = [apply_variant(base, *parse_variant(text), seed=int(seed), rounds=rounds)
            for text in (args.variant or DEFAULT_VARIANTS) for seed in args.seeds.split(",")]
    threads = max(1, (os.cpu_count() or 1) // max(args.jobs, 1))
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run_variant, job, args.every, args.samples, args.seconds, threads) for job in jobs]
        results = [future.result() for future in futures]
    atomic_write_json(out / "results.json", {"scenario": base.to_dict(), "results": results})
    atomic_write_text(out / "ablation.md", table(results))
    print(table(results))


if __name__ == "__main__":
    main()
