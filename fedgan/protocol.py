"""The message protocol between the server and the sites: message types and record keys, in one place.

Plain strings only (this package knows nothing of Flower); `server/` and `clients/` build and read the Flower
records with these names. docs/protocol.md describes every message. What crosses the wire, per round and site:
  down  TRAIN_ROUND: the synthetic batch x̂ (B, C, H, W) float32 [+ its labels (B,) int64] and the round number;
  up    its reply: logits (B,) float32 and input gradients (B, C, H, W) float32, plus three loss statistics.
With `sites.pre-aggregate`, TRAIN_ROUND also carries the server's class counts of the node's sites down, and the
node answers with one equivalent site for its sites (`fedgan.aggregation.pre_aggregate`) and their total weight.
Once per run, SETUP carries the resolved scenario down and each site's class counts up. Never a discriminator
weight, and never a real image from a site (the attacker's candidate images of QUERY_LOGITS go *to* the site).
"""

SETUP = "train.setup"  # server -> site: scenario JSON; reply: site id and class counts
TRAIN_ROUND = "train.round"  # server -> site: synthetic batch; the site trains D; reply: logits and input gradients

# Forget requests: site-side stages and bookkeeping (`train.*`: they change the site's state).
SNAPSHOT = "train.snapshot"  # config: tag; the site copies its state under the tag (kept at the site)
RESTORE = "train.restore"  # config: tag; the site returns to that copy
DISCARD = "train.discard"  # config: tag; the site drops that copy (contexts travel with every message: keep them small)
EXCLUDE = "train.exclude"  # arrays: ids; the site keeps them out of its real stream (substitution)
UNLEARN = "train.unlearn"  # arrays: fake [+ labels], forget ids; config: stage options per site (JSON); reply: stats
FORGET = "train.forget"  # arrays: ids; the site deletes them from its shard

# Measurement (`query.*`: the site's state does not change). QUERY_LOGITS is the channel of the simulator's
# membership-inference attacker: candidate images go down (forgotten, retained and non-member candidates, which the
# attacker is assumed to hold) and the site's D logits come back. Training never uses it.
QUERY_LOGITS = "query.logits"  # arrays: images [+ labels]; reply: the site's D logits on them


def action(message_type: str) -> str:
    """The action part of ``category.action`` (what a ClientApp handler is registered under)."""
    return message_type.split(".", 1)[1]



# Record names inside a message's RecordDict.
CONFIG = "config"  # ConfigRecord
ARRAYS = "arrays"  # ArrayRecord
METRICS = "metrics"  # MetricRecord

# Keys. A node hosts one or more sites (`sites.per-node`); arrays about several sites carry a leading site axis in
# the order of SITE_IDS.
SCENARIO_JSON = "scenario"
PARTITION_ID = "partition-id"
ROUND = "round"
SITE_IDS = "site-ids"  # (n,) int64: the node's sites, in the order of every per-site array of the message
CLASS_COUNTS = "class-counts"  # (n, C) int64
FAKE = "fake"
LABELS = "labels"
LOGITS = "logits"  # (n, B) float32
INPUT_GRADS = "input-grads"  # (n, B, C, H, W) float32
D_STATS = "d-stats"  # (n, 3) float32: D's loss, mean D(real), mean D(x̂) on its last local step
FORGOTTEN_JSON = "forgotten"  # SETUP: {site id: [ids]} items the node's fresh sites start without (a retrain)
TAG = "tag"
IDS = "ids"  # (N,) int64 global item ids
ID_SITES = "id-sites"  # (N,) int64: the site each id of IDS belongs to
FORGET_IDS = "forget-ids"
FORGET_SITES = "forget-sites"
IMAGES = "images"
STAGE_JSON = "stage"
SITE = "site"
STATE_DIR = "state-dir"  # SETUP: the folder under which each node keeps its state (a node_config key overrides it)

# What a node keeps in its Flower Context.state between messages: where its state files are and their version
# (the state itself is in those files, fedgan.node_state; never sent to the server).
STATE_CONFIG = "fedgan.config"
STATE_VERSION = "version"
STATE_TOKEN = "token"  # drawn at every setup: a version of another run or an earlier setup never matches

GROUP_WEIGHT = "group-weight"  # (1, B) float64: a pre-aggregated answer's total weight R[b] of its sites
REJECTED_JSON = "rejected"  # a pre-aggregated answer: {site id: reason} for the sites the node's screen dropped

DOWN_ARRAY_KEYS = frozenset({FAKE, LABELS, CLASS_COUNTS})  # counts: the server's, of the node's sites (pre-aggregate)
UP_ARRAY_KEYS = frozenset({SITE_IDS, LOGITS, INPUT_GRADS, D_STATS, CLASS_COUNTS, GROUP_WEIGHT})


def node_sites(partition_id: int, per_node: int, num_sites: int) -> list[int]:
    """The sites node `partition_id` hosts: `per_node` consecutive site ids (the last node may hold fewer)."""
    return list(range(partition_id * per_node, min((partition_id + 1) * per_node, num_sites)))


def num_nodes(per_node: int, num_sites: int) -> int:
    """How many nodes (Flower SuperNodes) a federation of `num_sites` sites needs at `per_node` sites each."""
    return -(-num_sites // per_node)
