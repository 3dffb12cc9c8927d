"""The engine interface: how the server's round loop reaches the sites, whatever carries the messages.

The round loop (`fedgan.federation`) only ever calls a `SiteEngine`. Three implementations serve it:
- `InProcessEngine` (here): the sites are `Site` objects in this process; for tests, for measuring Flower's
  overhead, and for quick CPU runs;
- `fedgan.batched_engine.BatchedEngine`: the sites as site groups (`fedgan.site_group`), stacked discriminators;
- `server.engine.FlowerEngine`: the same site code inside a Flower ClientApp (one site group per node), reached
  with Flower messages over the Ray simulation engine (or the deployment engine).
Every engine must give the same numbers for the same scenario and seed (tests compare them with in-process).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from fedgan.datasets import DatasetSplits, ImageDataset, load_dataset, select_classes
from fedgan.partition import partition_dataset
from fedgan.site import Site, SiteOptions, SiteReply
from fedgan.site_unlearning import UnlearnStageOptions

if TYPE_CHECKING:  # annotations only: the scenario schema validates names against registries that import this module
    from fedgan.scenario import Scenario


@dataclass(frozen=True)
class SiteInfo:
    """What a site tells the server when it joins: its id and its item count per class (no data)."""

    site_id: int
    class_counts: np.ndarray  # (num_classes,) int64


@dataclass
class Traffic:
    """Bytes carried between server and sites (array payloads, as serialised)."""

    bytes_down: int = 0
    bytes_up: int = 0


@dataclass(frozen=True)
class StageOrder:
    """What the server asks of one site for one unlearning stage (see `Site.unlearn_stage`)."""

    forget_ids: np.ndarray
    fake: torch.Tensor  # a synthetic batch from the current G, for the stage's BCE(D(x̂), 0) term
    fake_labels: torch.Tensor | None
    options: UnlearnStageOptions


SiteIds = dict[int, np.ndarray]


@dataclass(frozen=True)
class SitesSnapshot:
    """Every site's state kept under one tag, as bytes another process's engine can load (a proof worker):
    one `Site.state_bytes` per site (`sites`, from `InProcessEngine`), or one `SiteGroup` state per group of
    `sites.per-node` consecutive sites (`groups`, from the batched engine and from Flower nodes' state files)."""

    sites: dict[int, bytes] | None = None
    groups: list[bytes] | None = None
    group_size: int = 0  # sites per group (the last group may hold fewer)


class SiteEngine(Protocol):
    """What the server loop needs from whatever runs the sites."""

    name: str
    traffic: Traffic

    def open(self, forgotten: SiteIds | None = None) -> list[SiteInfo]:
        """Start every site fresh (round 0), minus `forgotten` items; return their infos ordered by site id."""
        ...

    def snapshot(self, tag: str) -> None:
        """Every site keeps a copy of its current state under `tag` (kept at the site)."""
        ...

    def restore(self, tag: str) -> None:
        """Every site returns to the state it kept under `tag`."""
        ...

    def discard(self, tag: str) -> None:
        """Every site drops the state it kept under `tag`."""
        ...

    def export_snapshot(self, tag: str) -> SitesSnapshot | None:
        """The states every site keeps under `tag`, for a proof worker; None where the engine cannot reach them."""
        ...

    def exclude(self, orders: SiteIds) -> None:
        """Sites keep these items out of their real stream from now on (substitution by retained items)."""
        ...

    def unlearn(self, orders: dict[int, StageOrder]) -> dict[int, dict[str, float]]:
        """One unlearning stage at each named site (concurrently where the engine can); their statistics."""
        ...

    def forget(self, orders: SiteIds) -> None:
        """Sites delete these items from their shards for good."""
        ...

    def query_logits(self, site_id: int, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """The site's D logits on images the simulator's attacker sends (membership inference, a measurement)."""
        ...

    def train_round(self, round_index: int, fake: torch.Tensor, labels: torch.Tensor | None,
                    weights: np.ndarray | None = None) -> dict[int, SiteReply]:
        """Every site trains D on real vs this synthetic batch and answers with logits and input gradients;
        the replies of those that answered, by site id. `weights`: the server's class counts (K, C), its
        aggregation weights this round, for an engine whose nodes pre-aggregate (a node's answer is then a
        `GroupReply` under the key of its first site); other engines ignore it."""
        ...

    def site_states(self) -> dict[int, dict[str, Any]] | None:
        """Every site's state for a checkpoint, where the engine can reach it (None where it cannot)."""
        ...

    def close(self) -> None:
        """Release workers and processes."""
        ...


def site_thread_count(scenario: Scenario) -> int:
    """The torch threads a site computes with, in every engine: one per CPU a Flower node is given
    (`engine.num-cpus`), as Ray gives its actors. Thread count changes float summation order, so engines that
    used different counts would drift apart over many rounds; with this they agree number for number."""
    return max(1, int(scenario.engine.num_cpus))


@contextlib.contextmanager
def site_threads(scenario: Scenario) -> Iterator[None]:
    """Inside the block torch uses `site_thread_count` threads (the process's own count is restored after)."""
    saved, wanted = torch.get_num_threads(), site_thread_count(scenario)
    if wanted != saved:
        torch.set_num_threads(wanted)
    try:
        yield
    finally:
        if wanted != saved:
            torch.set_num_threads(saved)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when this process sees a GPU, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def site_options(scenario: Scenario) -> SiteOptions:
    """The [training] settings a site's local steps use."""
    t = scenario.training
    return SiteOptions(t.batch_size, t.d_steps, t.lr_discriminator, (t.beta1, t.beta2), t.r1_gamma,
                       t.real_sampling, t.r1_target, t.lr_schedule, t.rounds, scenario.engine.precision)


def load_federation_data(scenario: Scenario) -> DatasetSplits:
    """The scenario's dataset, `data.train-limit` applied (cached per process: a worker's sites share one copy)."""
    return _load_cached(json.dumps(dataclasses.asdict(scenario.data), sort_keys=True))


def load_full_data(scenario: Scenario) -> DatasetSplits:
    """The whole dataset, without `data.train-limit` (what the evaluator is trained on)."""
    return _load_cached(json.dumps(dataclasses.asdict(dataclasses.replace(scenario.data, train_limit=None)),
                                   sort_keys=True))


@functools.lru_cache(maxsize=4)
def _load_cached(data_json: str) -> DatasetSplits:
    data = json.loads(data_json)
    splits = load_dataset(data["name"], data["root"], **data["options"])
    if data.get("classes"):
        splits = select_classes(splits, data["classes"])
    limit = data.get("train_limit")
    if limit is not None and limit < len(splits.train):
        # A seeded subset (fixed seed: the same items for every scenario seed), ids kept.
        keep = np.sort(np.random.default_rng(0).choice(len(splits.train), size=limit, replace=False))
        splits = dataclasses.replace(splits, train=splits.train.subset(torch.from_numpy(keep)))
    return splits


def site_positions(scenario: Scenario) -> list[np.ndarray]:
    """Per site, the positions in the training split it holds (deterministic from `partition.seed`, by default the
    scenario's seed)."""
    key = {
        "data": dataclasses.asdict(scenario.data),
        "partition": dataclasses.asdict(scenario.partition),
        "sites": scenario.sites.count,
        "seed": scenario.seed if scenario.partition.seed is None else scenario.partition.seed,
    }
    return _partition_cached(json.dumps(key, sort_keys=True))


@functools.lru_cache(maxsize=4)
def _partition_cached(key_json: str) -> list[np.ndarray]:
    key = json.loads(key_json)
    train = _load_cached(json.dumps(key["data"], sort_keys=True)).train
    partition = key["partition"]
    return partition_dataset(train, partition["scheme"], key["sites"], key["seed"], **partition["options"])


def site_shard(scenario: Scenario, site_id: int) -> ImageDataset:
    """The shard of site `site_id`: the items the partitioner gave it, with their global ids."""
    positions = site_positions(scenario)[site_id]
    return load_federation_data(scenario).train.subset(torch.from_numpy(np.asarray(positions, dtype=np.int64)))


def build_site(scenario: Scenario, site_id: int, device: torch.device | str = "cpu") -> Site:
    """A freshly initialised site exactly as every engine builds it."""
    spec = scenario.model
    return Site(site_id, site_shard(scenario, site_id), spec, site_options(scenario), scenario.seed, device)


def payload_bytes(*tensors: torch.Tensor | None) -> int:
    """Bytes of the raw tensor payloads (what a message carries, excluding framing)."""
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


class InProcessEngine:
    """All sites as `Site` objects in this process, called one after another."""

    name = "inprocess"

    def __init__(self, scenario: Scenario, device: torch.device | str | None = None) -> None:
        self.scenario = scenario
        self.device = resolve_device(scenario.engine.device) if device is None else torch.device(device)
        self.sites: list[Site] = []
        self.traffic = Traffic()
        self._snapshots: dict[str, dict[int, bytes]] = {}  # kept across `open`: a retrain must not erase them
        self._threads: ThreadPoolExecutor | None = None

    def open(self, forgotten: SiteIds | None = None) -> list[SiteInfo]:
        self.sites = [build_site(self.scenario, j, self.device) for j in range(self.scenario.sites.count)]
        for site_id, ids in (forgotten or {}).items():
            self.sites[site_id].shard.forget(np.asarray(ids, dtype=np.int64))
        return [SiteInfo(site.site_id, site.shard.class_counts()) for site in self.sites]

    def snapshot(self, tag: str) -> None:
        self._snapshots[tag] = {site.site_id: site.state_bytes() for site in self.sites}

    def restore(self, tag: str) -> None:
        for site in self.sites:
            site.load_state_bytes(self._snapshots[tag][site.site_id])

    def discard(self, tag: str) -> None:
        self._snapshots.pop(tag, None)

    def export_snapshot(self, tag: str) -> SitesSnapshot:
        return SitesSnapshot(sites=dict(self._snapshots[tag]))

    def load_snapshot(self, snapshot: SitesSnapshot) -> None:
        """Every site takes the state of an exported snapshot (a proof worker starting from the federation's)."""
        for site in self.sites:
            site.load_state_bytes(snapshot.sites[site.site_id])

    def exclude(self, orders: SiteIds) -> None:
        for site_id, ids in orders.items():
            self.sites[site_id].shard.exclude(ids)

    def unlearn(self, orders: dict[int, StageOrder]) -> dict[int, dict[str, float]]:
        stats = {}
        with site_threads(self.scenario):
            for site_id, order in orders.items():
                stats[site_id] = self.sites[site_id].unlearn_stage(order.fake, order.fake_labels, order.forget_ids,
                                                                   order.options)
                self.traffic.bytes_down += payload_bytes(order.fake, order.fake_labels)
        return stats

    def forget(self, orders: SiteIds) -> None:
        for site_id, ids in orders.items():
            self.sites[site_id].shard.forget(ids)

    def query_logits(self, site_id: int, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        with site_threads(self.scenario):
            return self.sites[site_id].discriminator_logits(images, labels)

    def train_round(self, round_index: int, fake: torch.Tensor, labels: torch.Tensor | None,
                    weights: np.ndarray | None = None) -> dict[int, SiteReply]:
        # Sites train side by side on Python threads (torch releases the GIL), each with `site_thread_count`
        # intra-op threads: the cores stay busy and every site computes exactly as it would in a Flower actor.
        with site_threads(self.scenario):
            answers = list(self._pool().map(lambda site: site.train_round(fake, labels, round_index), self.sites))
        replies: dict[int, SiteReply] = {}
        for site, reply in zip(self.sites, answers):
            replies[site.site_id] = reply
            self.traffic.bytes_down += payload_bytes(fake, labels)
            self.traffic.bytes_up += payload_bytes(reply.logits, reply.input_grads)
        return replies

    def _pool(self) -> ThreadPoolExecutor:
        if self._threads is None:
            workers = max(1, (os.cpu_count() or 1) // site_thread_count(self.scenario))
            self._threads = ThreadPoolExecutor(workers, thread_name_prefix="fedgan-site")
        return self._threads

    def site_states(self) -> dict[int, dict[str, Any]]:
        return {site.site_id: site.state_dict() for site in self.sites}

    def close(self) -> None:
        self.sites = []
        if self._threads is not None:
            self._threads.shutdown()
            self._threads = None
