"""The simulation engine's dispatcher, as fedgan installs it: a pushed message is dispatched at once, not at the
next fixed 0.1 s pass (behaviour measured, with a period long enough that only the wake-up can explain it)."""
from __future__ import annotations

import queue
import threading
import time

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
