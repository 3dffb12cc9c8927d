"""Where a Flower simulation round goes: a timeline of every round, split into the server's work, the wire and
the sites' work, next to the in-process round of the same scenario (same run).

The sites run the product's ClientApp handlers (`clients.app`) inside a thin profiling ClientApp that timestamps
each handler's parts (loading the node's state, the D step, saving the state, encoding the reply) and sends the
timestamps back in an extra record; the server side is the product's `FlowerEngine`, timed around its push and
pulls. Timestamps are `time.time()` (one clock for every process of the machine). Usage:

    .venv/bin/python bench/flower_profile.py [--scenario scenarios/quickstart.toml] [--rounds 40] [--warmup 5]
        [--ray-inline-bytes 102400,1048576] [--out bench/results/flower-profile.json]

Prints one JSON line per run (median and mean seconds per round; one Flower run per value of Ray's inline limit,
`server/simulation_latency.py`) and a table of the Flower round's parts, in ms per round (mean over the timed
rounds); the parts add up to the round. The profiling itself adds a little to each Flower round (the timestamps
travel in each reply; this ClientApp is pickled by value with every call), so its ratio runs above
`bench/flower_overhead.py`'s.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.flower_overhead import summarise, time_rounds  # noqa: E402
from fedgan.engine import InProcessEngine  # noqa: E402
from fedgan.scenario import Scenario, load_scenario  # noqa: E402
from scenarios.runner import FLOWER_ENV  # noqa: E402
from server.simulation_latency import RAY_ENV, RAY_INLINE_VARIABLE  # noqa: E402

PROFILE = "profile"  # the extra record of a profiled reply


def profiling_client_app():
    """A ClientApp that runs `clients.app`'s setup and round handlers, timing each handler's parts."""
    from flwr.app import MetricRecord
    from flwr.clientapp import ClientApp

    import clients.app as product
    from fedgan import protocol as P
    from fedgan.site_group import SiteGroup

    def timed(function, name):
        def wrapper(*args, **kwargs):
            result = function(*args, **kwargs)
            product._profile_marks[name] = time.time()
            return result
        return wrapper

    # Patched inside each worker process when the handlers below first run there. This app travels by value with
    # every message, so the marks live in the (imported, per-process) product module, not in this closure.
    def patch() -> None:
        if getattr(product, "_profiled", False):
            return
        product._profile_marks = {}
        product._load_group = timed(product._load_group, "loaded")
        product._save_group = timed(product._save_group, "saved")
        SiteGroup.train_round = timed(SiteGroup.train_round, "computed")
        product._profiled = True

    app = ClientApp()

    @app.train(P.action(P.SETUP))
    def setup(msg, context):
        patch()
        return product.setup(msg, context)

    @app.train(P.action(P.TRAIN_ROUND))
    def train_round(msg, context):
        patch()
        product._profile_marks.clear()
        entered = time.time()
        reply = product.train_round(msg, context)
        reply.content[PROFILE] = MetricRecord({"entered": entered, **product._profile_marks, "encoded": time.time(),
                                               "pid": os.getpid()})
        return reply

    return app


def time_marked_rounds(scenario: Scenario, engine, rounds: int, warmup: int, timeline: list) -> list[float]:
    """`time_rounds` on the profiled engine, appending each timed round's marks to `timeline`."""
    def start() -> None:
        engine.marks = {"start": time.time(), "replies": []}

    def end() -> None:
        engine.marks["end"] = time.time()
        timeline.append(engine.marks)

    return time_rounds(scenario, engine, rounds, warmup, before_round=start, after_round=end)


def profiled_flower_engine(grid, scenario: Scenario, ray_calls: dict):
    """The product's FlowerEngine, with the push and every reply's arrival timed."""
    from server.engine import FlowerEngine

    class ProfiledEngine(FlowerEngine):
        marks: dict = {}

        def train_round(self, round_index, fake, labels, weights=None):
            self.marks["called"] = time.time()
            replies = super().train_round(round_index, fake, labels, weights)
            self.marks["returned"] = time.time()
            return replies

        def _exchange(self, messages, timeout=None):
            self.marks["pushing"] = time.time()
            original_pull = self.grid.pull_messages

            def pull(ids):
                pulled = list(original_pull(ids))
                now = time.time()
                for reply in pulled:
                    if PROFILE in reply.content:
                        submitted, returned = ray_calls.get(reply.metadata.reply_to_message_id, (now, now))
                        self.marks.setdefault("replies", []).append({
                            **dict(reply.content[PROFILE]), "submitted": submitted, "returned": returned,
                            "pulled": now})
                return pulled

            self.grid.pull_messages = pull
            try:
                return super()._exchange(messages, timeout)
            finally:
                self.grid.pull_messages = original_pull

    return ProfiledEngine(grid, scenario)


def time_ray_calls(calls: dict) -> None:
    """Record when the simulation engine hands each message to Ray and when Ray gives the reply back (driver side),
    keyed by the message id, with the pickled size of the call's arguments (once)."""
    from flwr.server.superlink.fleet.vce.backend.raybackend import RayBackend
    from ray import cloudpickle

    from fedgan import protocol as P

    original = RayBackend.process_message

    def process_message(self, message, context):
        if "argument_bytes" not in calls and message.metadata.message_type == P.TRAIN_ROUND:
            calls["argument_bytes"] = len(cloudpickle.dumps((self.app_fn, message, "0", context)))
        submitted = time.time()
        reply, updated = original(self, message, context)
        calls[message.metadata.message_id] = (submitted, time.time())
        return reply, updated

    RayBackend.process_message = process_message


def bench_flower(scenario: Scenario, rounds: int, warmup: int, timeline: list, ray_calls: dict
                 ) -> tuple[list[float], int]:
    os.environ.update({key: value for key, value in FLOWER_ENV.items() if key != RAY_INLINE_VARIABLE})
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from server.simulation_latency import install_dispatcher

    result: list[float] = []
    server_app = ServerApp()

    @server_app.main()
    def main(grid, context) -> None:
        result.extend(time_marked_rounds(scenario, profiled_flower_engine(grid, scenario, ray_calls), rounds, warmup,
                                         timeline))

    backend = {"client_resources": {"num_cpus": scenario.engine.num_cpus, "num_gpus": scenario.engine.num_gpus},
               "init_args": {"include_dashboard": False, "logging_level": "ERROR"}}
    install_dispatcher()
    run_simulation(server_app, profiling_client_app(), num_supernodes=scenario.sites.count, backend_config=backend)
    return result, int(ray_calls.get("argument_bytes", 0))


def round_parts(marks: dict) -> dict[str, float]:
    """One Flower round cut into consecutive parts (seconds); they sum to end − start.

    The sites' part is the wall time from the push to the last reply's pull, followed along the worker whose last
    reply came in last: for each of its messages the wait before the engine handed it to Ray (the dispatcher and the
    workers' queue; for later messages, the engine's work on the previous reply), Ray's call to the actor (pickling
    the message and the Context, the transfer, unpickling), the handler's parts, Ray's way back, and at the end
    the reply's way into the server's pull."""
    replies = marks["replies"]
    by_worker: dict[float, list[dict]] = {}
    for reply in sorted(replies, key=lambda r: r["entered"]):
        by_worker.setdefault(reply["pid"], []).append(reply)
    last = max(by_worker.values(), key=lambda rs: max(r["pulled"] for r in rs))
    parts = {"server: G forward, before the send": marks["called"] - marks["start"],
             "server: encode and push": marks["pushing"] - marks["called"]}
    names = ("wire: dispatch and queue", "wire: Ray call to the actor", "site: state load", "site: D step",
             "site: state save", "site: reply encode", "wire: Ray return to the engine")
    parts.update({name: 0.0 for name in names})
    previous = marks["pushing"]
    for r in last:
        spans = (r["submitted"] - previous, r["entered"] - r["submitted"], r["loaded"] - r["entered"],
                 r["computed"] - r["loaded"], r["saved"] - r["computed"], r["encoded"] - r["saved"],
                 r["returned"] - r["encoded"])
        for name, span in zip(names, spans):
            parts[name] += span
        previous = r["returned"]
    pulled = max(r["pulled"] for r in replies)
    parts["wire: last reply into the server's pull"] = pulled - previous
    parts["server: decode, aggregate, G step"] = marks["end"] - pulled
    parts["messages at that worker"] = float(len(last))
    return parts


def profile_flower(scenario: Scenario, rounds: int, warmup: int, inline_bytes: int, ray_calls: dict) -> dict:
    """One Flower run with Ray's inline limit at `inline_bytes`: its summary, its mean parts and its timeline."""
    os.environ[RAY_INLINE_VARIABLE] = str(inline_bytes)  # read by the ray.init of this run
    timeline: list[dict] = []
    seconds, argument_bytes = bench_flower(scenario, rounds, warmup, timeline, ray_calls)
    flower = {**summarise("flower", seconds, scenario), "ray_inline_bytes": inline_bytes,
              "ray_call_argument_bytes": argument_bytes}
    per_round = [round_parts(marks) for marks in timeline]
    parts = {key: statistics.fmean(p[key] for p in per_round) for key in per_round[0]}
    return {"summary": flower, "parts_s": parts, "timeline": timeline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="scenarios/quickstart.toml")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--ray-inline-bytes", default=RAY_ENV[RAY_INLINE_VARIABLE],
                        help="comma-separated: one Flower run per value of Ray's inline limit (Ray's own: 102400)")
    parser.add_argument("--out", default=None, help="write the summaries, parts and raw timelines here (JSON)")
    args = parser.parse_args()
    scenario = load_scenario(args.scenario)
    scenario = scenario.replace(engine=dataclasses.replace(scenario.engine, device="cpu"))
    machine = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version()}
    print(json.dumps(machine))
    inprocess = summarise("inprocess", time_rounds(scenario, InProcessEngine(scenario), args.rounds, args.warmup),
                          scenario)
    print(json.dumps(inprocess), flush=True)
    ray_calls: dict = {}
    time_ray_calls(ray_calls)
    runs = []
    for inline_bytes in (int(value) for value in args.ray_inline_bytes.split(",")):
        ray_calls.clear()
        run = profile_flower(scenario, args.rounds, args.warmup, inline_bytes, ray_calls)
        run["summary"]["flower_over_inprocess"] = run["summary"]["median_s_per_round"] / inprocess["median_s_per_round"]
        print(json.dumps(run["summary"]), flush=True)
        runs.append(run)
    print(f"{'ms per round (mean)':<42}" + "".join(f"inline {r['summary']['ray_inline_bytes']:>9}" for r in runs))
    for key in runs[0]["parts_s"]:
        scale = 1 if key.startswith("messages") else 1000
        print(f"  {key:<40}" + "".join(f"{scale * r['parts_s'][key]:>16.1f}" for r in runs))
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine, "inprocess": inprocess, "flower": runs}, indent=1))


if __name__ == "__main__":
    main()
