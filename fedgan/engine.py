"""The engine interface: how the server's round loop reaches the sites, whatever carries the messages.

The round loop (`fedgan.federation`) only ever calls a `SiteEngine`. Three implementations serve it:
- `InProcessEngine` (here): the sites are `Site` objects in this process; for tests, for measuring Flower's
  overhead, and for quick CPU runs;
- `server.engine.FlowerEngine`: the same `Site` code inside a Flower ClientApp, reached with Flower messages
  over the Ray simulation engine (or the deployment engine);
- a batched engine (later): many sites' discriminators stacked on one GPU.
Every engine must give the same numbers for the same scenario and seed (a test checks in-process vs Flower).
"""
from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from fedgan.datasets import DatasetSplits, ImageDataset, load_dataset
from fedgan.partition import partition_dataset
from fedgan.scenario import Scenario
from fedgan.site import Site, SiteOptions, SiteReply


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


class SiteEngine(Protocol):
    """What the server loop needs from whatever runs the sites."""

    name: str
    traffic: Traffic

    def open(self) -> list[SiteInfo]:
        """Start (or reach) every site; return their infos ordered by site id."""
        ...

    def score(self, round_index: int, fake: torch.Tensor, labels: torch.Tensor | None) -> dict[int, SiteReply]:
        """Send the synthetic batch to every site; return the replies of those that answered, by site id."""
        ...

    def site_states(self) -> dict[int, dict[str, Any]] | None:
        """Every site's state for a checkpoint, where the engine can reach it (None where it cannot)."""
        ...

    def close(self) -> None:
        """Release workers and processes."""
        ...


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when this process sees a GPU, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def site_options(scenario: Scenario) -> SiteOptions:
    """The [training] settings a site's local steps use."""
    t = scenario.training
    return SiteOptions(t.batch_size, t.d_steps, t.lr_discriminator, (t.beta1, t.beta2), t.r1_gamma)


def load_federation_data(scenario: Scenario) -> DatasetSplits:
    """The scenario's dataset (cached per process: the sites of one worker share one copy)."""
    return _load_cached(json.dumps(dataclasses.asdict(scenario.data), sort_keys=True))


@functools.lru_cache(maxsize=4)
def _load_cached(data_json: str) -> DatasetSplits:
    data = json.loads(data_json)
    return load_dataset(data["name"], data["root"], **data["options"])


def site_positions(scenario: Scenario) -> list[np.ndarray]:
    """Per site, the positions in the training split it holds (deterministic from the scenario seed)."""
    key = {
        "data": dataclasses.asdict(scenario.data),
        "partition": dataclasses.asdict(scenario.partition),
        "sites": scenario.sites.count,
        "seed": scenario.seed,
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

    def open(self) -> list[SiteInfo]:
        self.sites = [build_site(self.scenario, j, self.device) for j in range(self.scenario.sites.count)]
        return [SiteInfo(site.site_id, site.class_counts()) for site in self.sites]

    def score(self, round_index: int, fake: torch.Tensor, labels: torch.Tensor | None) -> dict[int, SiteReply]:
        replies: dict[int, SiteReply] = {}
        for site in self.sites:
            replies[site.site_id] = reply = site.score(fake, labels)
            self.traffic.bytes_down += payload_bytes(fake, labels)
            self.traffic.bytes_up += payload_bytes(reply.logits, reply.input_grads)
        return replies

    def site_states(self) -> dict[int, dict[str, Any]]:
        return {site.site_id: site.state_dict() for site in self.sites}

    def close(self) -> None:
        self.sites = []
