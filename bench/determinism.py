"""Do the engines agree? The same scenario and seed in process and through Flower, compared number for number.

Every engine's sites compute with `engine.num-cpus` torch threads (`fedgan.engine.site_thread_count`), and the
server's G with this process's threads in both, so the two runs should be identical. Usage:

    .venv/bin/python bench/determinism.py [--scenario quickstart] [--rounds 100] [--every 50]

Prints, per engine, the FID_LeNet of every evaluation and the final one, and the largest difference of any round
metric between the two runs (0.0: identical).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedgan.scenario import load_scenario  # noqa: E402
from scenarios.runner import run_scenario, with_overrides  # noqa: E402

KEYS = ("generator_loss", "discriminator_loss", "d_real", "d_fake", "d_aggregate")


def lines(run: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenario", default="quickstart")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--every", type=int, default=50)
    args = parser.parse_args()
    base = with_overrides(load_scenario(args.scenario), rounds=args.rounds)
    base = base.replace(evaluation=dataclasses.replace(base.evaluation, every=args.every))
    root = Path(tempfile.mkdtemp(prefix="fedgan-determinism-"))
    runs = {}
    for engine in ("inprocess", "flower"):
        scenario = base.replace(engine=dataclasses.replace(base.engine, name=engine))
        summary = run_scenario(scenario, root / engine)
        runs[engine] = {"fid": [e["fid_lenet"] for e in lines(root / engine, "evaluation")],
                        "final_fid": summary["fid_lenet"], "rounds": lines(root / engine, "round")}
        print(json.dumps({"engine": engine, "fid_lenet": runs[engine]["fid"]}), flush=True)
    a, b = runs["inprocess"]["rounds"], runs["flower"]["rounds"]
    worst = max(abs(x[k] - y[k]) for x, y in zip(a, b) for k in KEYS)
    print(json.dumps({"scenario": base.name, "rounds": args.rounds, "largest_round_metric_difference": worst,
                      "final_fid_inprocess": runs["inprocess"]["final_fid"],
                      "final_fid_flower": runs["flower"]["final_fid"]}), flush=True)


if __name__ == "__main__":
    main()
