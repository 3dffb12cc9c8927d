"""Retrain's own spread: the proof's reference retrained under several training seeds on one partition (issue 17).

A certificate compares a method with one retrain, and that retrain is one draw of a random process: G's and the
discriminators' initial weights, the latents, the sites' sampling. This script serves one request batch with
`retrain` alone under each training seed given (`seed` = s, `partition.seed` = the scenario's own seed, so every
site holds the same items and the request resolves to the same ids) and reports what each retrain measures — the
forget-class rate (class requests) or AUC(F vs N) (item requests), retained FID_LeNet, downstream accuracy and the
class histogram — then their mean and sample standard deviation. Each retrain starts from a fresh federation: a
retrain trains from round 0 anyway, so no original federation is trained here ("before" is measured on the untrained
G and means nothing). With the scenario's own seed in the list, its retrain equals the one
`bench/cascade_ablation.py` measures for the same batch (the same code path, in process).

    .venv/bin/python bench/retrain_spread.py scenarios/class-forget-shared.toml --request 1 --batch \
        --training-seeds 0,1,2,3 --share-snapshots 5 --out runs/retrain-spread [--against ROWS.jsonl --run LABEL]

`--against` reads rows printed by `bench/cascade_ablation.py` (one JSON object per line; `--run` keeps the rows
whose "run" field is LABEL) and prints each method row's gap to the retrains' mean, in points and in retrain's
standard deviations. Each retrain's entry is kept in `--out` (`retrain-seed-S.json`); `--reuse` takes those back.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cascade_ablation import redrawn  # noqa: E402
from fedgan.engine import InProcessEngine  # noqa: E402
from fedgan.federation import GeneratorServer  # noqa: E402
from fedgan.preparation import prepare  # noqa: E402
from fedgan.scenario import Scenario, load_scenario  # noqa: E402
from fedgan.storage import atomic_write_text  # noqa: E402
from fedgan.unlearning.certificate import retained_share_l1  # noqa: E402
from fedgan.unlearning.orchestrator import ForgetService  # noqa: E402
from fedgan.unlearning.retrain_spread import with_training_seed  # noqa: E402

SCALARS = ("forget_class_rate", "forget_class_rate_single", "mia_auc_forget_vs_nonmember",
           "mia_tpr_at_1pct_fpr_forget", "fid_lenet_retained", "downstream_accuracy")


def retrain_entry(scenario: Scenario, requests: list, position: int, rounds: int, out: Path) -> dict[str, Any]:
    """Serve `requests` with `retrain` alone on a fresh federation at round `rounds`; request `position`'s entry."""
    splits, evaluator = prepare(scenario)
    engine = InProcessEngine(scenario, "cpu")
    server = GeneratorServer(scenario, engine.open(), splits.train.image_shape, splits.train.num_classes,
                             engine.device)
    unlearning = dataclasses.replace(scenario.unlearning, methods=("retrain",))
    service = ForgetService(scenario.replace(unlearning=unlearning), splits, evaluator, out)
    service.serve(server, engine, [r.with_id() for r in requests], rounds)
    return service.results[position]


def summary(entries: dict[int, dict[str, Any]], forget_class: int | None) -> dict[str, Any]:
    """Mean and sample sd of each measured scalar (its "after" side) and of each class share over the seeds, and
    the L1 distance of the retained classes' shares between every two retrains (the noise floor of that L1)."""
    out: dict[str, Any] = {"seeds": sorted(entries)}
    for key in SCALARS:
        values = [e[key]["after"] for e in entries.values() if isinstance(e.get(key), dict)]
        if len(values) == len(entries) and all(v is not None for v in values):
            out[key] = {"values": values, "mean": statistics.fmean(values),
                        "sd": statistics.stdev(values) if len(values) > 1 else None}
    shares = [e["class_histogram"]["after"] for e in entries.values()]
    out["class_histogram"] = {"mean": [statistics.fmean(c) for c in zip(*shares)],
                              "sd": [statistics.stdev(c) if len(c) > 1 else None for c in zip(*shares)]}
    pairs = [retained_share_l1(a, b, forget_class) for i, a in enumerate(shares) for b in shares[i + 1:]]
    out["retained_share_l1_between_retrains"] = {"values": pairs, "mean": statistics.fmean(pairs) if pairs else None}
    return out


def gaps(rows_file: Path, run: str | None, spread: dict[str, Any], forget_class: int | None) -> list[dict[str, Any]]:
    """Each method row of a cascade_ablation output: its gap to the retrains' mean, in points and in sds, and the
    L1 of its retained shares to the retrains' mean shares."""
    found = []
    for line in rows_file.read_text().splitlines():
        if not line.startswith("{"):  # a log's other lines
            continue
        row = json.loads(line)
        if "method" not in row or (run is not None and row.get("run") != run):
            continue
        entry = {"method": row["method"], "variant": row["variant"]}
        for key in ("forget_class_rate", "forget_class_rate_single", "mia_auc_forget_vs_nonmember",
                    "downstream_accuracy"):
            if key in row and key in spread and spread[key]["sd"]:
                after, mean, sd = row[key]["after"], spread[key]["mean"], spread[key]["sd"]
                entry[key] = {"after": after, "gap": after - mean, "gap_in_sd": (after - mean) / sd}
        if "class_histogram_after" in row:
            entry["retained_share_l1_to_retrain_mean"] = retained_share_l1(
                row["class_histogram_after"], spread["class_histogram"]["mean"], forget_class)
        found.append(entry)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario")
    parser.add_argument("--out", default=None)
    parser.add_argument("--seed", type=int, default=None, help="the scenario's seed (and partition) instead of its own")
    parser.add_argument("--training-seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument("--request", type=int, default=0, help="which [[forget]] entry to report (0: the first)")
    parser.add_argument("--batch", action="store_true", help="serve every request of that round together")
    parser.add_argument("--redraw-items", action="store_true", help="as bench/cascade_ablation.py's")
    parser.add_argument("--share-snapshots", type=int, default=None, help="[unlearning] share-snapshots")
    parser.add_argument("--share-spacing", type=int, default=None, help="[unlearning] share-spacing")
    parser.add_argument("--reuse", action="store_true", help="take retrain entries already in --out")
    parser.add_argument("--against", default=None, help="rows of bench/cascade_ablation.py (JSON lines)")
    parser.add_argument("--run", default=None, help="with --against: keep the rows whose 'run' is this")
    args = parser.parse_args()
    scenario = load_scenario(args.scenario)
    if args.seed is not None:
        scenario = scenario.replace(seed=args.seed)
    shares = {k: v for k, v in (("share_snapshots", args.share_snapshots), ("share_spacing", args.share_spacing))
              if v is not None}
    if shares:
        scenario = scenario.replace(unlearning=dataclasses.replace(scenario.unlearning, **shares))
    if args.redraw_items:
        scenario = scenario.replace(forget=tuple(redrawn(scenario, r) for r in scenario.forget))
    request = scenario.forget[args.request]
    batch = [r for r in scenario.forget if r.round == request.round] if args.batch else [request]
    out = Path(args.out or f"runs/retrain-spread-{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)

    entries: dict[int, dict[str, Any]] = {}
    for seed in (int(s) for s in args.training_seeds.split(",")):
        path = out / f"retrain-seed-{seed}.json"
        if args.reuse and path.exists():
            entries[seed] = json.loads(path.read_text())
        else:
            entries[seed] = retrain_entry(with_training_seed(scenario, seed), batch, batch.index(request),
                                          request.round, out / f"seed-{seed}")
            atomic_write_text(path, json.dumps(entries[seed]))
        e = entries[seed]
        print(json.dumps({"training_seed": seed, "seconds": e["seconds"],
                          **{k: e[k]["after"] for k in SCALARS if isinstance(e.get(k), dict)},
                          "class_histogram": e["class_histogram"]["after"]}), flush=True)
    spread = summary(entries, request.forget_class)
    report = {"scenario": scenario.name, "partition_seed": scenario.seed, "request": args.request,
              "batch": args.batch, "share_snapshots": scenario.unlearning.share_snapshots, "spread": spread}
    if args.against:
        report["against"] = gaps(Path(args.against), args.run, spread, request.forget_class)
    atomic_write_text(out / "retrain-spread.json", json.dumps(report, indent=1))
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
