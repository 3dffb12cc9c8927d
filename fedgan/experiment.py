"""One experiment end to end, over any engine: measure, train, evaluate, record.

`run_experiment` is what the Flower ServerApp's `main` and the in-process runner both call. It owns the order of
things: load the evaluation data and the evaluator (before anything is written, so bad input leaves no trace),
open the sites, then the round loop with periodic evaluation, then the final evaluation and the run directory's
files (see `fedgan.results` for the contract).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fedgan.datasets import DatasetSplits
from fedgan.engine import SiteEngine, load_federation_data, load_full_data, resolve_device, site_positions
from fedgan.evaluation.classifier import Evaluator, load_or_train_evaluator
from fedgan.evaluation.metrics import evaluate_generator_samples
from fedgan.federation import GeneratorServer, RoundRecord
from fedgan.results import RunRecorder
from fedgan.scenario import Scenario
from fedgan.unlearning.orchestrator import ForgetService

ProgressFn = Callable[[int, int, dict[str, Any]], None]


def prepare(scenario: Scenario) -> tuple[DatasetSplits, Evaluator]:
    """Load the data, check the partition, and get the evaluator: everything that can fail on bad input."""
    splits = load_federation_data(scenario)
    site_positions(scenario)  # raises on a contradictory partition before anything is written
    evaluator = evaluator_for(scenario, load_full_data(scenario))
    return splits, evaluator


def evaluator_for(scenario: Scenario, splits: DatasetSplits) -> Evaluator:
    """The cached LeNet-style evaluator of this dataset (trained once on its training split)."""
    train, test = splits.train, splits.test
    key = f"{train.name}-{train.num_classes}c-{'x'.join(map(str, train.image_shape))}"
    return load_or_train_evaluator(
        key, train.float_images(), train.labels, test.float_images(), test.labels, train.num_classes,
        seed=0, epochs=scenario.evaluation.evaluator_epochs,
    )


def _real_reference(splits: DatasetSplits, count: int) -> torch.Tensor:
    """The first `count` test images: the pooled real reference for FID/KID (same for every run)."""
    return splits.test.float_images()[: min(count, len(splits.test))]


def evaluate(server: GeneratorServer, evaluator: Evaluator, splits: DatasetSplits, count: int, tag: str) -> dict:
    """FID_LeNet, KID, class histogram and coverage (and label fidelity for conditional G) on `count` samples."""
    labels = server.sample_labels(count, torch.Generator().manual_seed(1)) if server.conditional else None
    fake = server.sample(count, tag, labels)
    return evaluate_generator_samples(
        evaluator, _real_reference(splits, count), fake, splits.train.num_classes, fake_labels=labels
    )


def grid_samples(server: GeneratorServer, per_class: int) -> tuple[torch.Tensor, int]:
    """Samples for the picture: one row per class for a conditional G, a square-ish grid otherwise."""
    classes = server.num_classes
    if server.conditional:
        labels = torch.arange(classes).repeat_interleave(per_class)
        return server.sample(len(labels), "grid", labels), per_class
    return server.sample(classes * per_class, "grid"), per_class


def run_experiment(
    scenario: Scenario,
    engine: SiteEngine,
    out_dir: str | Path,
    *,
    progress: ProgressFn | None = None,
    prepared: tuple[DatasetSplits, Evaluator] | None = None,
) -> dict[str, Any]:
    """Train the scenario's federation through `engine`, write the run directory, return the summary."""
    splits, evaluator = prepared or prepare(scenario)
    started = time.perf_counter()
    sites = engine.open()
    device = resolve_device(scenario.engine.device)
    server = GeneratorServer(scenario, sites, splits.train.image_shape, splits.train.num_classes, device)
    recorder = RunRecorder(out_dir, scenario)
    recorder.start(splits, evaluator, sites)
    forget_service = ForgetService(scenario, splits, evaluator, out_dir, log=recorder.log)
    e = scenario.evaluation
    train_seconds = 0.0

    rounds = scenario.training.rounds
    for round_index in range(1, rounds + 1):
        # `round_index` counts training rounds (the schedule's clock); `server.round` counts every generator step,
        # including those an unlearning method spends.
        record: RoundRecord = server.step(engine)
        train_seconds += record.seconds
        line = record.as_dict() | {"round": round_index, "generator_steps": server.round,
                                   "bytes_down": engine.traffic.bytes_down, "bytes_up": engine.traffic.bytes_up}
        recorder.log(line)
        # ---------------- forget requests due after this round (schedule + inbox) ----------------
        requests = forget_service.due(round_index)
        if requests:
            forget_service.serve(server, engine, requests, round_index)
        # ---------------- periodic evaluation ----------------
        if e.every and round_index % e.every == 0 and round_index < rounds:
            metrics = evaluate(server, evaluator, splits, e.samples, f"round-{round_index}")
            recorder.log({"kind": "evaluation", "round": round_index, **metrics})
            recorder.save_grid(*grid_samples(server, e.grid_per_class), f"samples_round_{round_index:05d}.png")
            line |= {"fid_lenet": metrics["fid_lenet"]}
        if progress is not None:
            progress(round_index, rounds, line)

    final = evaluate(server, evaluator, splits, e.final_samples, "final")
    recorder.log({"kind": "evaluation", "round": rounds, "final": True, **final})
    recorder.save_grid(*grid_samples(server, e.grid_per_class), "samples_final.png")
    recorder.save_checkpoint(server, engine)
    summary = recorder.finish(
        final=final,
        unlearning=forget_service.results,
        engine=engine,
        wall_seconds=time.perf_counter() - started,
        train_seconds=train_seconds,
        rounds=rounds,
        generator_steps=server.round,
    )
    engine.close()
    return summary
