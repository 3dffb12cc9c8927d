"""`FlowerEngine`: the `SiteEngine` interface over Flower messages (simulation or deployment engine).

Translation only: the round loop is `fedgan.federation`, the site's work is `fedgan.site` inside the ClientApp.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedgan import protocol as P
from fedgan.engine import SiteIds, SiteInfo, SitesSnapshot, StageOrder, Traffic
from fedgan.node_state import NodeStateStore, node_folder
from fedgan.scenario import Scenario
from fedgan.site import GroupReply, SiteReply
from server.simulation_latency import expect_replies, notify_pushed, wait_for_replies

NODE_WAIT_SECONDS = 120.0
NODE_STATE_DIR = "node-state"  # under the run directory: each node's state files (fedgan.node_state)


def record_bytes(records: Iterable[Any]) -> int:
    """Bytes of the array payloads in a RecordDict's ArrayRecords (the bulk of every message)."""
    total = 0
    for record in records:
        if isinstance(record, ArrayRecord):
            total += sum(len(array.data) for array in record.values())
    return total


class FlowerEngine:
    """Reaches the sites through a Flower `Grid`: one node per `sites.per-node` sites, matched by partition-id."""

    name = "flower"
    keeps_state_at_sites = True  # checkpoints name a snapshot each node keeps; the server never holds site weights

    def __init__(self, grid: Grid, scenario: Scenario, wire_log: list[dict[str, Any]] | None = None,
                 state_dir: str | Path | None = None) -> None:
        self.grid = grid
        self.scenario = scenario
        # Where nodes keep their state unless their node_config names a folder (a SuperNode on another machine).
        self.state_dir = Path(state_dir).resolve() if state_dir is not None else None
        self.node_of_site: dict[int, int] = {}
        self.sites_of_node: dict[int, list[int]] = {}
        self.traffic = Traffic()
        self.dropped: dict[int, str] = {}  # sites that gave no reply in the last round, with the reason
        self.wire_log = wire_log  # when a list is given, every message's keys/shapes are appended (tests)

    # ---- one exchange: push, wake the dispatcher, pull ----
    def _exchange(self, messages: list[Message], timeout: float | None = None) -> list[Message]:
        """Push `messages`, then pull until every reply is in or `engine.round-timeout` has passed: after each reply
        is stored under `run_simulation`, else every `engine.poll-interval` (replaces `Grid.send_and_receive`, whose
        pulls sleep 0.1 s in simulation and 3 s in deployment; `server/simulation_latency.py`)."""
        waiting = set(self.grid.push_messages(messages))
        notify_pushed()
        deadline = time.monotonic() + (self.scenario.engine.round_timeout if timeout is None else timeout)
        replies: list[Message] = []
        while waiting and time.monotonic() < deadline:
            expect_replies()  # before the pull: a reply stored during it ends the wait below at once
            pulled = list(self.grid.pull_messages(waiting))
            replies += pulled
            waiting -= {reply.metadata.reply_to_message_id for reply in pulled}
            if waiting:
                wait_for_replies(self.scenario.engine.poll_interval, deadline - time.monotonic())
        return replies

    # ---- joining ----
    def _wait_for_nodes(self) -> list[int]:
        """Poll until the federation has as many nodes as the scenario needs (they register asynchronously)."""
        wanted = P.num_nodes(self.scenario.sites.per_node, self.scenario.sites.count)
        deadline = time.monotonic() + NODE_WAIT_SECONDS
        while True:
            nodes = sorted(self.grid.get_node_ids())
            if len(nodes) >= wanted:
                return nodes
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"sites.count: the scenario needs {wanted} Flower nodes ({self.scenario.sites.count} sites, "
                    f"{self.scenario.sites.per_node} per node) but only {len(nodes)} joined within "
                    f"{NODE_WAIT_SECONDS:.0f} s; start the federation with num-supernodes={wanted}"
                )
            time.sleep(0.2)

    def open(self, forgotten: SiteIds | None = None) -> list[SiteInfo]:
        if not self.node_of_site:  # the first open: every node learns which sites its partition id hosts
            messages = [self._setup_message(node, None) for node in self._wait_for_nodes()]
        else:  # again (a retrain): each known node gets only its own sites' forgotten ids
            messages = [self._setup_message(node, forgotten) for node in sorted(self.sites_of_node)]
            forgotten = None
        infos: dict[int, SiteInfo] = {}
        node_of_site: dict[int, int] = {}
        # Joining waits longer than a round: a node's first message imports torch and builds its shards.
        for reply in self._exchange(messages, max(self.scenario.engine.round_timeout, NODE_WAIT_SECONDS)):
            if reply.has_error():
                raise RuntimeError(f"a site failed to start: {reply.error.reason}")
            arrays = reply.content[P.ARRAYS]
            site_ids = np.array(arrays[P.SITE_IDS].numpy()).tolist()
            counts = np.array(arrays[P.CLASS_COUNTS].numpy())
            self._log("up", None, site_ids, reply.content, P.SETUP)
            if any(site in infos or not 0 <= site < self.scenario.sites.count for site in site_ids):
                continue  # an extra node beyond the scenario's sites, or a duplicate partition id: unused
            for site, row in zip(site_ids, counts):
                infos[site] = SiteInfo(site, row)
                node_of_site[site] = reply.metadata.src_node_id
        missing = sorted(set(range(self.scenario.sites.count)) - set(infos))
        if missing:
            raise RuntimeError(f"no Flower node hosts sites {missing[:10]}: give each node one partition id "
                               f"(sites.per-node = {self.scenario.sites.per_node})")
        self.node_of_site = node_of_site
        self.sites_of_node = {}
        for site, node in sorted(node_of_site.items()):
            self.sites_of_node.setdefault(node, []).append(site)
        if forgotten:  # the sites must start without these items: tell each node its own now that it is known
            return self.open(forgotten)
        return [infos[j] for j in sorted(infos)]

    def _setup_message(self, node: int, forgotten: SiteIds | None) -> Message:
        # The scenario without its [[forget]] schedule: no node learns which items other sites will forget.
        config: dict[str, Any] = {P.SCENARIO_JSON: self.scenario.replace(forget=()).to_json()}
        if self.state_dir is not None:
            config[P.STATE_DIR] = str(self.state_dir)
        mine = {s: ids for s, ids in (forgotten or {}).items() if s in self.sites_of_node.get(node, ())}
        if mine:  # only the node's own sites' ids: no node learns what another site forgot
            config[P.FORGOTTEN_JSON] = json.dumps({str(s): np.asarray(ids).tolist() for s, ids in mine.items()})
        content = RecordDict({P.CONFIG: ConfigRecord(config)})
        self._log("down", None, self.sites_of_node.get(node, []), content, P.SETUP)
        return Message(content, dst_node_id=node, message_type=P.SETUP, group_id="setup")

    # ---- one round ----
    def train_round(self, round_index: int, fake: torch.Tensor, labels: torch.Tensor | None,
                    weights: np.ndarray | None = None) -> dict[int, SiteReply]:
        arrays = {P.FAKE: Array(fake.numpy())}
        if labels is not None:
            arrays[P.LABELS] = Array(labels.numpy())
        messages = []
        pre_aggregate = self.scenario.sites.pre_aggregate and weights is not None
        for node in sorted(self.sites_of_node):
            mine = dict(arrays)
            if pre_aggregate:  # the node weighs its sites with the server's counts (they may differ from its own)
                mine[P.CLASS_COUNTS] = Array(np.asarray(weights, dtype=np.int64)[self.sites_of_node[node]])
            content = RecordDict({P.ARRAYS: ArrayRecord(mine), P.CONFIG: ConfigRecord({P.ROUND: round_index})})
            messages.append(Message(content, dst_node_id=node, message_type=P.TRAIN_ROUND,
                                    group_id=str(round_index)))
            self.traffic.bytes_down += record_bytes(content.values())
            self._log("down", round_index, self.sites_of_node[node], content)
        replies: dict[int, SiteReply] = {}
        self.dropped = {}
        answered: set[int] = set()
        for reply in self._exchange(messages):
            answered.add(reply.metadata.src_node_id)
            if reply.has_error():  # the node's sites are dropped this round; the aggregation renormalises
                for site in self.sites_of_node.get(reply.metadata.src_node_id, []):
                    self.dropped[site] = f"error reply: {reply.error.reason}"[:300]
                continue
            self.traffic.bytes_up += record_bytes(reply.content.values())
            decoded = self._decode_or_reject(reply.content, self.sites_of_node.get(reply.metadata.src_node_id, []))
            self._log("up", round_index, sorted(decoded), reply.content)
            replies.update(decoded)
        for node in set(self.sites_of_node) - answered:
            for site in self.sites_of_node[node]:
                self.dropped[site] = f"no reply within engine.round-timeout ({self.scenario.engine.round_timeout:g} s)"
        return dict(sorted(replies.items()))

    @classmethod
    def _decode_or_reject(cls, content: RecordDict, sites: list[int]) -> dict[int, SiteReply]:
        """The node's replies; a reply that cannot be decoded (missing keys, wrong sizes) becomes a rejected reply
        of each of the node's sites, which the server's screen drops with this reason."""
        try:
            if P.GROUP_WEIGHT in content[P.ARRAYS]:
                return {min(sites): cls._decode_group(content, sites)}
            decoded = cls._decode(content)
            if sorted(decoded) != sorted(sites):
                raise ValueError(f"the reply names sites {sorted(decoded)}, the node hosts {sorted(sites)}")
            return decoded
        except Exception as error:  # noqa: BLE001 — a hostile or broken node must not stop the round
            nan = float("nan")
            return {site: SiteReply(None, None, nan, nan, nan, problem=f"undecodable reply: {error}")
                    for site in sites}

    @staticmethod
    def _decode(content: RecordDict) -> dict[int, SiteReply]:
        arrays = content[P.ARRAYS]
        site_ids = np.array(arrays[P.SITE_IDS].numpy()).tolist()
        logits = torch.from_numpy(np.array(arrays[P.LOGITS].numpy()))
        input_grads = torch.from_numpy(np.array(arrays[P.INPUT_GRADS].numpy()))
        stats = np.array(arrays[P.D_STATS].numpy(), dtype=np.float64)
        return {site: SiteReply(logits[k], input_grads[k], *map(float, stats[k])) for k, site in enumerate(site_ids)}

    @staticmethod
    def _decode_group(content: RecordDict, sites: list[int]) -> GroupReply:
        """A pre-aggregating node's answer: one equivalent site for the sites it names, the others rejected by it."""
        arrays = content[P.ARRAYS]
        named = np.array(arrays[P.SITE_IDS].numpy()).tolist()
        rejected = {int(s): str(r) for s, r in json.loads(str(content[P.CONFIG][P.REJECTED_JSON])).items()}
        if sorted(named + list(rejected)) != sorted(sites):
            raise ValueError(f"the reply accounts for sites {sorted(named + list(rejected))}, the node hosts "
                             f"{sorted(sites)}")
        if not named:
            empty = torch.zeros(0)
            return GroupReply(empty, empty, *([float("nan")] * 3), sites=(), raw_weight=empty, rejected=rejected)
        logits = torch.from_numpy(np.array(arrays[P.LOGITS].numpy()))
        input_grads = torch.from_numpy(np.array(arrays[P.INPUT_GRADS].numpy()))
        weight = torch.from_numpy(np.array(arrays[P.GROUP_WEIGHT].numpy(), dtype=np.float64))
        stats = np.array(arrays[P.D_STATS].numpy(), dtype=np.float64)
        if logits.shape[0] != 1 or input_grads.shape[0] != 1 or weight.shape[0] != 1:
            raise ValueError("a pre-aggregated answer holds one equivalent site")
        if not bool(torch.isfinite(weight).all()) or bool((weight < 0).any()):
            raise ValueError("the group weight must be finite and non-negative")
        return GroupReply(logits[0], input_grads[0], *map(float, stats[0]), sites=tuple(named), raw_weight=weight[0],
                          rejected=rejected)

    def _log(self, direction: str, round_index: int | None, sites: list[int], content: RecordDict,
             message_type: str = P.TRAIN_ROUND) -> None:
        """One wire-log entry (tests): the message type, the node's sites, every record's keys and array shapes,
        a fingerprint of every image, and what the privacy test checks: whose item ids a message carries."""
        if self.wire_log is None:
            return
        entry: dict[str, Any] = {"direction": direction, "type": message_type, "round": round_index, "sites": sites,
                                 "records": {}, "image_row_hashes": [], "id_sites": [],
                                 "measurement": message_type == P.QUERY_LOGITS}  # the attacker's channel
        for name, record in content.items():
            if isinstance(record, ArrayRecord):
                entry["records"][name] = {k: list(v.shape) for k, v in record.items()}
                for key in (P.ID_SITES, P.FORGET_SITES):
                    if key in record:
                        entry["id_sites"] += np.unique(np.array(record[key].numpy())).tolist()
                for array in record.values():
                    if len(array.shape) >= 4:  # image-shaped payloads: fingerprint every image for the privacy test
                        rows = np.array(array.numpy()).reshape(-1, *array.shape[-3:])
                        entry["image_row_hashes"] += [hashlib.sha256(row.tobytes()).hexdigest() for row in rows]
            else:
                entry["records"][name] = sorted(record.keys())
                if P.FORGOTTEN_JSON in record:
                    entry["id_sites"] += [int(site) for site in json.loads(str(record[P.FORGOTTEN_JSON]))]
                if P.SCENARIO_JSON in record:
                    entry["scenario_forget"] = json.loads(str(record[P.SCENARIO_JSON]))["forget"]
        self.wire_log.append(entry)

    # ---- forget requests ----
    def _command(self, message_type: str, contents: dict[int, RecordDict]) -> dict[int, RecordDict]:
        """Send one message per named node and return the replies by node; a failed node raises (bookkeeping must
        succeed everywhere)."""
        messages = []
        for node, content in sorted(contents.items()):
            messages.append(Message(content, dst_node_id=node, message_type=message_type, group_id=message_type))
            self.traffic.bytes_down += record_bytes(content.values())
            self._log("down", None, self.sites_of_node[node], content, message_type)
        replies: dict[int, RecordDict] = {}
        for reply in self._exchange(messages):
            node = reply.metadata.src_node_id
            if reply.has_error():
                raise RuntimeError(f"sites {self.sites_of_node[node]} failed {message_type}: {reply.error.reason}")
            self.traffic.bytes_up += record_bytes(reply.content.values())
            self._log("up", None, self.sites_of_node[node], reply.content, message_type)
            replies[node] = reply.content
        missing = sorted(s for node in set(contents) - set(replies) for s in self.sites_of_node[node])
        if missing:
            raise RuntimeError(f"sites {missing} did not answer {message_type} within engine.round-timeout")
        return replies

    def _all_nodes(self, message_type: str, config: dict[str, Any]) -> None:
        self._command(message_type, {n: RecordDict({P.CONFIG: ConfigRecord(dict(config))}) for n in self.sites_of_node})

    def snapshot(self, tag: str) -> None:
        self._all_nodes(P.SNAPSHOT, {P.TAG: tag})

    def restore(self, tag: str) -> None:
        self._all_nodes(P.RESTORE, {P.TAG: tag})

    def discard(self, tag: str) -> None:
        self._all_nodes(P.DISCARD, {P.TAG: tag})

    def export_snapshot(self, tag: str) -> SitesSnapshot | None:
        """The nodes' snapshot files under the run directory (a simulation: the simulator's referee reads them for
        a proof worker; no message carries them). None when a node keeps its state elsewhere (its own
        ``state-dir``, a SuperNode on another machine): the proofs then run in line."""
        if self.state_dir is None:
            return None
        groups = []
        for partition in range(P.num_nodes(self.scenario.sites.per_node, self.scenario.sites.count)):
            path = NodeStateStore(node_folder(self.state_dir, partition)).path(tag)
            if not path.is_file():
                return None
            groups.append(path.read_bytes())
        return SitesSnapshot(groups=groups, group_size=self.scenario.sites.per_node)

    def _by_node(self, orders: dict[int, Any]) -> dict[int, dict[int, Any]]:
        """Per-site orders grouped by the node that hosts each site."""
        grouped: dict[int, dict[int, Any]] = {}
        for site, order in sorted(orders.items()):
            grouped.setdefault(self.node_of_site[site], {})[site] = order
        return grouped

    @staticmethod
    def _ids_and_sites(orders: dict[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        ids = [np.asarray(v, dtype=np.int64) for v in orders.values()]
        sites = [np.full(len(v), site, dtype=np.int64) for site, v in zip(orders, ids)]
        return np.concatenate(ids), np.concatenate(sites)

    def _ids_command(self, message_type: str, orders: SiteIds) -> None:
        contents = {}
        for node, mine in self._by_node(orders).items():
            ids, sites = self._ids_and_sites(mine)
            contents[node] = RecordDict({P.ARRAYS: ArrayRecord({P.IDS: Array(ids), P.ID_SITES: Array(sites)})})
        self._command(message_type, contents)

    def exclude(self, orders: SiteIds) -> None:
        self._ids_command(P.EXCLUDE, orders)

    def forget(self, orders: SiteIds) -> None:
        self._ids_command(P.FORGET, orders)

    def unlearn(self, orders: dict[int, StageOrder]) -> dict[int, dict[str, float]]:
        contents = {}
        for node, mine in self._by_node(orders).items():
            first = next(iter(mine.values()))  # one stage: the same batch for every requesting site
            ids, sites = self._ids_and_sites({site: order.forget_ids for site, order in mine.items()})
            arrays = {P.FAKE: Array(first.fake.numpy()), P.FORGET_IDS: Array(ids), P.FORGET_SITES: Array(sites)}
            if first.fake_labels is not None:
                arrays[P.LABELS] = Array(first.fake_labels.numpy())
            contents[node] = RecordDict({
                P.ARRAYS: ArrayRecord(arrays),
                # Per site: a stage's step count can differ between the sites of one node (item-stage-passes).
                P.CONFIG: ConfigRecord({P.STAGE_JSON: json.dumps(
                    {str(site): dataclasses.asdict(order.options) for site, order in mine.items()})}),
            })
        # One send for all requesting nodes: their stages run concurrently on the simulation's workers.
        stats: dict[int, dict[str, float]] = {}
        for content in self._command(P.UNLEARN, contents).values():
            for key, value in content[P.METRICS].items():
                site, name = key.split("/", 1)
                stats.setdefault(int(site), {})[name] = float(value)
        return dict(sorted(stats.items()))

    def query_logits(self, site_id: int, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        arrays = {P.IMAGES: Array(images.numpy())}
        if labels is not None:
            arrays[P.LABELS] = Array(labels.numpy())
        node = self.node_of_site[site_id]
        content = RecordDict({P.ARRAYS: ArrayRecord(arrays), P.CONFIG: ConfigRecord({P.SITE: site_id})})
        reply = self._command(P.QUERY_LOGITS, {node: content})[node]
        return torch.from_numpy(np.array(reply[P.ARRAYS][P.LOGITS].numpy()))

    def site_states(self) -> None:
        """Site state lives in each node's Flower Context; the server cannot (and must not) read it."""
        return None

    def close(self) -> None:
        self.node_of_site, self.sites_of_node = {}, {}
