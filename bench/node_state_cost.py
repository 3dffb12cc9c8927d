"""What keeping a node's state costs per message: in files on the node's disk (fedgan's choice) or in Flower's Context.

For a node hosting K sites (Fashion-MNIST shards, DCGAN width 32), measured in one run on this machine:
- ``file``: what the ClientApp does per state change — serialise the group's state (`group_state_bytes`) and write
  it atomically (`NodeStateStore.save`) — plus, for a message that lands on a worker without a current copy,
  reading and loading it back (`load_group_state_bytes`);
- ``context``: what Flower's Ray backend would add per message if the same bytes lived in `context.state`: pickling
  and unpickling the Context both ways (to the worker and back), on top of the same serialisation;
- ``torch_save``: the file path again in the torch.save format the state used before the flat format
  (`fedgan.flat_state`), written with `save_with` and read with `torch.load` (memory-mapped), as the baseline.
The first two use what the ClientApp uses: `save_state` into `NodeStateStore.save_with`, and `load_state_file`.
Usage:

    .venv/bin/python bench/node_state_cost.py [--sites 1,10,25,100,250] [--repeat 5]
"""
from __future__ import annotations

import argparse
import json
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedgan.engine import build_site  # noqa: E402
from fedgan.node_state import NodeStateStore  # noqa: E402
from fedgan.scenario import scenario_from_dict  # noqa: E402
from fedgan.site_group import SiteGroup, _saved_form  # noqa: E402


def timed(fn, repeat: int) -> float:
    """Median seconds of `repeat` calls."""
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def torch_save_state(group: SiteGroup, handle) -> None:
    """The group's state as `SiteGroup.save_state` wrote it before the flat format: torch.save of the live tensors."""
    state = {"params": group.params, "exp_avg": group.exp_avg, "exp_avg_sq": group.exp_avg_sq,
             "adam_steps": group.adam_steps,
             "sites": [{"rng": site.rng.get_state(), "steps": site.steps, "forgotten": site.shard.forgotten,
                        "excluded": site.shard.excluded} for site in group.sites]}
    torch.save(_saved_form(state, on_cpu=True), handle)


def measure(sites: int, repeat: int) -> dict:
    from flwr.app import ConfigRecord, Context, RecordDict

    scenario = scenario_from_dict({
        "data": {"name": "fashion_mnist"}, "sites": {"count": sites},
        "partition": {"scheme": "dirichlet", "alpha": 0.3, "min-size": 10},
        "model": {"architecture": "dcgan", "width": 32}, "engine": {"name": "batched", "device": "cpu"}})
    group = SiteGroup([build_site(scenario, j) for j in range(sites)], "loop")
    data = group.group_state_bytes()
    store = NodeStateStore(tempfile.mkdtemp(prefix="fedgan-node-state-"))
    store.save(data)
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict({"s": ConfigRecord({"state": data})}),
                      run_config={})
    serialise = timed(group.group_state_bytes, repeat)
    write = timed(lambda: store.save_with(group.save_state), repeat)
    load = timed(lambda: group.load_state_file(store.path()), repeat)
    pickle_both_ways = timed(lambda: pickle.loads(pickle.dumps(context)), repeat) * 2
    old = NodeStateStore(tempfile.mkdtemp(prefix="fedgan-node-state-torch-"))
    torch_write = timed(lambda: old.save_with(lambda handle: torch_save_state(group, handle)), repeat)
    torch_load = timed(lambda: group._load_saved(
        torch.load(old.path(), map_location="cpu", weights_only=True, mmap=True)), repeat)
    return {"sites": sites, "state_mb": len(data) / 2**20,
            "file_s_per_change": write, "file_s_reload": load,
            "context_s_per_message": serialise + pickle_both_ways + load,
            "torch_save_s_per_change": torch_write, "torch_save_s_reload": torch_load,
            "flat_over_torch_save_change": write / torch_write, "flat_over_torch_save_reload": load / torch_load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", default="1,10,25,100,250")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    for sites in (int(s) for s in args.sites.split(",")):
        print(json.dumps(measure(sites, args.repeat)), flush=True)


if __name__ == "__main__":
    main()
