"""The message protocol between the server and the sites: action names and record keys, in one place.

Plain strings only (this package knows nothing of Flower); `server/` and `clients/` build and read the Flower
records with these names. What crosses the wire, per round and site:
  down  SCORE: the synthetic batch x̂ (B, C, H, W) float32 [+ its labels (B,) int64] and the round number;
  up    SCORE reply: logits (B,) float32 and input gradients (B, C, H, W) float32, plus three loss statistics.
Once per run, SETUP carries the resolved scenario down and each site's class counts up. Never a discriminator
weight, never a real image.
"""

SETUP = "train.setup"  # server -> site: scenario JSON; reply: site id and class counts
SCORE = "train.score"  # server -> site: synthetic batch; reply: logits and input gradients

SETUP_ACTION = SETUP.split(".", 1)[1]
SCORE_ACTION = SCORE.split(".", 1)[1]

# Record names inside a message's RecordDict.
CONFIG = "config"  # ConfigRecord
ARRAYS = "arrays"  # ArrayRecord
METRICS = "metrics"  # MetricRecord

# Keys.
SCENARIO_JSON = "scenario"
SITE_ID = "site-id"
ROUND = "round"
CLASS_COUNTS = "class-counts"
FAKE = "fake"
LABELS = "labels"
LOGITS = "logits"
INPUT_GRADS = "input-grads"
D_LOSS, D_REAL, D_FAKE = "d-loss", "d-real", "d-fake"

# Keys a site keeps in its Flower Context.state between messages (never sent to the server).
STATE_CONFIG = "fedgan.config"
STATE_SITE = "fedgan.site"
STATE_BYTES = "state"

DOWN_ARRAY_KEYS = frozenset({FAKE, LABELS})
UP_ARRAY_KEYS = frozenset({LOGITS, INPUT_GRADS, CLASS_COUNTS})
