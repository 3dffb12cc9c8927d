"""An unlearning stage at many sites of one group: each site's own `Site` in turn against one stacked computation.

A class forgotten at every holder, or item requests from many sites in one batch, run one fake-label stage at each
requesting site. `SiteGroup.unlearn_stages` runs them per site (``loop`` batching) or stacked (``vmap``: one
forward/backward per D step for all of them). This script builds `--sites` sites of bench/scale.py's scenario
(Fashion-MNIST, Dirichlet(0.3), DCGAN, batch 64) as one group per batching mode, gives every site a forget set of
`--items` of its items, and times `--repeat` stages of `--steps` D steps each (after one untimed stage). Both modes
run in this process, alternately, so their ratio is taken under the same load. Usage:

    .venv/bin/python bench/stage_batching.py [--sites 10,50] [--items 64] [--steps 10] [--repeat 3]
        [--device cpu] [--width 32] [--out bench/results/stage-batching.json]

Prints one JSON line per (sites, batching) and the loop / vmap ratio per site count.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scale import scenario_for  # noqa: E402  (this folder: the many-site benchmark's scenario)


def build_groups(sites: int, device: str, width: int):
    """The same sites twice: one group per batching mode, and each site's forget ids (its first items)."""
    from fedgan.engine import build_site
    from fedgan.site_group import SiteGroup

    scenario = scenario_for(sites, 1, "loop", device, "batched", width)
    groups = {mode: SiteGroup([build_site(scenario, j, device) for j in range(sites)], mode)
              for mode in ("loop", "vmap")}
    return scenario, groups


def time_stage(group, fake, requests, device: str) -> float:
    """Seconds for one stage at every requesting site of `group`."""
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    group.unlearn_stages(fake, None, requests)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def measure(sites: int, args: argparse.Namespace) -> list[dict]:
    """Both modes at `sites` sites, alternating stage by stage."""
    import torch

    from fedgan.site_unlearning import UnlearnStageOptions

    torch.manual_seed(0)
    _, groups = build_groups(sites, args.device, args.width)
    fake = torch.rand(64, 1, 28, 28, device=args.device) * 2 - 1
    options = UnlearnStageOptions(kind="fake_label", steps=args.steps)
    requests = {}
    for index, site in enumerate(groups["loop"].sites):
        ids = site.shard.held_ids()[:args.items]
        requests[index] = (ids, options)
        for group in groups.values():
            group.sites[index].shard.exclude(ids)
    times: dict[str, list[float]] = {mode: [] for mode in groups}
    for repeat in range(args.repeat + 1):
        for mode, group in groups.items():
            seconds = time_stage(group, fake, requests, args.device)
            if repeat:  # the first stage of each mode warms up kernels and allocators
                times[mode].append(seconds)
    rows = []
    for mode, values in times.items():
        rows.append({"sites": sites, "batching": mode, "items": args.items, "steps": args.steps,
                     "device": args.device, "stage_s_median": statistics.median(values), "stage_s": values})
        print(json.dumps(rows[-1]), flush=True)
    ratio = rows[0]["stage_s_median"] / rows[1]["stage_s_median"]
    print(json.dumps({"sites": sites, "loop_over_vmap": round(ratio, 3)}), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", default="10,50")
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--out", default="bench/results/stage-batching.json")
    args = parser.parse_args()
    rows = [row for sites in map(int, args.sites.split(",")) for row in measure(sites, args)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": platform.machine(), "python": platform.python_version(),
                                          "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
