"""Flower ClientApp for one site: translates messages into calls on `fedgan.site.Site`, nothing more.

A ClientApp is re-created for every message (docs/engines.md), so the site's lasting state — D's weights, its Adam
state, its batch RNG — lives in `context.state` as bytes and is restored before each step. The shard is rebuilt
from the scenario and the node's ``partition-id`` and cached per worker process, never sent anywhere.
"""
from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedgan import protocol as P
from fedgan.engine import build_site, resolve_device
from fedgan.scenario import scenario_from_dict
from fedgan.site import Site
from fedgan.site_unlearning import UnlearnStageOptions

app = ClientApp()

# Sites built in this worker process, keyed by (scenario JSON, site id). A cache only: the state in the
# Context is loaded into the site before every step, so a cached object never carries stale weights.
_SITES: OrderedDict[tuple[str, int], Site] = OrderedDict()
_MAX_CACHED_SITES = 64


def _site_for(scenario_json: str, site_id: int, fresh: bool = False) -> Site:
    key = (scenario_json, site_id)
    if key in _SITES and not fresh:
        _SITES.move_to_end(key)
        return _SITES[key]
    scenario = scenario_from_dict(json.loads(scenario_json))
    site = build_site(scenario, site_id, resolve_device(scenario.engine.device))
    _SITES[key] = site
    while len(_SITES) > _MAX_CACHED_SITES:
        _SITES.popitem(last=False)
    return site


def _partition_id(context: Context) -> int:
    if "partition-id" not in context.node_config:
        raise RuntimeError("node_config has no partition-id: start the SuperNode with --node-config partition-id=N")
    return int(context.node_config["partition-id"])


@app.train(P.action(P.SETUP))
def setup(msg: Message, context: Context) -> Message:
    """Join the run: build this site from the scenario, keep its state, report its class counts."""
    config = msg.content[P.CONFIG]
    scenario_json = str(config[P.SCENARIO_JSON])
    site_id = _partition_id(context)
    site = _site_for(scenario_json, site_id, fresh=True)  # round-0 state, whatever this worker ran before
    forgotten = json.loads(str(config[P.FORGOTTEN_JSON])) if P.FORGOTTEN_JSON in config else {}
    if str(site_id) in forgotten:  # a fresh federation without these items (the retrain baseline)
        site.shard.forget(np.asarray(forgotten[str(site_id)], dtype=np.int64))
    context.state[P.STATE_CONFIG] = ConfigRecord({P.SCENARIO_JSON: scenario_json, P.SITE_ID: site_id})
    context.state[P.STATE_SITE] = ConfigRecord({P.STATE_BYTES: site.state_bytes()})
    content = RecordDict({
        P.CONFIG: ConfigRecord({P.SITE_ID: site_id}),
        P.ARRAYS: ArrayRecord({P.CLASS_COUNTS: Array(site.shard.class_counts())}),
    })
    return Message(content, reply_to=msg)


@app.train(P.action(P.TRAIN_ROUND))
def train_round(msg: Message, context: Context) -> Message:
    """One round at this site: D step(s) on real vs the received batch; reply with logits and input gradients."""
    site = _load_site(context)
    arrays = msg.content[P.ARRAYS]
    fake = torch.from_numpy(np.array(arrays[P.FAKE].numpy()))
    labels = torch.from_numpy(np.array(arrays[P.LABELS].numpy())) if P.LABELS in arrays else None
    round_index = msg.content[P.CONFIG][P.ROUND] if P.CONFIG in msg.content else None
    reply = site.train_round(fake, labels, int(round_index) if round_index is not None else None)
    _save_site(context, site)
    content = RecordDict({
        P.ARRAYS: ArrayRecord({
            P.LOGITS: Array(reply.logits.numpy()),
            P.INPUT_GRADS: Array(reply.input_grads.numpy()),
        }),
        P.METRICS: MetricRecord({P.D_LOSS: reply.d_loss, P.D_REAL: reply.d_real, P.D_FAKE: reply.d_fake}),
    })
    return Message(content, reply_to=msg)


# ---- forget requests: the site-side stages and bookkeeping (fedgan.site does the work) ----


def _load_site(context: Context) -> Site:
    config = context.state[P.STATE_CONFIG]
    site = _site_for(str(config[P.SCENARIO_JSON]), int(config[P.SITE_ID]))
    site.load_state_bytes(bytes(context.state[P.STATE_SITE][P.STATE_BYTES]))
    return site


def _save_site(context: Context, site: Site) -> None:
    context.state[P.STATE_SITE] = ConfigRecord({P.STATE_BYTES: site.state_bytes()})


def _ids(arrays: ArrayRecord, key: str) -> np.ndarray:
    return np.array(arrays[key].numpy(), dtype=np.int64)


def _empty_reply(msg: Message) -> Message:
    return Message(RecordDict({P.METRICS: MetricRecord({})}), reply_to=msg)


@app.train(P.action(P.SNAPSHOT))
def snapshot(msg: Message, context: Context) -> Message:
    """Keep a copy of this site's state under a tag (at the site)."""
    tag = str(msg.content[P.CONFIG][P.TAG])
    context.state[P.STATE_SNAPSHOT_PREFIX + tag] = ConfigRecord(
        {P.STATE_BYTES: bytes(context.state[P.STATE_SITE][P.STATE_BYTES])})
    return _empty_reply(msg)


@app.train(P.action(P.RESTORE))
def restore(msg: Message, context: Context) -> Message:
    """Return to the state kept under a tag."""
    tag = str(msg.content[P.CONFIG][P.TAG])
    context.state[P.STATE_SITE] = ConfigRecord(
        {P.STATE_BYTES: bytes(context.state[P.STATE_SNAPSHOT_PREFIX + tag][P.STATE_BYTES])})
    return _empty_reply(msg)


@app.train(P.action(P.DISCARD))
def discard(msg: Message, context: Context) -> Message:
    """Drop the state kept under a tag."""
    key = P.STATE_SNAPSHOT_PREFIX + str(msg.content[P.CONFIG][P.TAG])
    if key in context.state:
        del context.state[key]
    return _empty_reply(msg)


def _apply_to_ids(msg: Message, context: Context, action: Callable[[Site, np.ndarray], None]) -> Message:
    """Load the site, apply `action` to the item ids in the message, keep the new state."""
    site = _load_site(context)
    action(site, _ids(msg.content[P.ARRAYS], P.IDS))
    _save_site(context, site)
    return _empty_reply(msg)


@app.train(P.action(P.EXCLUDE))
def exclude(msg: Message, context: Context) -> Message:
    """Keep the named items out of the real stream (substituted by retained items)."""
    return _apply_to_ids(msg, context, lambda site, ids: site.shard.exclude(ids))


@app.train(P.action(P.FORGET))
def forget(msg: Message, context: Context) -> Message:
    """Delete the named items from this site's shard for good."""
    return _apply_to_ids(msg, context, lambda site, ids: site.shard.forget(ids))


@app.train(P.action(P.UNLEARN))
def unlearn(msg: Message, context: Context) -> Message:
    """One site-side unlearning stage; reply with its statistics."""
    site = _load_site(context)
    arrays = msg.content[P.ARRAYS]
    fake = torch.from_numpy(np.array(arrays[P.FAKE].numpy()))
    labels = torch.from_numpy(np.array(arrays[P.LABELS].numpy())) if P.LABELS in arrays else None
    options = UnlearnStageOptions(**json.loads(str(msg.content[P.CONFIG][P.STAGE_JSON])))
    stats = site.unlearn_stage(fake, labels, _ids(arrays, P.FORGET_IDS), options)
    _save_site(context, site)
    return Message(RecordDict({P.METRICS: MetricRecord(stats)}), reply_to=msg)


@app.query(P.action(P.QUERY_LOGITS))
def query_logits(msg: Message, context: Context) -> Message:
    """D's logits on the images sent (the simulator's membership-inference measurement; never training)."""
    site = _load_site(context)
    arrays = msg.content[P.ARRAYS]
    images = torch.from_numpy(np.array(arrays[P.IMAGES].numpy()))
    labels = torch.from_numpy(np.array(arrays[P.LABELS].numpy())) if P.LABELS in arrays else None
    logits = site.discriminator_logits(images, labels)
    return Message(RecordDict({P.ARRAYS: ArrayRecord({P.LOGITS: Array(logits.numpy())})}), reply_to=msg)
