"""Ablation of the cascade's knobs on one trained federation, against one retrain, measured in the same run.

Trains the scenario's federation once (in process) up to its first forget request's round, keeps that state, runs
`retrain` once, then serves the same request with each variant of [unlearning] from the same state, and prints
one row per variant: forget-class rate (class requests) or AUC(F vs N) with the TPR at 1 % FPR and the per-example
attack's numbers (item requests), FID_LeNet on retained classes, downstream accuracy, the L1 distance of the
retained classes' shares to retrain's, generator rounds, seconds, and the speed-ups over retrain.

    .venv/bin/python bench/cascade_ablation.py scenarios/class-forget.toml [--out runs/ablation-class-forget]

Variants are `key=value,...` strings over [unlearning] keys (snake_case), e.g. "stages=5,generator_lr_scale=2",
served as written even for a batch holding a partial class request ([unlearning.partial] is not applied over
them); the empty variant "" is the scenario's own [unlearning], [unlearning.partial] included.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.trained_federation import TrainedFederation  # noqa: E402
from fedgan.engine import load_federation_data, site_positions  # noqa: E402
from fedgan.forget import ForgetRequest  # noqa: E402
from fedgan.preparation import prepare  # noqa: E402
from fedgan.scenario import Scenario, load_scenario  # noqa: E402
from fedgan.seeding import derive_seed  # noqa: E402
from fedgan.storage import atomic_write_text  # noqa: E402
from fedgan.unlearning.certificate import retained_share_l1  # noqa: E402

DEFAULT_VARIANTS = [
    "stages=5,stage_d_steps=20,stage_g_rounds=3",
    "stages=5,stage_d_steps=20,stage_g_rounds=3,generator_lr_scale=2",
    "stages=5,stage_d_steps=20,stage_g_rounds=3,generator_lr_scale=4",
    "stages=3,stage_d_steps=20,stage_g_rounds=3,generator_lr_scale=4",
    "stages=5,stage_d_steps=10,stage_g_rounds=2,generator_lr_scale=4",
    "stages=5,stage_d_steps=20,stage_g_rounds=3,fake_label=generated",
    "stages=5,stage_d_steps=20,stage_g_rounds=3,weight=4",
]


def parse_variant(text: str) -> dict:
    values = {}
    for part in filter(None, text.split(",")):
        key, raw = part.split("=", 1)
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    return values


def redrawn(scenario: Scenario, request: ForgetRequest) -> ForgetRequest:
    """An item request with as many items drawn from its site's shard under `scenario`'s seed (class requests
    unchanged), so that another seed's partition holds them."""
    if request.kind != "items":
        return request
    ids = load_federation_data(scenario).train.ids.numpy()[site_positions(scenario)[request.site]]
    rng = np.random.default_rng(derive_seed(scenario.seed, "redrawn-items", request.site))
    return dataclasses.replace(request, items=tuple(int(i) for i in rng.choice(ids, len(request.items), replace=False)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario")
    parser.add_argument("--out", default=None)
    parser.add_argument("--methods", default="cascaded", help="comma-separated methods to run for each variant")
    parser.add_argument("--variant", action="append", help="key=value,... (repeatable); default: a built-in set")
    parser.add_argument("--seed", type=int, default=None, help="the scenario's seed instead of its own")
    parser.add_argument("--request", type=int, default=0, help="which [[forget]] entry to serve (0: the first)")
    parser.add_argument("--batch", action="store_true",
                        help="serve every request of that round together (as the scenario does), report this one")
    parser.add_argument("--reuse", action="store_true",
                        help="take the trained federation and retrain's entry from an earlier call's --out")
    parser.add_argument("--redraw-items", action="store_true",
                        help="item requests: as many items, drawn (seeded) from the site's shard under this seed's "
                             "partition (for --seed: the scenario's item ids belong to its own seed's partition)")
    parser.add_argument("--share-snapshots", type=int, default=None,
                        help="[unlearning] share-snapshots for every side (retrain included) instead of the scenario's")
    parser.add_argument("--share-spacing", type=int, default=None, help="[unlearning] share-spacing likewise")
    parser.add_argument("--retrain-seeds", type=int, default=None,
                        help="[unlearning] retrain-seeds instead of the scenario's (1: the first training seed only; "
                             "its numbers are the reference either way)")
    args = parser.parse_args()
    scenario = load_scenario(args.scenario)
    overrides = {key: value for key, value in (("share_snapshots", args.share_snapshots),
                                               ("share_spacing", args.share_spacing),
                                               ("retrain_seeds", args.retrain_seeds)) if value is not None}
    if overrides:
        scenario = scenario.replace(unlearning=dataclasses.replace(scenario.unlearning, **overrides))
    if args.seed is not None:
        scenario = scenario.replace(seed=args.seed)
    out = Path(args.out or f"runs/ablation-{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if args.redraw_items:
        scenario = scenario.replace(forget=tuple(redrawn(scenario, r) for r in scenario.forget))
    request = scenario.forget[args.request]
    rounds = request.round
    # --batch: every request due in that round is served together, as the scenario serves them; rows are this one's
    batch = [r for r in scenario.forget if r.round == rounds] if args.batch else [request]
    position = batch.index(request)
    splits, evaluator = prepare(scenario)

    # ---------------- train once up to the request ----------------
    out.mkdir(parents=True, exist_ok=True)
    federation = TrainedFederation(scenario, splits, evaluator, rounds, cache=out / "trained.pt", reuse=args.reuse)
    print(json.dumps({"scenario": scenario.name, "rounds": rounds, "train_seconds": federation.train_seconds}),
          flush=True)

    def serve(name: str, unlearning) -> dict:
        return federation.serve(unlearning, batch, out / name)[position]

    # ---------------- retrain once (the reference for every variant) ----------------
    # Retrain measured with the same share snapshots as the variants (`share-snapshots`): one file per setting.
    u = scenario.unlearning
    reference_file = out / ("retrain.json" if u.share_snapshots == 1
                            else f"retrain-shares-{u.share_snapshots}x{u.share_spacing}.json")
    if args.reuse and reference_file.exists():
        reference = json.loads(reference_file.read_text())
    else:
        reference = serve("retrain", dataclasses.replace(scenario.unlearning, methods=("retrain",)))
        atomic_write_text(reference_file, json.dumps(reference))
    retrain_seconds, key = reference["seconds"], ("forget_class_rate" if request.kind == "class"
                                                  else "mia_auc_forget_vs_nonmember")
    print(json.dumps({"retrain_seconds": retrain_seconds, key: reference[key]["after"],
                      "fid_lenet_retained": reference["fid_lenet_retained"]["after"],
                      "downstream_accuracy": reference["downstream_accuracy"]["after"],
                      "class_histogram": reference["class_histogram"]["after"]}), flush=True)
    retrain_shares = reference["class_histogram"]["after"]
    retrain_single = reference.get("class_histogram_single", {}).get("after")
    for method in args.methods.split(","):
        for text in args.variant or DEFAULT_VARIANTS:
            # A variant is served as written, a partial request's batch included; "" is the scenario's own settings,
            # its [unlearning.partial] included.
            overrides = {"partial": {}, **parse_variant(text)} if text else {}
            config = dataclasses.replace(scenario.unlearning, methods=(method,), **overrides)
            entry = serve(f"{method}-{text}", config)
            print(json.dumps({
                "method": method, "variant": text,
                key: {"before": entry[key]["before"], "after": entry[key]["after"], "retrain": reference[key]["after"]},
                "fid_lenet_retained": {"before": entry["fid_lenet_retained"]["before"],
                                       "after": entry["fid_lenet_retained"]["after"]},
                "downstream_accuracy": {"before": entry["downstream_accuracy"]["before"],
                                        "after": entry["downstream_accuracy"]["after"],
                                        "retrain": reference["downstream_accuracy"]["after"]},
                "retained_share_l1_to_retrain": {
                    side: retained_share_l1(entry["class_histogram"][side], retrain_shares, request.forget_class)
                    for side in ("before", "after")},
                **{extra: {"before": entry[extra]["before"], "after": entry[extra]["after"],
                           "retrain": reference.get(extra, {}).get("after")}
                   for extra in ("forget_class_rate_single", "forget_class_rate_snapshot_sd", "class_share_snapshot_sd",
                                 "forget_class_rate_unasked", "forget_class_rate_asked",
                                 "mia_tpr_at_1pct_fpr_forget", "lira_auc_forget_vs_nonmember",
                                 "lira_tpr_at_1pct_fpr_forget")
                   if isinstance(entry.get(extra), dict)},
                **({"retained_share_l1_to_retrain_single": {
                    side: retained_share_l1(entry["class_histogram_single"][side], retrain_single, request.forget_class)
                    for side in ("before", "after")}} if retrain_single is not None else {}),
                "class_histogram_after": entry["class_histogram"]["after"],
                "rounds": entry["rounds"], "seconds": entry["seconds"],
                "speedup_rounds": rounds / max(entry["rounds"], 1),
                "speedup_seconds": retrain_seconds / entry["seconds"],
            }), flush=True)


if __name__ == "__main__":
    main()
