"""Flower ClientApp for one node: translates messages into calls on the node's sites, nothing more.

A node hosts `sites.per-node` consecutive sites (one by default), as a `fedgan.site_group.SiteGroup`: a group of one
runs the per-site `Site` code itself, a larger group trains its sites (batched or site by site, `engine.batching`).
A ClientApp is re-created for every message (docs/engines.md), so the node's lasting state — its sites' D weights,
Adam states, batch RNGs and forgotten ids — lives in files on the node's disk (`fedgan.node_state`), never in a
message; `context.state` keeps only their folder and version. The shards are rebuilt from the scenario and the
node's ``partition-id``, and the group is cached per worker process (reused while its version is current).
"""
from __future__ import annotations

import functools
import json
import uuid
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedgan import protocol as P
from fedgan.aggregation import get_aggregator, pre_aggregate
from fedgan.engine import build_site, resolve_device, site_thread_count
from fedgan.faults import site_fault, site_reply_fault
from fedgan.node_state import NodeStateStore, node_folder
from fedgan.scenario import TrainingConfig, scenario_from_dict
from fedgan.site_group import SiteGroup
from fedgan.site_unlearning import UnlearnStageOptions
from fedgan.storage import cache_dir

app = ClientApp()

# Groups built in this worker process, keyed by (scenario JSON, partition id), each with the version of the state
# it holds: (the node's state folder, a token drawn at setup, a counter). A cache only: when the node's state has
# moved on (another worker served its last message, a restore, another run), the state file is loaded first, so a
# cached object never carries stale weights.
_GROUPS: OrderedDict[tuple[str, int], tuple[SiteGroup, tuple]] = OrderedDict()
_MAX_CACHED_GROUPS = 64
_THREADS: dict[str, int] = {}  # scenario JSON -> torch threads of its sites


def _group_for(scenario_json: str, partition_id: int, fresh: bool = False) -> SiteGroup:
    key = (scenario_json, partition_id)
    if key in _GROUPS and not fresh:
        _GROUPS.move_to_end(key)
        return _GROUPS[key][0]
    scenario = scenario_from_dict(json.loads(scenario_json))
    _THREADS[scenario_json] = site_thread_count(scenario)
    sites = P.node_sites(partition_id, scenario.sites.per_node, scenario.sites.count)
    device = resolve_device(scenario.engine.device)
    group = SiteGroup([build_site(scenario, site_id, device) for site_id in sites], scenario.engine.batching)
    _GROUPS[key] = (group, ())
    while len(_GROUPS) > _MAX_CACHED_GROUPS:
        _GROUPS.popitem(last=False)
    return group


def _partition_id(context: Context) -> int:
    if "partition-id" not in context.node_config:
        raise RuntimeError("node_config has no partition-id: start the SuperNode with --node-config partition-id=N")
    return int(context.node_config["partition-id"])


def _store(context: Context) -> NodeStateStore:
    return NodeStateStore(str(context.state[P.STATE_CONFIG][P.STATE_DIR]))


def _key_and_version(context: Context) -> tuple[tuple[str, int], tuple]:
    config = context.state[P.STATE_CONFIG]
    key = (str(config[P.SCENARIO_JSON]), int(config[P.PARTITION_ID]))
    return key, (str(config[P.STATE_DIR]), str(config[P.STATE_TOKEN]), int(config[P.STATE_VERSION]))


def _load_group(context: Context, changes: bool = True) -> SiteGroup:
    """The node's group holding its current state (from this worker's cache when that is current, else the file).

    With `changes`, the cached copy counts as out of date until `_save_group` has written the new state: a handler
    that raises half-way leaves nothing stale behind (Flower discards that call's Context changes too).
    """
    key, version = _key_and_version(context)
    group = _group_for(*key)
    torch.set_num_threads(_THREADS.get(key[0], 1))  # as every engine's sites (fedgan.engine.site_thread_count)
    if _GROUPS[key][1] != version:
        group.load_state_file(_store(context).path())
    _GROUPS[key] = (group, () if changes else version)
    return group


def _save_group(context: Context, group: SiteGroup) -> None:
    """Write the node's new state and move its version on (the Context keeps only the version)."""
    _store(context).save_with(group.save_state)
    _bump_version(context, group)


def _bump_version(context: Context, group: SiteGroup | None) -> None:
    """The node's state changed: a new version, which `group` (when given) holds."""
    config = context.state[P.STATE_CONFIG]
    context.state[P.STATE_CONFIG] = ConfigRecord({**dict(config), P.STATE_VERSION: int(config[P.STATE_VERSION]) + 1})
    if group is not None:
        key, version = _key_and_version(context)
        _GROUPS[key] = (group, version)


def _array(arrays: ArrayRecord, key: str, dtype=None) -> np.ndarray:
    return np.array(arrays[key].numpy(), dtype=dtype)


def _tensor(arrays: ArrayRecord, key: str) -> torch.Tensor | None:
    return torch.from_numpy(_array(arrays, key)) if key in arrays else None


def _empty_reply(msg: Message) -> Message:
    return Message(RecordDict({P.METRICS: MetricRecord({})}), reply_to=msg)


def _site_ids(group: SiteGroup) -> Array:
    return Array(np.asarray(group.site_ids, dtype=np.int64))


def _state_root(context: Context, config: ConfigRecord, token: str) -> str:
    """Where this node keeps its state: its own node_config ``state-dir`` (a SuperNode's disk), else the folder the
    server named (the run directory's, in a simulation), else a folder of this setup in the cache."""
    if P.STATE_DIR in context.node_config:
        return str(context.node_config[P.STATE_DIR])
    if P.STATE_DIR in config:
        return str(config[P.STATE_DIR])
    return str(cache_dir("node-state", token))


@app.train(P.action(P.SETUP))
def setup(msg: Message, context: Context) -> Message:
    """Join the run: build this node's sites from the scenario, keep their state, report their class counts."""
    config = msg.content[P.CONFIG]
    scenario_json = str(config[P.SCENARIO_JSON])
    partition_id = _partition_id(context)
    scenario = scenario_from_dict(json.loads(scenario_json))
    if not P.node_sites(partition_id, scenario.sites.per_node, scenario.sites.count):  # a node beyond the sites
        empty = ArrayRecord({P.SITE_IDS: Array(np.zeros(0, np.int64)), P.CLASS_COUNTS: Array(np.zeros((0, 0)))})
        return Message(RecordDict({P.ARRAYS: empty}), reply_to=msg)
    group = _group_for(scenario_json, partition_id, fresh=True)  # round-0 state, whatever this worker ran before
    forgotten = json.loads(str(config[P.FORGOTTEN_JSON])) if P.FORGOTTEN_JSON in config else {}
    for site in group.sites:  # a fresh federation without these items (the retrain baseline)
        if str(site.site_id) in forgotten:
            site.shard.forget(np.asarray(forgotten[str(site.site_id)], dtype=np.int64))
    token = uuid.uuid4().hex
    context.state[P.STATE_CONFIG] = ConfigRecord({
        P.SCENARIO_JSON: scenario_json, P.PARTITION_ID: partition_id, P.STATE_VERSION: 0, P.STATE_TOKEN: token,
        P.STATE_DIR: str(node_folder(_state_root(context, config, token), partition_id)),
    })
    _save_group(context, group)
    counts = np.stack([site.shard.class_counts() for site in group.sites])
    content = RecordDict({P.ARRAYS: ArrayRecord({P.SITE_IDS: _site_ids(group), P.CLASS_COUNTS: Array(counts)})})
    return Message(content, reply_to=msg)


@app.train(P.action(P.TRAIN_ROUND))
def train_round(msg: Message, context: Context) -> Message:
    """One round at this node's sites: D step(s) on real vs the received batch; logits and input gradients back."""
    round_index = msg.content[P.CONFIG][P.ROUND] if P.CONFIG in msg.content else None
    site_fault(_partition_id(context), "round", None if round_index is None else int(round_index))  # tests only
    group = _load_group(context)
    arrays = msg.content[P.ARRAYS]
    fake, labels = _tensor(arrays, P.FAKE), _tensor(arrays, P.LABELS)
    replies = group.train_round(fake, labels, int(round_index) if round_index is not None else None)
    _save_group(context, group)
    site_reply_fault(_partition_id(context), None if round_index is None else int(round_index), replies)  # tests
    if P.CLASS_COUNTS in arrays:  # the server asks for one answer for the node (sites.pre-aggregate)
        return Message(_pre_aggregated(context, replies, _array(arrays, P.CLASS_COUNTS), fake, labels), reply_to=msg)
    ordered = [replies[site_id] for site_id in group.site_ids]
    content = RecordDict({P.ARRAYS: ArrayRecord({
        P.SITE_IDS: _site_ids(group),
        P.LOGITS: Array(torch.stack([r.logits for r in ordered]).numpy()),
        P.INPUT_GRADS: Array(torch.stack([r.input_grads for r in ordered]).numpy()),
        P.D_STATS: Array(np.asarray([[r.d_loss, r.d_real, r.d_fake] for r in ordered], dtype=np.float32)),
    })})
    return Message(content, reply_to=msg)


@functools.lru_cache(maxsize=8)
def _training(scenario_json: str) -> TrainingConfig:
    return scenario_from_dict(json.loads(scenario_json)).training


def _pre_aggregated(context: Context, replies: dict, counts: np.ndarray, fake: torch.Tensor,
                    labels: torch.Tensor | None) -> RecordDict:
    """The node's one answer: its screen, then one equivalent site for the sites it kept (fedgan.aggregation)."""
    t = _training(str(context.state[P.STATE_CONFIG][P.SCENARIO_JSON]))
    answer = pre_aggregate(get_aggregator(t.aggregator), replies, counts, labels, t.site_weights, fake, t.reply_limit)
    one = 1 if answer.sites else 0
    arrays = {
        P.SITE_IDS: Array(np.asarray(answer.sites, dtype=np.int64)),
        P.LOGITS: Array(answer.logits.reshape(one, -1).numpy()),
        P.INPUT_GRADS: Array(answer.input_grads.reshape(one, *fake.shape).numpy()),
        P.D_STATS: Array(np.asarray([[answer.d_loss, answer.d_real, answer.d_fake]][:one], dtype=np.float32)),
        P.GROUP_WEIGHT: Array(answer.raw_weight.reshape(one, -1).numpy()),
    }
    rejected = json.dumps({str(site): reason for site, reason in (answer.rejected or {}).items()})
    return RecordDict({P.ARRAYS: ArrayRecord(arrays), P.CONFIG: ConfigRecord({P.REJECTED_JSON: rejected})})


# ---- forget requests: the site-side stages and bookkeeping (fedgan does the work) ----


@app.train(P.action(P.SNAPSHOT))
def snapshot(msg: Message, context: Context) -> Message:
    """Keep a copy of this node's state under a tag (at the node)."""
    _store(context).snapshot(str(msg.content[P.CONFIG][P.TAG]))
    return _empty_reply(msg)


@app.train(P.action(P.RESTORE))
def restore(msg: Message, context: Context) -> Message:
    """Return to the state kept under a tag (any worker's cached copy is now out of date)."""
    _store(context).restore(str(msg.content[P.CONFIG][P.TAG]))
    _bump_version(context, None)
    return _empty_reply(msg)


@app.train(P.action(P.DISCARD))
def discard(msg: Message, context: Context) -> Message:
    """Drop the state kept under a tag."""
    _store(context).discard(str(msg.content[P.CONFIG][P.TAG]))
    return _empty_reply(msg)


def _apply_to_ids(msg: Message, context: Context, action: Callable[[object, np.ndarray], None]) -> Message:
    """Load the node, apply `action` to each named site's item ids in the message, keep the new state."""
    group = _load_group(context)
    arrays = msg.content[P.ARRAYS]
    ids, sites = _array(arrays, P.IDS, np.int64), _array(arrays, P.ID_SITES, np.int64)
    for site in group.sites:
        if np.any(sites == site.site_id):
            action(site.shard, ids[sites == site.site_id])
    _save_group(context, group)
    return _empty_reply(msg)


@app.train(P.action(P.EXCLUDE))
def exclude(msg: Message, context: Context) -> Message:
    """Keep the named items out of their sites' real streams (substituted by retained items)."""
    return _apply_to_ids(msg, context, lambda shard, ids: shard.exclude(ids))


@app.train(P.action(P.FORGET))
def forget(msg: Message, context: Context) -> Message:
    """Delete the named items from their sites' shards for good."""
    return _apply_to_ids(msg, context, lambda shard, ids: shard.forget(ids))


@app.train(P.action(P.UNLEARN))
def unlearn(msg: Message, context: Context) -> Message:
    """One site-side unlearning stage at each named site of this node; reply with the statistics per site."""
    site_fault(_partition_id(context), "unlearn")  # tests only
    group = _load_group(context)
    arrays = msg.content[P.ARRAYS]
    fake, labels = _tensor(arrays, P.FAKE), _tensor(arrays, P.LABELS)
    ids, sites = _array(arrays, P.FORGET_IDS, np.int64), _array(arrays, P.FORGET_SITES, np.int64)
    options = {int(site): UnlearnStageOptions(**value)
               for site, value in json.loads(str(msg.content[P.CONFIG][P.STAGE_JSON])).items()}
    requests = {index: (ids[sites == site_id], options[site_id])
                for index, site_id in enumerate(group.site_ids) if np.any(sites == site_id)}
    stats: dict[str, float] = {}
    for index, values in group.unlearn_stages(fake, labels, requests).items():
        for key, value in values.items():
            stats[f"{group.site_ids[index]}/{key}"] = value
    _save_group(context, group)
    return Message(RecordDict({P.METRICS: MetricRecord(stats)}), reply_to=msg)


@app.query(P.action(P.QUERY_LOGITS))
def query_logits(msg: Message, context: Context) -> Message:
    """A site's D logits on the images sent (the simulator's membership-inference measurement; never training)."""
    group = _load_group(context, changes=False)
    arrays = msg.content[P.ARRAYS]
    index = group.site_ids.index(int(msg.content[P.CONFIG][P.SITE]))
    logits = group.discriminator_logits(index, _tensor(arrays, P.IMAGES), _tensor(arrays, P.LABELS))
    return Message(RecordDict({P.ARRAYS: ArrayRecord({P.LOGITS: Array(logits.numpy())})}), reply_to=msg)
