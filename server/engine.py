"""`FlowerEngine`: the `SiteEngine` interface over Flower messages (simulation or deployment engine).

Translation only: the round loop is `fedgan.federation`, the site's work is `fedgan.site` inside the ClientApp.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedgan import protocol as P
from fedgan.engine import SiteIds, SiteInfo, StageOrder, Traffic
from fedgan.scenario import Scenario
from fedgan.site import SiteReply

NODE_WAIT_SECONDS = 120.0


def record_bytes(records: Iterable[Any]) -> int:
    """Bytes of the array payloads in a RecordDict's ArrayRecords (the bulk of every message)."""
    total = 0
    for record in records:
        if isinstance(record, ArrayRecord):
            total += sum(len(array.data) for array in record.values())
    return total


class FlowerEngine:
    """Reaches the sites through a Flower `Grid`; one node per site, matched by the node's partition-id."""

    name = "flower"

    def __init__(self, grid: Grid, scenario: Scenario, wire_log: list[dict[str, Any]] | None = None) -> None:
        self.grid = grid
        self.scenario = scenario
        self.node_of_site: dict[int, int] = {}
        self.traffic = Traffic()
        self.wire_log = wire_log  # when a list is given, every message's keys/shapes are appended (tests)

    # ---- joining ----
    def _wait_for_nodes(self) -> list[int]:
        """Poll until the federation has as many nodes as the scenario has sites (they register asynchronously)."""
        wanted = self.scenario.sites.count
        deadline = time.monotonic() + NODE_WAIT_SECONDS
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) >= wanted:
                return nodes
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"sites.count: the scenario needs {wanted} sites but only {len(nodes)} Flower nodes joined within "
                    f"{NODE_WAIT_SECONDS:.0f} s; start the federation with num-supernodes={wanted}"
                )
            time.sleep(0.2)

    def open(self, forgotten: SiteIds | None = None) -> list[SiteInfo]:
        nodes = self._wait_for_nodes()
        config = {P.SCENARIO_JSON: self.scenario.to_json()}
        if forgotten:
            config[P.FORGOTTEN_JSON] = json.dumps({str(s): np.asarray(ids).tolist() for s, ids in forgotten.items()})
        self.node_of_site = {}
        messages = [
            Message(RecordDict({P.CONFIG: ConfigRecord(dict(config))}),
                    dst_node_id=node, message_type=P.SETUP, group_id="setup")
            for node in nodes
        ]
        infos: dict[int, SiteInfo] = {}
        for reply in self.grid.send_and_receive(messages, timeout=self.scenario.engine.round_timeout):
            if reply.has_error():
                raise RuntimeError(f"a site failed to start: {reply.error.reason}")
            site_id = int(reply.content[P.CONFIG][P.SITE_ID])
            if site_id in infos or not 0 <= site_id < self.scenario.sites.count:
                continue  # an extra node beyond the scenario's sites, or a duplicate partition id: unused
            counts = np.array(reply.content[P.ARRAYS][P.CLASS_COUNTS].numpy())
            infos[site_id] = SiteInfo(site_id, counts)
            self.node_of_site[site_id] = reply.metadata.src_node_id
        missing = sorted(set(range(self.scenario.sites.count)) - set(infos))
        if missing:
            raise RuntimeError(f"no Flower node has partition-id {missing}: give each node one partition id")
        return [infos[j] for j in sorted(infos)]

    # ---- one round ----
    def train_round(self, round_index: int, fake: torch.Tensor, labels: torch.Tensor | None) -> dict[int, SiteReply]:
        arrays = {P.FAKE: Array(fake.numpy())}
        if labels is not None:
            arrays[P.LABELS] = Array(labels.numpy())
        site_of_node = {node: site for site, node in self.node_of_site.items()}
        messages = []
        for site, node in sorted(self.node_of_site.items()):
            content = RecordDict({P.ARRAYS: ArrayRecord(dict(arrays)), P.CONFIG: ConfigRecord({P.ROUND: round_index})})
            messages.append(Message(content, dst_node_id=node, message_type=P.TRAIN_ROUND,
                                    group_id=str(round_index)))
            self.traffic.bytes_down += record_bytes(content.values())
            self._log("down", round_index, site, content)
        replies: dict[int, SiteReply] = {}
        for reply in self.grid.send_and_receive(messages, timeout=self.scenario.engine.round_timeout):
            site = site_of_node[reply.metadata.src_node_id]
            if reply.has_error():  # the site is dropped this round; the aggregation renormalises the weights
                continue
            self.traffic.bytes_up += record_bytes(reply.content.values())
            self._log("up", round_index, site, reply.content)
            replies[site] = self._decode(reply.content)
        return replies

    @staticmethod
    def _decode(content: RecordDict) -> SiteReply:
        arrays, metrics = content[P.ARRAYS], content[P.METRICS]
        return SiteReply(
            logits=torch.from_numpy(np.array(arrays[P.LOGITS].numpy())),
            input_grads=torch.from_numpy(np.array(arrays[P.INPUT_GRADS].numpy())),
            d_loss=float(metrics[P.D_LOSS]),
            d_real=float(metrics[P.D_REAL]),
            d_fake=float(metrics[P.D_FAKE]),
        )

    def _log(self, direction: str, round_index: int, site: int, content: RecordDict) -> None:
        if self.wire_log is None:
            return
        entry: dict[str, Any] = {"direction": direction, "round": round_index, "site": site, "records": {},
                                 "image_row_hashes": []}
        for name, record in content.items():
            if isinstance(record, ArrayRecord):
                entry["records"][name] = {k: list(v.shape) for k, v in record.items()}
                for array in record.values():
                    if len(array.shape) == 4:  # image-shaped payloads: fingerprint every row for the privacy test
                        rows = np.array(array.numpy())
                        entry["image_row_hashes"] += [hashlib.sha256(row.tobytes()).hexdigest() for row in rows]
            else:
                entry["records"][name] = sorted(record.keys())
        self.wire_log.append(entry)

    # ---- forget requests ----
    def _command(self, message_type: str, contents: dict[int, RecordDict]) -> dict[int, RecordDict]:
        """Send one message per named site and return the replies; a failed site raises (bookkeeping must succeed)."""
        site_of_node = {node: site for site, node in self.node_of_site.items()}
        messages = []
        for site, content in sorted(contents.items()):
            messages.append(Message(content, dst_node_id=self.node_of_site[site], message_type=message_type,
                                    group_id=message_type))
            self.traffic.bytes_down += record_bytes(content.values())
        replies: dict[int, RecordDict] = {}
        for reply in self.grid.send_and_receive(messages, timeout=self.scenario.engine.round_timeout):
            site = site_of_node[reply.metadata.src_node_id]
            if reply.has_error():
                raise RuntimeError(f"site {site} failed {message_type}: {reply.error.reason}")
            self.traffic.bytes_up += record_bytes(reply.content.values())
            replies[site] = reply.content
        missing = sorted(set(contents) - set(replies))
        if missing:
            raise RuntimeError(f"sites {missing} did not answer {message_type} within engine.round-timeout")
        return replies

    def _all_sites(self, message_type: str, config: dict[str, Any]) -> None:
        self._command(message_type, {s: RecordDict({P.CONFIG: ConfigRecord(dict(config))}) for s in self.node_of_site})

    def snapshot(self, tag: str) -> None:
        self._all_sites(P.SNAPSHOT, {P.TAG: tag})

    def restore(self, tag: str) -> None:
        self._all_sites(P.RESTORE, {P.TAG: tag})

    def discard(self, tag: str) -> None:
        self._all_sites(P.DISCARD, {P.TAG: tag})

    def _ids_command(self, message_type: str, orders: SiteIds) -> None:
        self._command(message_type, {
            site: RecordDict({P.ARRAYS: ArrayRecord({P.IDS: Array(np.asarray(ids, dtype=np.int64))})})
            for site, ids in orders.items()
        })

    def exclude(self, orders: SiteIds) -> None:
        self._ids_command(P.EXCLUDE, orders)

    def forget(self, orders: SiteIds) -> None:
        self._ids_command(P.FORGET, orders)

    def unlearn(self, orders: dict[int, StageOrder]) -> dict[int, dict[str, float]]:
        contents = {}
        for site, order in orders.items():
            arrays = {P.FAKE: Array(order.fake.numpy()), P.FORGET_IDS: Array(np.asarray(order.forget_ids, np.int64))}
            if order.fake_labels is not None:
                arrays[P.LABELS] = Array(order.fake_labels.numpy())
            contents[site] = RecordDict({
                P.ARRAYS: ArrayRecord(arrays),
                P.CONFIG: ConfigRecord({P.STAGE_JSON: json.dumps(dataclasses.asdict(order.options))}),
            })
        # One send for all requesting sites: their stages run concurrently on the simulation's workers.
        replies = self._command(P.UNLEARN, contents)
        return {site: {k: float(v) for k, v in content[P.METRICS].items()} for site, content in replies.items()}

    def query_logits(self, site_id: int, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        arrays = {P.IMAGES: Array(images.numpy())}
        if labels is not None:
            arrays[P.LABELS] = Array(labels.numpy())
        reply = self._command(P.QUERY_LOGITS, {site_id: RecordDict({P.ARRAYS: ArrayRecord(arrays)})})[site_id]
        return torch.from_numpy(np.array(reply[P.ARRAYS][P.LOGITS].numpy()))

    def site_states(self) -> None:
        """Site state lives in each site's Flower Context; the server cannot (and must not) read it."""
        return None

    def close(self) -> None:
        self.node_of_site = {}
