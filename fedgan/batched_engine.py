"""`BatchedEngine`: the sites as site groups in this process, each group one stacked computation per round.

The same `SiteEngine` interface as `InProcessEngine` (`fedgan.engine`) and the Flower engine, and the same numbers
as `InProcessEngine` up to float rounding (tests/test_site_group.py). Groups hold `sites.per-node` sites each when
that is above 1 (the grouping a Flower run with site groups would use), otherwise one group holds every site.
Batching pays where small kernels leave the hardware idle (a GPU); on a 2-core CPU the plain loop is faster
(`bench/scale.py` measures both).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fedgan.engine import (
    SiteIds,
    SiteInfo,
    SitesSnapshot,
    StageOrder,
    Traffic,
    build_site,
    payload_bytes,
    resolve_device,
    site_threads,
)
from fedgan.site import SiteReply
from fedgan.site_group import SiteGroup

if TYPE_CHECKING:
    from fedgan.scenario import Scenario


def group_sizes(num_sites: int, per_node: int) -> list[int]:
    """Sizes of consecutive site groups: `per_node` each (the last one may be smaller), or one group of all."""
    size = per_node if per_node > 1 else num_sites
    return [min(size, num_sites - start) for start in range(0, num_sites, size)]


class BatchedEngine:
    """All sites in site groups in this process; a round is one batched call per group."""

    name = "batched"

    def __init__(self, scenario: Scenario, device: torch.device | str | None = None,
                 group_size: int | None = None) -> None:
        self.scenario = scenario
        # Sites per group: `sites.per-node` (1: one group of all), or as given (a Flower federation's nodes).
        self.sizes = ([min(group_size, scenario.sites.count - start)
                       for start in range(0, scenario.sites.count, group_size)] if group_size
                      else group_sizes(scenario.sites.count, scenario.sites.per_node))
        self.device = resolve_device(scenario.engine.device) if device is None else torch.device(device)
        self.groups: list[SiteGroup] = []
        self._where: dict[int, tuple[SiteGroup, int]] = {}
        self.traffic = Traffic()
        self._snapshots: dict[str, list[dict[str, Any]]] = {}  # kept across `open`: a retrain must not erase them

    def open(self, forgotten: SiteIds | None = None) -> list[SiteInfo]:
        sites = [build_site(self.scenario, j, self.device) for j in range(self.scenario.sites.count)]
        for site_id, ids in (forgotten or {}).items():
            sites[site_id].shard.forget(np.asarray(ids, dtype=np.int64))
        self.groups, start = [], 0
        for size in self.sizes:
            self.groups.append(SiteGroup(sites[start:start + size], self.scenario.engine.batching))
            start += size
        self._where = {site_id: (group, k) for group in self.groups for k, site_id in enumerate(group.site_ids)}
        return [SiteInfo(site.site_id, site.shard.class_counts()) for site in sites]

    def _site(self, site_id: int):
        group, index = self._where[site_id]
        return group, index, group.sites[index]

    def snapshot(self, tag: str) -> None:
        self._snapshots[tag] = [group.group_state() for group in self.groups]

    def restore(self, tag: str) -> None:
        for group, state in zip(self.groups, self._snapshots[tag]):
            group.load_group_state(state)

    def discard(self, tag: str) -> None:
        self._snapshots.pop(tag, None)

    def export_snapshot(self, tag: str) -> SitesSnapshot:
        return SitesSnapshot(groups=[SiteGroup.serialise_state(state) for state in self._snapshots[tag]],
                             group_size=self.sizes[0])

    def load_snapshot(self, snapshot: SitesSnapshot) -> None:
        """Every group takes the state of an exported snapshot (a proof worker starting from the federation's)."""
        for group, data in zip(self.groups, snapshot.groups, strict=True):
            group.load_group_state_bytes(data)

    def exclude(self, orders: SiteIds) -> None:
        for site_id, ids in orders.items():
            self._site(site_id)[2].shard.exclude(ids)

    def forget(self, orders: SiteIds) -> None:
        for site_id, ids in orders.items():
            self._site(site_id)[2].shard.forget(ids)

    def unlearn(self, orders: dict[int, StageOrder]) -> dict[int, dict[str, float]]:
        """Each group's requesting sites in one call (`SiteGroup.unlearn_stages`: stacked under ``vmap``)."""
        by_group: dict[int, tuple[SiteGroup, dict[int, StageOrder]]] = {}
        for site_id, order in orders.items():
            group, index, _ = self._site(site_id)
            by_group.setdefault(id(group), (group, {}))[1][index] = order
        stats = {}
        with site_threads(self.scenario):
            for group, mine in by_group.values():
                first = next(iter(mine.values()))  # one stage: the same batch for every requesting site
                done = group.unlearn_stages(first.fake, first.fake_labels,
                                            {k: (o.forget_ids, o.options) for k, o in mine.items()})
                stats.update({group.site_ids[k]: v for k, v in done.items()})
        for order in orders.values():
            self.traffic.bytes_down += payload_bytes(order.fake, order.fake_labels)
        return dict(sorted(stats.items()))

    def query_logits(self, site_id: int, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        group, index, _ = self._site(site_id)
        with site_threads(self.scenario):
            return group.discriminator_logits(index, images, labels)

    def train_round(self, round_index: int, fake: torch.Tensor, labels: torch.Tensor | None,
                    weights: np.ndarray | None = None) -> dict[int, SiteReply]:
        replies: dict[int, SiteReply] = {}
        with site_threads(self.scenario):
            for group in self.groups:
                replies.update(group.train_round(fake, labels, round_index))
        for reply in replies.values():  # counted as the per-site engines count: one batch down, one answer up
            self.traffic.bytes_down += payload_bytes(fake, labels)
            self.traffic.bytes_up += payload_bytes(reply.logits, reply.input_grads)
        return dict(sorted(replies.items()))

    def site_states(self) -> dict[int, dict[str, Any]]:
        return {site_id: group.state_dict_of(index) for site_id, (group, index) in sorted(self._where.items())}

    def close(self) -> None:
        self.groups, self._where = [], {}
