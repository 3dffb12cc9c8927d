"""One experiment end to end, over any engine: measure, train, evaluate, record.

`run_experiment` is what the Flower ServerApp's `main` and the in-process runner both call. It owns the order of
things: load the evaluation data and the evaluator (before anything is written, so bad input leaves no trace),
open the sites, then the round loop with periodic evaluation, then the final evaluation and the run directory's
files (see `fedgan.results` for the contract).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedgan.checkpoint import RunState, has_checkpoint, read_checkpoint, write_checkpoint
from fedgan.datasets import DatasetSplits
from fedgan.engine import SiteEngine, resolve_device, site_positions
from fedgan.evaluation.classifier import Evaluator
from fedgan.evaluation.metrics import evaluate_generator_samples
from fedgan.evaluation.mixture import disjoint_site_labels, headline, mixture_report, mode_counts
from fedgan.faults import fault_point
from fedgan.federation import GeneratorServer, RoundRecord
from fedgan.preparation import prepare
from fedgan.results import RunRecorder
from fedgan.scenario import Scenario
from fedgan.unlearning.orchestrator import ForgetService
from fedgan.unlearning.proof import ProofPool, load_server_snapshot, server_snapshot

ProgressFn = Callable[[int, int, dict[str, Any]], None]


def real_reference(splits: DatasetSplits, count: int, labels: np.ndarray | None = None) -> torch.Tensor:
    """The pooled real reference for FID/KID, the same for every run: the first `count` test images, or on a mixed
    dataset (whose test split is one source after the other) a fixed random `count` of them. With `labels`, only test
    images of those labels (the labels the federation holds, when it does not hold all)."""
    test = splits.test
    if labels is not None:
        test = test.subset(np.flatnonzero(np.isin(test.labels.numpy(), labels)))
    count = min(count, len(test))
    if test.sources is None:
        return test.float_images()[:count]
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:count]
    return test.subset(pick.sort().values).float_images()


@dataclass(frozen=True)
class MixtureTruth:
    """What the mixture measurement compares generated samples with (`fedgan.evaluation.mixture`)."""

    real_modes: np.ndarray  # (sources, labels) real items the sites hold
    site_class_counts: np.ndarray  # (sites, labels)
    source_names: tuple[str, ...]
    class_names: tuple[str, ...]


def mixture_truth(scenario: Scenario, splits: DatasetSplits) -> MixtureTruth | None:
    """The real mixture when there is one to measure: a mixed dataset, or an unconditional G over disjoint sites."""
    train = splits.train
    positions = site_positions(scenario)
    counts = np.stack([np.bincount(train.labels[p].numpy(), minlength=train.num_classes) for p in positions])
    disjoint = not scenario.model.conditional and disjoint_site_labels(counts) is not None
    if train.sources is None and not disjoint:
        return None
    held = np.concatenate(positions)
    sources = None if train.sources is None else train.sources[held].numpy()
    num_sources = max(len(train.source_names), 1)
    modes = mode_counts(train.labels[held].numpy(), sources, train.num_classes, num_sources)
    return MixtureTruth(modes, counts, train.source_names, train.class_names)


def held_labels(server: GeneratorServer) -> np.ndarray | None:
    """The labels the sites hold at the start, when they are not all of the dataset's (else None)."""
    held = np.flatnonzero(server.class_counts.sum(0) > 0)
    return None if len(held) == server.num_classes else held


def evaluate(server: GeneratorServer, evaluator: Evaluator, splits: DatasetSplits, count: int, tag: str,
             truth: MixtureTruth | None = None, reference_labels: np.ndarray | None = None) -> dict:
    """FID_LeNet, KID, class histogram and coverage (and label fidelity for conditional G) on `count` samples,
    against test images of `reference_labels` (all when None); with `truth`, the `mixture` block too."""
    labels = server.sample_labels(count, torch.Generator().manual_seed(1)) if server.conditional else None
    fake = server.sample(count, tag, labels)
    fault_point("evaluation")
    metrics = evaluate_generator_samples(
        evaluator, real_reference(splits, count, reference_labels), fake, splits.train.num_classes, fake_labels=labels
    )
    if truth is not None:
        metrics["mixture"] = mixture_report(evaluator, fake, labels, truth.real_modes, truth.site_class_counts,
                                            truth.source_names, truth.class_names)
    return metrics


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
    proofs: ProofPool | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train the scenario's federation through `engine`, write the run directory, return the summary.

    Forget requests' proofs run on `proofs` (workers, concurrently with the training) or, without it, in line.
    With `resume`, continue the run in `out_dir` from its checkpoint (`fedgan.checkpoint`): the same metrics as
    a run never interrupted."""
    splits, evaluator = prepared or prepare(scenario)
    started = time.perf_counter()
    # A damaged checkpoint fails here, before any change; a run killed before its first checkpoint starts again.
    checkpointed = read_checkpoint(out_dir) if resume and has_checkpoint(out_dir) else None
    sites = engine.open()
    device = resolve_device(scenario.engine.device)
    server = GeneratorServer(scenario, sites, splits.train.image_shape, splits.train.num_classes, device)
    recorder = RunRecorder(out_dir, scenario)
    recorder.start(splits, evaluator, sites, resume=resume)
    forget_service = ForgetService(scenario, splits, evaluator, out_dir, log=recorder.log, proofs=proofs)
    truth = mixture_truth(scenario, splits)
    reference_labels = held_labels(server)  # fixed at the start: forgetting a class does not move the yardstick
    e = scenario.evaluation
    checkpoints = Checkpointer(scenario, server, engine, recorder, forget_service)
    first_round = 1
    if checkpointed is not None:
        first_round = checkpoints.restore(checkpointed) + 1
    elif resume:
        checkpoints.restart()

    rounds = scenario.training.rounds
    for round_index in range(first_round, rounds + 1):
        # `round_index` counts training rounds (the schedule's clock); `server.round` counts every generator step,
        # including those an unlearning method spends.
        record: RoundRecord = server.step(engine)
        checkpoints.train_seconds += record.seconds
        line = record.as_dict() | {"round": round_index, "generator_steps": server.round,
                                   "bytes_down": engine.traffic.bytes_down, "bytes_up": engine.traffic.bytes_up}
        recorder.log(line)
        # ---------------- forget requests due after this round (schedule + inbox) ----------------
        requests = forget_service.due(round_index)
        if requests:
            forget_service.serve(server, engine, requests, round_index)
        forget_service.collect()  # certificates of proofs that have finished meanwhile
        # ---------------- periodic evaluation ----------------
        if e.every and round_index % e.every == 0 and round_index < rounds:
            metrics = evaluate(server, evaluator, splits, e.samples, f"round-{round_index}", truth,
                               reference_labels)
            recorder.log({"kind": "evaluation", "round": round_index, **metrics, **headline(metrics.get("mixture"))})
            recorder.save_grid(*grid_samples(server, e.grid_per_class), f"samples_round_{round_index:05d}.png")
            line |= {"fid_lenet": metrics["fid_lenet"]}
        checkpoints.after_round(round_index)  # every checkpoint-every rounds, and after any ledger change
        if progress is not None:
            progress(round_index, rounds, line)

    # ---------------- requests dropped into the inbox during the last round are served before the end ----------------
    late = forget_service.due(None)
    if late:
        forget_service.serve(server, engine, late, rounds)
    checkpoints.write(rounds)  # the last one: a crash from here on redoes only the final evaluation
    final = evaluate(server, evaluator, splits, e.final_samples, "final", truth, reference_labels)
    recorder.log({"kind": "evaluation", "round": rounds, "final": True, **final, **headline(final.get("mixture"))})
    if truth is not None:
        recorder.save_mixture(final["mixture"])
    recorder.save_grid(*grid_samples(server, e.grid_per_class), "samples_final.png")
    forget_service.collect(wait=True)  # every proof still running: the summary holds every certificate
    summary = recorder.finish(
        final=final,
        unlearning=forget_service.results,
        engine=engine,
        wall_seconds=time.perf_counter() - started,
        train_seconds=checkpoints.train_seconds,
        rounds=rounds,
        generator_steps=server.round,
    )
    engine.close()
    return summary


class Checkpointer:
    """When to write the run's checkpoint, what goes in, and how a resumed run takes it back (`fedgan.checkpoint`)."""

    TAG = "checkpoint"

    def __init__(self, scenario: Scenario, server: GeneratorServer, engine: SiteEngine, recorder: RunRecorder,
                 forget_service: ForgetService) -> None:
        self.scenario, self.server, self.engine = scenario, server, engine
        self.recorder, self.forget_service = recorder, forget_service
        self.train_seconds = 0.0
        self._ledger_size = forget_service.ledger.size()
        self._written = 0  # how many checkpoints this process wrote (site tags alternate: the last one survives)

    def after_round(self, round_index: int) -> None:
        every = self.scenario.training.checkpoint_every
        ledger_changed = self.forget_service.ledger.size() != self._ledger_size  # a stat, not a parse, per round
        if ledger_changed or (every and round_index % every == 0):
            self.write(round_index)

    def write(self, round_index: int) -> None:
        """A checkpoint of the run after training round `round_index` (skipped, and logged, when a site cannot
        keep its snapshot: the previous checkpoint stays the one to resume from)."""
        tag = f"{self.TAG}-{self._written % 2}"
        try:
            self.engine.snapshot(tag)
        except RuntimeError as error:
            self.recorder.log({"kind": "checkpoint", "round": round_index, "skipped": str(error)[:300]})
            return
        at_sites = getattr(self.engine, "keeps_state_at_sites", False)
        sites = None if at_sites else self.engine.export_snapshot(tag)
        if not at_sites:
            self.engine.discard(tag)
        self._ledger_size = self.forget_service.ledger.size()
        state = RunState(round_index, server_snapshot(self.server), None if sites is None else asdict(sites),
                         tag if at_sites else None, (self.engine.traffic.bytes_down, self.engine.traffic.bytes_up),
                         self.recorder.line_count(), self.forget_service.ledger.line_count(), self.train_seconds,
                         self.forget_service.checkpoint_state())
        legacy = {"server": self.server.state_dict(), "sites": self.engine.site_states()}
        write_checkpoint(self.recorder.out, state, self.scenario.to_dict(), legacy)
        if at_sites:
            self.engine.discard(f"{self.TAG}-{(self._written + 1) % 2}")  # the previous checkpoint's snapshot
        self._written += 1

    def restart(self) -> None:
        """A run killed before its first checkpoint: everything it recorded is rolled back, round 1 again."""
        self.recorder.roll_back(0)
        self.forget_service.resume({}, 0)
        self._ledger_size = self.forget_service.ledger.size()

    def restore(self, state: RunState) -> int:
        """Take the run back to `state`; returns the round it was taken after."""
        if state.sites_tag is not None:
            self.engine.restore(state.sites_tag)
            self._written = int(state.sites_tag.rsplit("-", 1)[1]) + 1  # the next write keeps this one
        else:
            self.engine.load_snapshot(state.site_snapshot())
        load_server_snapshot(self.server, state.server)
        self.engine.traffic.bytes_down, self.engine.traffic.bytes_up = state.traffic
        self.train_seconds = state.train_seconds
        self.recorder.roll_back(state.metrics_lines)
        self.forget_service.resume(state.service, state.ledger_lines)
        self._ledger_size = self.forget_service.ledger.size()
        return state.round_index
