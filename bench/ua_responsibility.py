"""Which site's data does G over-serve? UA responsibilities against the sites' weights, before and after unlearning.

For B samples of G, each site's discriminator gives a logit ℓ_j(x); under Universal Aggregation the responsibility of
site j for a sample is softmax_j(ℓ_j + log w_j), and its mean over G's samples, ρ_j, equals the weight w_j when G's
distribution is the weighted mixture of the sites' data (`fedgan.aggregation.site_responsibilities`; our
diagnostic, not a paper's). The script trains the scenario in process up to its first request's round (or reuses
`--cache`), then measures the trained state, serves that round's requests with each of `--methods` from the same
trained state and measures again, and after each method runs `--after-rounds` plain rounds, measuring every
`--every`. Each row: ρ, w, ρ / w, the share of G's samples the evaluator puts in `--class` (default: the last
request's class), and each site's responsibility on those samples. Usage:

    .venv/bin/python bench/ua_responsibility.py scenarios/class-forget-shared.toml [--seed 0]
        [--methods cascaded,retrain] [--after-rounds 300 --every 50] [--samples 4000] [--cache DIR] [--out FILE]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from trained_federation import TrainedFederation  # noqa: E402

from fedgan.aggregation import site_log_weights, site_responsibilities  # noqa: E402
from fedgan.preparation import prepare  # noqa: E402
from fedgan.scenario import load_scenario  # noqa: E402
from fedgan.storage import atomic_write_text  # noqa: E402


def measure(federation: TrainedFederation, label: str, samples: int, forget_class: int) -> dict[str, Any]:
    """ρ, w and the class's share on `samples` images of the federation's current G (its own sampling stream)."""
    server, engine = federation.server, federation.engine
    images = server.sample(samples, f"responsibility-{label}")
    predicted = federation.evaluator.predict(images).numpy()
    logits = torch.stack([engine.query_logits(site, images, None).reshape(-1) for site in server.site_ids])
    log_w = site_log_weights(server.class_counts, np.arange(len(server.site_ids)), None,
                             federation.scenario.training.site_weights)
    weights = torch.exp(log_w[:, 0].double()).numpy()
    rho = site_responsibilities(logits, log_w).numpy()
    in_class = predicted == forget_class
    rho_in_class = (site_responsibilities(logits[:, torch.from_numpy(in_class)], log_w).numpy()
                    if in_class.any() else np.full(len(weights), float("nan")))
    ratio = np.divide(rho, weights, out=np.full_like(rho, np.nan), where=weights > 0)  # a site left empty: no ratio
    return {"state": label, "round": server.round, "class": forget_class, "class_share": float(in_class.mean()),
            "weights": _rounded(weights), "rho": _rounded(rho), "rho_over_w": _rounded(ratio),
            "rho_in_class": _rounded(rho_in_class),
            "class_holders": [int(i) for i in np.nonzero(server.class_counts[:, forget_class])[0]]}


def _rounded(values: np.ndarray) -> list[float | None]:
    return [None if np.isnan(v) else round(float(v), 4) for v in values]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario")
    parser.add_argument("--seed", type=int, default=None, help="the scenario's seed instead of its own")
    parser.add_argument("--methods", default="cascaded,retrain",
                        help="comma-separated methods, each from the trained state")
    parser.add_argument("--after-rounds", type=int, default=0, help="plain rounds after each method")
    parser.add_argument("--every", type=int, default=50, help="measure every N of those rounds")
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--class", dest="forget_class", type=int, default=None)
    parser.add_argument("--cache", default=None, help="folder for the trained federation (reused when present)")
    parser.add_argument("--out", default=None, help="JSON lines, one row per measurement")
    args = parser.parse_args()

    scenario = load_scenario(args.scenario)
    if args.seed is not None:
        scenario = scenario.replace(seed=args.seed)
    if scenario.model.conditional:
        raise SystemExit(f"{args.scenario}: model.conditional = true; this diagnostic reads an unconditional G's "
                         "samples (set model.conditional = false, or pick an unconditional scenario)")
    if not scenario.forget:
        raise SystemExit(f"{args.scenario}: no [[forget]] request to serve (add one, or pick a forget scenario)")
    rounds = scenario.forget[0].round
    batch = [r for r in scenario.forget if r.round == rounds]
    forget_class = args.forget_class if args.forget_class is not None else batch[-1].forget_class
    if forget_class is None:
        raise SystemExit("--class: the last request is not a class request; name the class to follow")
    cache = Path(args.cache or f"runs/responsibility-{scenario.name}-s{scenario.seed}")
    cache.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else cache / f"responsibility-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    splits, evaluator = prepare(scenario)
    federation = TrainedFederation(scenario, splits, evaluator, rounds, cache=cache / "trained.pt", reuse=True)
    rows = [measure(federation, "trained", args.samples, forget_class)]
    print(json.dumps(rows[-1]), flush=True)
    for method in args.methods.split(","):
        unlearning = dataclasses.replace(scenario.unlearning, methods=(method,), retrain_seeds=1)
        federation.serve(unlearning, batch, cache / method)
        rows.append(measure(federation, method, args.samples, forget_class))
        print(json.dumps(rows[-1]), flush=True)
        for step in range(1, args.after_rounds + 1):
            federation.server.step(federation.engine)
            if step % args.every == 0:
                rows.append(measure(federation, f"{method}+{step}", args.samples, forget_class))
                print(json.dumps(rows[-1]), flush=True)
    atomic_write_text(out, "".join(json.dumps(row) + "\n" for row in rows))


if __name__ == "__main__":
    main()
