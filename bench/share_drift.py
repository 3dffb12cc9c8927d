"""How far a federation's class shares wander under plain training: the noise floor of "L1 to retrain".

A forget certificate compares the retained classes' shares after unlearning with retrain's (their L1 distance,
`bench/cascade_ablation.py`). Two GANs trained on the same data do not draw their classes in identical shares, and
one GAN's shares move from round to round, so part of any such distance is not the method's. This script measures
that part on the trained federation `bench/cascade_ablation.py` saved (`--from DIR`: its `trained.pt` and
`retrain.json`): it continues the federation with plain UA rounds — no forget request — and after each of
`--rounds` further rounds prints the L1 distance of the retained classes' shares (the forgotten class left out, the
rest renormalised) to the shares at the start and to retrain's, measured exactly as the certificate measures them
(the certificate's latent draw, `eval-samples` samples, the evaluator's labels).

    .venv/bin/python bench/share_drift.py scenarios/class-forget-spread.toml --from /tmp/abl/spread-s0b \
        [--seed N] [--rounds 40,100,200,400] [--out bench/results/share-drift.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.trained_federation import TrainedFederation  # noqa: E402
from fedgan.evaluation.metrics import class_histogram  # noqa: E402
from fedgan.preparation import prepare  # noqa: E402
from fedgan.scenario import load_scenario  # noqa: E402
from fedgan.storage import atomic_write_json  # noqa: E402
from fedgan.unlearning.measurement import CERTIFICATE_DRAW  # noqa: E402


def retained_shares(histogram: list[float], forget_class: int | None) -> list[float]:
    """The shares of the classes other than `forget_class`, renormalised to sum 1 (the forgotten class's slot 0)."""
    kept = [0.0 if c == forget_class else share for c, share in enumerate(histogram)]
    total = sum(kept) or 1.0
    return [share / total for share in kept]


def l1(a: list[float], b: list[float]) -> float:
    """L1 distance of two histograms."""
    return float(sum(abs(x - y) for x, y in zip(a, b)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario")
    parser.add_argument("--from", dest="source", required=True, help="a bench/cascade_ablation.py --out folder")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--rounds", default="40,100,200,400", help="further plain rounds at which to measure")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    scenario = load_scenario(args.scenario)
    if args.seed is not None:
        scenario = scenario.replace(seed=args.seed)
    request = scenario.forget[0]
    source = Path(args.source)
    splits, evaluator = prepare(scenario)
    federation = TrainedFederation(scenario, splits, evaluator, request.round, cache=source / "trained.pt",
                                   reuse=True)
    retrain = retained_shares(json.loads((source / "retrain.json").read_text())["class_histogram"]["after"],
                              request.forget_class)
    num_classes, samples = splits.train.num_classes, scenario.unlearning.eval_samples

    def shares() -> list[float]:
        fake = federation.server.sample(samples, CERTIFICATE_DRAW)
        return retained_shares(class_histogram(evaluator, fake, num_classes), request.forget_class)

    start = shares()
    rows = [{"further_rounds": 0, "l1_to_start": 0.0, "l1_to_retrain": l1(start, retrain), "shares": start}]
    print(json.dumps(rows[0]), flush=True)
    done = 0
    for target in sorted(int(r) for r in args.rounds.split(",")):
        for _ in range(target - done):
            federation.server.step(federation.engine)
        done = target
        now = shares()
        rows.append({"further_rounds": done, "l1_to_start": l1(now, start), "l1_to_retrain": l1(now, retrain),
                     "shares": now})
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        atomic_write_json(args.out, {"scenario": scenario.name, "seed": scenario.seed, "source": str(source),
                                     "rows": rows})


if __name__ == "__main__":
    main()
