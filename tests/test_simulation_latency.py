"""The simulation engine's dispatcher and reply thread, as fedgan installs them: a pushed message is dispatched at
once, not at the next fixed 0.1 s pass, and a stored reply ends the server's wait at once (behaviour measured, with
periods long enough that only the wake-ups can explain it)."""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import flwr
import pytest

from server import simulation_latency as latency


class _LinkState:
    """The one LinkState call the dispatcher makes: each node's next queued message."""

    def __init__(self) -> None:
        self.messages: dict[int, list[str]] = {7: []}
        self.lock = threading.Lock()

    def get_message_ins(self, node_id: int, limit: int) -> list[str]:
        with self.lock:
            taken, self.messages[node_id] = self.messages[node_id][:limit], self.messages[node_id][limit:]
        return taken


def test_a_pushed_message_is_dispatched_at_once_not_at_the_next_period(monkeypatch):
    # Prepare: a dispatcher that, left alone, would pass only every 5 s.
    monkeypatch.setattr(latency, "DISPATCH_MAX_WAIT", 5.0)
    state, out, stop = _LinkState(), queue.Queue(), threading.Event()
    thread = threading.Thread(target=latency.dispatch_messages, args=(state, out, {7: 0}, stop), daemon=True)
    thread.start()
    time.sleep(0.2)  # the dispatcher has made its first pass and waits

    # Execute: push a message and wake it, as FlowerEngine does after every push.
    started = time.perf_counter()
    with state.lock:
        state.messages[7].append("train.round for node 7")
    latency.notify_pushed()
    message = out.get(timeout=4.0)
    seconds = time.perf_counter() - started
    stop.set()
    latency.notify_pushed()
    thread.join(timeout=2.0)

    # Assert: dispatched on the wake-up (a pass every 5 s could not have done it in under 1 s).
    assert message == "train.round for node 7" and seconds < 1.0
    assert not thread.is_alive()


@pytest.mark.skipif(not flwr.__version__.startswith(latency.SUPPORTED_FLWR), reason="another Flower version")
def test_installing_replaces_the_dispatcher_of_the_simulation_engine():
    from flwr.server.superlink.fleet.vce import vce_api

    assert latency.install_dispatcher()
    assert vce_api.add_messages_to_queue is latency.dispatch_messages
    assert vce_api.put_message_into_state is latency.store_replies


class _ReplyState:
    """The one LinkState call the reply thread makes: store a reply."""

    def __init__(self) -> None:
        self.stored: list[str] = []

    def store_message_res(self, reply: str) -> None:
        self.stored.append(reply)


def test_a_stored_reply_ends_the_servers_wait_at_once(monkeypatch):
    # Prepare: the reply thread runs, and the server waits for replies with a poll interval of 5 s.
    monkeypatch.setattr(latency, "REPLY_MAX_WAIT", 5.0)
    state, replies, stop = _ReplyState(), queue.Queue(), threading.Event()
    thread = threading.Thread(target=latency.store_replies, args=(state, replies, stop), daemon=True)
    thread.start()
    time.sleep(0.1)
    latency.expect_replies()

    # Execute: a worker's reply arrives 0.2 s into the wait.
    threading.Timer(0.2, replies.put, args=("reply of node 7",)).start()
    started = time.perf_counter()
    latency.wait_for_replies(poll_interval=5.0, longest=4.0)
    seconds = time.perf_counter() - started
    stop.set()
    thread.join(timeout=3.0)

    # Assert: the wait ended on the reply (neither 5 s poll interval nor the 4 s deadline), which was stored first.
    assert 0.15 < seconds < 1.0 and state.stored == ["reply of node 7"]
    assert not thread.is_alive() and latency._storing_threads == 0


def test_without_a_reply_thread_in_the_process_the_server_polls(monkeypatch):
    monkeypatch.setattr(latency, "REPLY_MAX_WAIT", 5.0)
    latency.expect_replies()
    started = time.perf_counter()
    latency.wait_for_replies(poll_interval=0.05, longest=4.0)
    assert 0.04 < time.perf_counter() - started < 1.0  # the poll interval, not the event's 4 s


def _ray_env_in_a_fresh_process(environment: dict[str, str]) -> dict[str, str]:
    code = "import json; from server.simulation_latency import RAY_ENV; print(json.dumps(RAY_ENV))"
    env = {key: value for key, value in os.environ.items() if key != latency.RAY_INLINE_VARIABLE}
    done = subprocess.run([sys.executable, "-c", code], env={**env, **environment}, capture_output=True, text=True,
                          check=True, cwd=str(Path(__file__).resolve().parents[1]))
    return json.loads(done.stdout)


def test_ray_calls_carry_a_round_message_inline_unless_the_user_set_the_limit():
    # Default: Ray's limit for arguments passed inside the call is raised above one site's round message.
    default = _ray_env_in_a_fresh_process({})
    assert int(default[latency.RAY_INLINE_VARIABLE]) == latency.RAY_INLINE_BYTES > 64 * 28 * 28 * 4
    # The user's own setting wins.
    assert _ray_env_in_a_fresh_process({latency.RAY_INLINE_VARIABLE: "5000"}) == {latency.RAY_INLINE_VARIABLE: "5000"}


def test_the_simulation_environment_includes_the_ray_limit():
    from scenarios.runner import FLOWER_ENV

    assert FLOWER_ENV[latency.RAY_INLINE_VARIABLE] == latency.RAY_ENV[latency.RAY_INLINE_VARIABLE]
