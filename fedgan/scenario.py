"""Scenario schema: a declared experiment, read from TOML into frozen dataclasses and validated once.

A scenario file has a top-level ``name`` and ``seed`` and the tables below. TOML keys are written in kebab-case
(``batch-size``, as in Flower's own config); `_python_key` is the one place that converts them to snake_case,
and snake_case is accepted too. Every problem is reported as one `ScenarioError` naming the field
(``training.batch-size``), what was found, and what would be valid.
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedgan.errors import ScenarioError
from fedgan.forget import ForgetRequest
from fedgan.forgetting_layers import (
    DEFAULT_DISCRIMINATOR_LAYER,
    DEFAULT_FRACTION,
    DEFAULT_TAU,
    DEFAULT_TAU_MAX,
    DEFAULT_TAU_MIN,
)
from fedgan.models import ModelSpec
from fedgan.precision import PRECISIONS
from fedgan.schedule import LR_SCHEDULES
from fedgan.shard import REAL_SAMPLING
from fedgan.site_group import BATCHING

ENGINES = ("flower", "inprocess", "batched")
SITE_WEIGHTS = ("size", "uniform", "per_class")
# [unlearning.partial]: the knobs a batch holding a partial class request (a class that other sites keep) is served
# with, over [unlearning]'s. Chosen by bench/cascade_ablation.py on class-forget-shared.toml (bench/README.md,
# "A partial class request"): more and larger G steps while the requesting site's D holds the items as fake, the
# weights dropped first; then 80 repair rounds (40 until 2026-12-04), which brought the retained FID within 10 % of
# retrain's on both seeds and seed 1's averaged share within a point ("The repair balance ... more repair rounds");
# G at ×2.5 (×2 until 2026-12-06), which met both partial targets on 3 of 5 federations against ×2's 1 of 5 ("The
# partial recipe's G step on five federations").
PARTIAL_RECIPE: dict[str, Any] = {"stages": 5, "stage-g-rounds": 4, "generator-lr-scale": 2.5,
                                  "repair-rounds": 80, "drop-class-weight": True}
PARTIAL_KEYS = ("stages", "stage-d-steps", "stage-g-rounds", "generator-lr-scale", "weight", "fake-label",
                "recalibrate-rounds", "repair-rounds", "repair-balance", "repair-balance-gain", "drop-class-weight")
MAX_CPUS_PER_SITE = 4096  # a site's torch thread count: beyond any machine, and far below a C int
LABEL_SAMPLING = ("uniform", "data")
R1_TARGETS = ("logit", "probability")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, where it lives (None: the default location), and loader options."""

    name: str = "fashion_mnist"
    root: str | None = None
    train_limit: int | None = None  # keep a seeded random subset of this many training items (small shards)
    classes: tuple[int, ...] = ()  # only these labels, relabelled 0..k-1 (empty: all)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SitesConfig:
    """How many sites take part, and how many one unit of work holds (a Flower node, a batched group)."""

    count: int = 10
    per_node: int = 1  # sites per site group: under `batched`, groups of this size (1: one group of every site)
    pre_aggregate: bool = False  # Flower: each node answers for its group as one equivalent site (docs/methods.md)


@dataclass(frozen=True)
class PartitionConfig:
    """How the training split is divided among sites (see fedgan.partition)."""

    scheme: str = "dirichlet"
    options: dict[str, Any] = field(default_factory=dict)
    # The partition's own seed (None: the scenario's `seed`). Fixing it while `seed` varies keeps every site's
    # items and varies only training (inits, sampling): a seed study of one partition, e.g. retrain's own spread.
    # Last, so that PartitionConfig(scheme, options) keeps its meaning.
    seed: int | None = None


@dataclass(frozen=True)
class TrainingConfig:
    """The federated GAN's optimisation: one round = one generator step (every site one or more D steps)."""

    aggregator: str = "ua"
    rounds: int = 600
    batch_size: int = 64
    d_steps: int = 1
    lr_generator: float = 2e-4
    lr_discriminator: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    r1_gamma: float = 0.0
    site_weights: str = "size"
    label_sampling: str = "uniform"
    real_sampling: str = "shard"
    r1_target: str = "logit"
    lr_schedule: str = "constant"
    checkpoint_every: int = 100  # rounds between checkpoints (0: only after forget requests and at the end)
    reply_limit: float = 1e4  # a site reply with a larger |logit| or |input gradient| is rejected (reply_screen)


@dataclass(frozen=True)
class EvaluationConfig:
    """When and how much to measure: FID_LeNet/KID every `every` rounds on `samples` generated images."""

    every: int = 100
    samples: int = 2000
    final_samples: int = 5000
    evaluator_epochs: int = 4
    grid_per_class: int = 10


@dataclass(frozen=True)
class EngineConfig:
    """Which engine runs the sites: Flower's Ray simulation (`flower`), the in-process loop (`inprocess`), or
    site groups in process (`batched`)."""

    name: str = "flower"
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    device: str = "auto"
    batching: str = "auto"  # site groups: vmap (one batched computation), loop (site by site), auto (by device)
    round_timeout: float = 600.0
    poll_interval: float = 0.002  # Flower: seconds between pulls for replies where no reply event wakes the server
    precision: str = "float32"  # or "bfloat16": mixed precision for the training computations (fedgan.precision)


@dataclass(frozen=True)
class CompareConfig:
    """Run the same scenario once per listed aggregator (and per listed seed), side by side (empty: a single run)."""

    aggregators: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()  # empty: the scenario's seed only


@dataclass(frozen=True)
class UnlearningConfig:
    """The [unlearning] table: which methods serve forget requests, and the cascade's knobs
    (docs/methods.md, Cascaded GAN unlearning).

    One stage = `stage_d_steps` D steps at each requesting site, then `stage_g_rounds` normal UA rounds of G, with
    G's learning rate multiplied by `generator_lr_scale` while a method runs (the server's share of the request).
    `fake_label` is y_fake, a number in [0, 1] or ``"generated"`` (mean D on the stage's synthetic batch).
    `item_stage_passes`: in a batch of item requests only, each fake-label stage runs at least that many passes
    over a site's forgotten items (`UnlearningJob.stage_steps`). `drop_class_weight`: for class requests, the
    server zeroes the requesting sites' weights for the class (w_s(c) -> 0) before the cascade instead of after it.
    `share_snapshots`: a certificate's class shares are the mean over that many snapshots of each side (before,
    every method, retrain), `share_spacing` plain UA rounds apart, run on the side's federation and then undone.
    `retrain_seeds`: retrain runs under that many training seeds on the run's partition (`retrain_spread`);
    without retrain among the methods there is no retrain to repeat, and it does nothing.
    `partial` ([unlearning.partial], TOML keys): what a batch holding a partial class request (a class some other
    site keeps) is served with instead (`for_batch`); `PARTIAL_RECIPE` unless the scenario gives the table (an
    empty table: partial requests use [unlearning] as is). The first method listed (other than retrain) is the one
    the federation continues from; `retrain` is the gold standard every other method is compared with.

    Proofs (`fedgan.unlearning.proof`): the other methods, retrain and every measurement run on `proof_workers`
    Ray workers ("auto": one per `proof_threads` CPU threads of this machine; 0: in line, the federation waits),
    each with `proof_threads` torch threads and a `proof_gpus` share of a GPU.
    """

    # Defaults chosen by bench/cascade_ablation.py on class-forget.toml (stages, steps, rounds), then on every kind of
    # class request (bench/README.md, issue 17): G at its own rate with 40 repair rounds keeps the retained classes
    # where ×4 without repair wrecks them once the class is spread over many sites.
    methods: tuple[str, ...] = ("cascaded", "retrain")
    stages: int = 5
    stage_d_steps: int = 10
    # Item-only batches: each fake-label stage passes over a site's forgotten items at least this many times
    # (max(stage-d-steps, ceil(passes * |F_s| / batch)) steps; 0: stage-d-steps as is). 10 steps pass over 64 items
    # ten times but over 800 items 0.8 times, which left the attack's gap to retrain in place; 6 passes met the item
    # target on two seeds, 3 on one (bench/README.md, issue 17, "Large item requests").
    item_stage_passes: float = 6.0
    stage_g_rounds: int = 2
    generator_lr_scale: float = 1.0
    weight: float = 1.0
    fake_label: Any = 0.0
    relearn_rounds: int = 10
    # cascaded (ours): rounds after the stages in which every site takes its D step against G's samples while G
    # holds still, so that the discriminators the stages moved settle against G before the repair steers it
    recalibrate_rounds: int = 0
    repair_rounds: int = 40  # cascaded, fnn: G rounds at G's own learning rate after the stages
    # The repair balance (ours, fedgan.unlearning.repair_balance): "none", "holders" or "all" answers' weights in the
    # repair rounds scaled by their smoothed (ρ / w)^(−gain), read off each round's own answers.
    repair_balance: str = "none"
    repair_balance_gain: float = 1.0
    noise_steps: int = 40
    impair_lr_scale: float = 10.0
    drop_class_weight: bool = False
    fnn_layer: str = DEFAULT_DISCRIMINATOR_LAYER  # `fnn`'s layer type (fedgan.forgetting_layers)
    fnn_tau: float = DEFAULT_TAU  # fixed types: retention time τ in unlearning iterations
    fnn_tau_min: float = DEFAULT_TAU_MIN  # varying types: τ of the most active neuron ...
    fnn_tau_max: float = DEFAULT_TAU_MAX  # ... and of the least active
    fnn_fraction: float = DEFAULT_FRACTION  # ranked types: share of neurons ranked most active on the forget set
    mia_size: int = 64  # F: forgotten items attacked
    mia_nonmembers: int = 1000  # N and R: 1,000 non-members resolve a TPR at 0.1 % FPR
    lira_references: int = 8  # reference discriminators of the per-example attack (0: population attack only)
    lira_steps: int = 200  # D steps each reference trains for
    eval_samples: int = 10000  # class shares near 8 % then carry a standard error of 0.27 points
    # Class shares (and the forget-class rate) averaged over this many snapshots, `share-spacing` plain rounds apart,
    # on every side of a certificate (ours; 1: the one snapshot at the end of each side). A GAN's class shares
    # wander from round to round by as much as the gaps certified (bench/README.md, "How far class shares wander").
    share_snapshots: int = 1
    share_spacing: int = 10
    # Retrain under this many training seeds (the run's seed, then seed + 1, ...; every one on the run's partition,
    # `partition.seed`): the certificate's `retrain_spread` gives each metric's mean and standard deviation over
    # them and each method's gap in those deviations (ours; 1: one retrain). Retrain is one draw of a random
    # process, and the 1-point share targets are of the size of its seed-to-seed spread (bench/README.md).
    retrain_seeds: int = 1
    downstream_samples: int = 3000
    downstream_epochs: int = 2
    membership_attack: bool = True  # item requests: the simulated attacker's query.logits channel (off: no MIA)
    proof_workers: Any = "auto"
    proof_threads: int = 1
    proof_gpus: float = 0.0
    partial: dict[str, Any] = field(default_factory=lambda: dict(PARTIAL_RECIPE))

    def for_batch(self, partial: bool) -> UnlearningConfig:
        """The settings a batch is served with: `partial`'s keys over these when the batch holds a partial class
        request (every method of the batch, so the proof compares like with like)."""
        if not partial or not self.partial:
            return self
        return dataclasses.replace(self, **{_python_key(key): value for key, value in self.partial.items()})


@dataclass(frozen=True)
class Scenario:
    """A whole experiment. `to_dict()` gives the resolved form written into every run directory."""

    name: str = "unnamed"
    seed: int = 0
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    sites: SitesConfig = field(default_factory=SitesConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    model: ModelSpec = field(default_factory=ModelSpec)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    unlearning: UnlearningConfig = field(default_factory=UnlearningConfig)
    forget: tuple[ForgetRequest, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The resolved scenario as plain data (JSON/TOML-serialisable); `scenario_from_dict` reads it back."""
        data = {f.name: dataclasses.asdict(getattr(self, f.name)) if f.name in _SECTIONS else getattr(self, f.name)
                for f in dataclasses.fields(self)}
        data["forget"] = [request.to_dict() for request in self.forget]
        return data

    def to_json(self) -> str:
        """Canonical JSON of the resolved scenario (sent to sites, hashed for caches)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **sections: Any) -> Scenario:
        """A copy with some sections or fields replaced, re-validated."""
        scenario = dataclasses.replace(self, **sections)
        validate(scenario)
        return scenario


# Tables whose free-form keys are passed on to a registry entry (loader or partitioner options).
_OPTION_TABLES = {"data": ("name", "root", "train_limit", "classes"), "partition": ("scheme", "seed")}
_SECTIONS: dict[str, type] = {
    "data": DataConfig, "sites": SitesConfig, "partition": PartitionConfig, "model": ModelSpec,
    "training": TrainingConfig, "evaluation": EvaluationConfig, "engine": EngineConfig, "compare": CompareConfig,
    "unlearning": UnlearningConfig,
}


def _python_key(key: str) -> str:
    """TOML's kebab-case to Python's snake_case (the one place this conversion happens)."""
    return key.replace("-", "_")


def _toml_key(name: str) -> str:
    return name.replace("_", "-")


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check `value` against a field's type annotation; ints are accepted where floats are expected."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ScenarioError(where, f"got {value!r}, expected a list", 'write it as ["a", "b"]')
        return tuple(_coerce(v, args[0], where) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ScenarioError(where, f"got {value!r}, expected a table", "write it as a TOML table")
        return dict(value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool) and (type(value) is not annotation):
        kind = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[annotation]
        raise ScenarioError(where, f"got {value!r}, expected {kind}", f"set {where} to {kind}")
    return value


def _build_section(name: str, raw: Any) -> Any:
    """One table of the TOML file -> its frozen dataclass, rejecting unknown keys and wrong types."""
    cls = _SECTIONS[name]
    if not isinstance(raw, dict):
        raise ScenarioError(name, f"got {raw!r}, expected a table [{name}]", f"write it as [{name}] with keys below")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for key, value in raw.items():
        attr = _python_key(key)
        where = f"{name}.{key}"
        if name in _OPTION_TABLES and attr not in _OPTION_TABLES[name]:
            options[attr] = value  # passed to the loader/partitioner, which validates its own options
        elif attr in known and attr != "options":
            values[attr] = _coerce(value, hints[attr], where)
        else:
            valid = ", ".join(sorted(_toml_key(k) for k in known if k != "options"))
            raise ScenarioError(where, "unknown key", f"valid keys in [{name}]: {valid}")
    if name in _OPTION_TABLES:
        values["options"] = options
    return cls(**values)


def scenario_from_dict(raw: dict[str, Any]) -> Scenario:
    """Build and validate a Scenario from parsed TOML (or the dict of `Scenario.to_dict`)."""
    top: dict[str, Any] = {}
    for key, value in raw.items():
        attr = _python_key(key)
        if attr in _SECTIONS:
            if attr in _OPTION_TABLES and isinstance(value, dict) and "options" in value:
                value = {**{k: v for k, v in value.items() if k != "options"}, **value["options"]}
            top[attr] = _build_section(attr, value)
        elif attr in ("name", "description"):
            top[attr] = _coerce(value, str, key)
        elif attr == "seed":
            top[attr] = _coerce(value, int, key)
        elif attr == "forget":
            if not isinstance(value, list):
                raise ScenarioError("forget", f"got {value!r}", "write each request as a [[forget]] table")
            top[attr] = tuple(ForgetRequest.from_dict(item, f"forget[{i}]") for i, item in enumerate(value))
        else:
            valid = ", ".join(["name", "seed", "description", "forget", *sorted(_SECTIONS)])
            raise ScenarioError(key, "unknown top-level key", f"valid top-level keys and tables: {valid}")
    scenario = Scenario(**top)
    validate(scenario)
    return scenario


def shipped_scenarios_dir() -> Path:
    """The folder of the scenarios shipped with fedgan: `scenarios/` beside `fedgan/` in a checkout, and the
    installed `scenarios` package (its TOML files are package data) in a wheel."""
    return Path(__file__).resolve().parents[1] / "scenarios"


def shipped_scenario_names() -> tuple[str, ...]:
    """Names of the shipped scenarios (file stems), sorted."""
    return tuple(sorted(p.stem for p in shipped_scenarios_dir().glob("*.toml")))


def resolve_scenario_path(path_or_name: str | Path) -> Path:
    """A scenario file: `path_or_name` if it is a file, else the shipped scenario of that name (``quickstart``)."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    shipped = shipped_scenarios_dir() / (path.name if path.suffix == ".toml" else f"{path.name}.toml")
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    names = ", ".join(shipped_scenario_names())
    raise ScenarioError("scenario", f"{str(path_or_name)!r} is neither a file nor a shipped scenario",
                        f"give the path of a TOML file or one of: {names}")


def load_scenario(path_or_name: str | Path) -> Scenario:
    """Read and validate a scenario: a TOML file's path, or the name of a shipped scenario (``quickstart``)."""
    path = resolve_scenario_path(path_or_name)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ScenarioError("scenario", f"{path} is not valid TOML ({error})", "fix the TOML syntax") from None
    raw.setdefault("name", path.stem)
    return scenario_from_dict(raw)


# --------------------------------------------------------------------------------------------------------------
# Validation: one rule per line, each naming the field and the fix.
# --------------------------------------------------------------------------------------------------------------


def _require(ok: bool, where: str, problem: str, fix: str) -> None:
    if not ok:
        raise ScenarioError(where, problem, fix)


def _one_of(value: Any, choices: typing.Iterable[str], where: str) -> None:
    choices = tuple(choices)
    _require(value in choices, where, f"got {value!r}", f"use one of: {', '.join(choices)}")


def validate(s: Scenario) -> None:
    """Check the values that types cannot (ranges, registry names, contradictions). Raises ScenarioError."""
    from fedgan.aggregation import AGGREGATORS
    from fedgan.models import ARCHITECTURES

    _require(s.seed >= 0, "seed", f"got {s.seed}", "use a non-negative integer")
    _require(s.sites.count >= 1, "sites.count", f"got {s.sites.count}", "use at least 1 site")
    _require(s.sites.per_node >= 1, "sites.per-node", f"got {s.sites.per_node}", "use 1 or more sites per node")
    limit = s.data.train_limit
    _require(limit is None or limit >= 1, "data.train-limit", f"got {limit}", "use a positive number of items")
    _require(limit is None or limit >= s.sites.count, "data.train-limit",
             f"got {limit}, fewer items than the {s.sites.count} sites", "keep at least one item per site")
    _one_of(s.model.architecture, ARCHITECTURES, "model.architecture")
    _require(s.model.latent_dim >= 1, "model.latent-dim", f"got {s.model.latent_dim}", "use a positive integer")
    _require(s.model.width >= 4, "model.width", f"got {s.model.width}", "use an integer of at least 4")
    t = s.training
    _one_of(t.aggregator, AGGREGATORS, "training.aggregator")
    _require(t.rounds >= 1, "training.rounds", f"got {t.rounds}", "use at least 1 round")
    _require(t.batch_size >= 2, "training.batch-size", f"got {t.batch_size}", "use a batch of at least 2")
    _require(t.d_steps >= 1, "training.d-steps", f"got {t.d_steps}", "use at least 1 discriminator step")
    for key in ("lr_generator", "lr_discriminator"):
        value = getattr(t, key)
        _require(0 < value < 1, f"training.{_toml_key(key)}", f"got {value}", "use a learning rate in (0, 1)")
    for key in ("beta1", "beta2"):
        value = getattr(t, key)
        _require(0 <= value < 1, f"training.{key}", f"got {value}", "use a value in [0, 1)")
    _require(t.r1_gamma >= 0, "training.r1-gamma", f"got {t.r1_gamma}", "use 0 (off) or a positive weight")
    _one_of(t.site_weights, SITE_WEIGHTS, "training.site-weights")
    _one_of(t.label_sampling, LABEL_SAMPLING, "training.label-sampling")
    _one_of(t.real_sampling, REAL_SAMPLING, "training.real-sampling")
    _one_of(t.r1_target, R1_TARGETS, "training.r1-target")
    _one_of(t.lr_schedule, LR_SCHEDULES, "training.lr-schedule")
    _require(t.lr_schedule == "constant" or not s.forget, "training.lr-schedule",
             f"{t.lr_schedule!r} cannot be combined with [[forget]] requests yet (unlearning rounds would run on the "
             "decayed learning rate)", 'use lr-schedule = "constant" in scenarios with forget requests')
    _require(
        t.site_weights != "per_class" or s.model.conditional, "training.site-weights",
        "per_class weights need a conditional generator", "set model.conditional = true or use size/uniform",
    )
    e = s.evaluation
    _require(e.every >= 0, "evaluation.every", f"got {e.every}", "use 0 (final only) or a positive round count")
    _require(e.samples >= 2, "evaluation.samples", f"got {e.samples}", "use at least 2 samples")
    _require(e.final_samples >= 2, "evaluation.final-samples", f"got {e.final_samples}", "use at least 2 samples")
    _require(e.evaluator_epochs >= 1, "evaluation.evaluator-epochs", f"got {e.evaluator_epochs}", "use at least 1")
    _require(e.grid_per_class >= 1, "evaluation.grid-per-class", f"got {e.grid_per_class}", "use at least 1")
    g = s.engine
    _one_of(g.name, ENGINES, "engine.name")
    _one_of(g.device, DEVICES, "engine.device")
    _one_of(g.batching, BATCHING, "engine.batching")
    _one_of(g.precision, PRECISIONS, "engine.precision")
    _require(0 < g.num_cpus <= MAX_CPUS_PER_SITE, "engine.num-cpus", f"got {g.num_cpus}",
             f"use a positive number of CPUs per site, at most {MAX_CPUS_PER_SITE}")
    _require(g.num_gpus >= 0, "engine.num-gpus", f"got {g.num_gpus}", "use 0 or a positive GPU share per site")
    _require(g.round_timeout > 0, "engine.round-timeout", f"got {g.round_timeout}", "use a positive number of seconds")
    _require(0 < g.poll_interval <= 10, "engine.poll-interval", f"got {g.poll_interval}",
             "use a positive number of seconds (0.002 by default; Flower's own grid uses 0.1)")
    for name in s.compare.aggregators:
        _one_of(name, AGGREGATORS, "compare.aggregators")
    for seed in s.compare.seeds:
        _require(seed >= 0, "compare.seeds", f"got {seed}", "use non-negative integers")
    _require(len(set(s.compare.seeds)) == len(s.compare.seeds), "compare.seeds", f"got {list(s.compare.seeds)}",
             "list each seed once")
    _require(not s.compare.seeds or s.compare.aggregators, "compare.seeds", "given without compare.aggregators",
             'list the aggregators to compare, e.g. aggregators = ["ua", "avg"]')
    _require(s.partition.seed is None or s.partition.seed >= 0, "partition.seed", f"got {s.partition.seed}",
             "use a non-negative integer, or leave it out to partition with the scenario's seed")
    _validate_partition_options(s)
    _require(s.training.reply_limit > 0, "training.reply-limit", f"got {s.training.reply_limit}",
             "use a positive bound on |logit| and |input gradient| (1e4 by default)")
    _require(s.training.checkpoint_every >= 0, "training.checkpoint-every", f"got {s.training.checkpoint_every}",
             "use 0 (checkpoints only after forget requests and at the end) or a number of rounds")
    _validate_unlearning(s)


def _validate_unlearning(s: Scenario) -> None:
    """The [unlearning] table and the [[forget]] schedule (items are checked against the shards when served)."""
    _validate_unlearning_config(s.unlearning)
    _validate_partial(s.unlearning)
    for i, request in enumerate(s.forget):
        _require(request.round is not None, f"forget[{i}].round", "missing",
                 "give the round after which the request is served (round = R)")
        _require(request.site < s.sites.count, f"forget[{i}].site", f"got {request.site}",
                 f"name a site in 0..{s.sites.count - 1}")
        if request.round is not None:
            _require(request.round <= s.training.rounds, f"forget[{i}].round", f"got {request.round}",
                     f"use a round in 1..{s.training.rounds} (training.rounds)")


def _validate_partial(u: UnlearningConfig) -> None:
    """[unlearning.partial]: known keys of the right types, and the settings they make valid."""
    hints = typing.get_type_hints(UnlearningConfig)
    for key, value in u.partial.items():
        where = f"unlearning.partial.{key}"
        _require(key in PARTIAL_KEYS, where, "unknown key",
                 f"valid keys in [unlearning.partial]: {', '.join(PARTIAL_KEYS)}")
        _coerce(value, hints[_python_key(key)], where)
    try:
        _validate_unlearning_config(u.for_batch(True))
    except ScenarioError as error:  # name the table the bad value came from
        field_name = error.field.replace("unlearning.", "unlearning.partial.", 1)
        raise ScenarioError(field_name, error.problem, error.fix) from None


def _validate_unlearning_config(u: UnlearningConfig) -> None:
    """The values of one set of [unlearning] settings."""
    from fedgan.unlearning import METHODS

    _require(len(u.methods) >= 1, "unlearning.methods", "got an empty list", 'name at least one, e.g. ["cascaded"]')
    for name in u.methods:
        _one_of(name, METHODS, "unlearning.methods")
    for key in ("stages", "stage_d_steps", "mia_size", "mia_nonmembers", "eval_samples", "downstream_samples",
                "downstream_epochs", "lira_steps", "share_snapshots", "share_spacing", "retrain_seeds"):
        value = getattr(u, key)
        _require(value >= 1, f"unlearning.{_toml_key(key)}", f"got {value}", "use a positive integer")
    for key in ("stage_g_rounds", "relearn_rounds", "recalibrate_rounds", "repair_rounds", "noise_steps"):
        value = getattr(u, key)
        _require(value >= 0, f"unlearning.{_toml_key(key)}", f"got {value}", "use 0 or a positive integer")
    _require(u.lira_references == 0 or (u.lira_references >= 4 and u.lira_references % 2 == 0),
             "unlearning.lira-references", f"got {u.lira_references}",
             "use 0 (no per-example attack) or an even number >= 4 (half the references hold each target, and "
             "each side needs two to measure a spread)")
    from fedgan.forgetting_layers import FORGETTING_LAYER_TYPES

    _one_of(u.fnn_layer, FORGETTING_LAYER_TYPES, "unlearning.fnn-layer")
    _require(u.fnn_tau > 0, "unlearning.fnn-tau", f"got {u.fnn_tau}", "use a positive retention time")
    _require(0 < u.fnn_tau_min <= u.fnn_tau_max, "unlearning.fnn-tau-min",
             f"got fnn-tau-min {u.fnn_tau_min}, fnn-tau-max {u.fnn_tau_max}", "use 0 < fnn-tau-min <= fnn-tau-max")
    _require(0 < u.fnn_fraction <= 1, "unlearning.fnn-fraction", f"got {u.fnn_fraction}", "use a share in (0, 1]")
    _require(u.item_stage_passes >= 0, "unlearning.item-stage-passes", f"got {u.item_stage_passes}",
             "use 0 (stage-d-steps as is) or a positive number of passes over the forgotten items")
    _require(u.weight >= 0, "unlearning.weight", f"got {u.weight}", "use a non-negative weight (λ)")
    _require(u.impair_lr_scale > 0, "unlearning.impair-lr-scale", f"got {u.impair_lr_scale}", "use a positive factor")
    _require(u.generator_lr_scale > 0, "unlearning.generator-lr-scale", f"got {u.generator_lr_scale}",
             "use a positive factor (1 = G's training learning rate)")
    from fedgan.unlearning.repair_balance import BALANCE_MODES

    _require(u.repair_balance in BALANCE_MODES, "unlearning.repair-balance", f"got {u.repair_balance!r}",
             f"use one of {', '.join(repr(m) for m in BALANCE_MODES)}")
    _require(u.repair_balance_gain > 0, "unlearning.repair-balance-gain", f"got {u.repair_balance_gain}",
             "use a positive exponent (1: the weight divided by ρ / w)")
    workers = u.proof_workers
    _require(workers == "auto" or (isinstance(workers, int) and not isinstance(workers, bool) and workers >= 0),
             "unlearning.proof-workers", f"got {workers!r}", 'use "auto", 0 (in line) or a number of Ray workers')
    _require(1 <= u.proof_threads <= MAX_CPUS_PER_SITE, "unlearning.proof-threads", f"got {u.proof_threads}",
             f"use a positive integer, at most {MAX_CPUS_PER_SITE}")
    _require(0 <= u.proof_gpus <= 1, "unlearning.proof-gpus", f"got {u.proof_gpus}",
             "use a GPU share in [0, 1] (0: the workers run on the CPU)")
    label = u.fake_label
    numeric = isinstance(label, (int, float)) and not isinstance(label, bool)
    _require((numeric and 0 <= label <= 1) or label == "generated", "unlearning.fake-label", f"got {label!r}",
             'use a number in [0, 1] or "generated"')


def _validate_partition_options(s: Scenario) -> None:
    """Cheap checks of partition options that need no data (the partitioner re-checks against the data)."""
    alpha = s.partition.options.get("alpha")
    if s.partition.scheme == "dirichlet" and alpha is not None:
        ok = isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and alpha > 0
        _require(ok, "partition.alpha", f"got {alpha!r}", "use a positive number (small = more label skew)")
    k = s.partition.options.get("k")
    if s.partition.scheme == "classes_per_site" and k is not None:
        ok = isinstance(k, int) and not isinstance(k, bool) and k >= 1
        _require(ok, "partition.k", f"got {k!r}", "use a positive integer number of classes per site")
