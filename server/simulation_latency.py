"""The two waits that set a Flower simulation round's latency, and how fedgan shortens them (docs/engines.md).

1. Replies: `Grid.send_and_receive` pushes, then sleeps between pulls (0.1 s in the simulation's `InMemoryGrid`,
   3 s in the deployment engine's grid). `FlowerEngine` pushes and pulls itself through the public
   `push_messages` / `pull_messages`, every `engine.poll-interval` seconds.
2. Dispatch: the simulation engine's dispatcher thread (`add_messages_to_queue` in
   `flwr.server.superlink.fleet.vce.vce_api`, internal) passes over every node's messages, then waits a fixed
   0.1 s. For the Flower versions below, `install_dispatcher` replaces it with the same pass that waits on an event
   instead: `notify_pushed` (called by `FlowerEngine` after every push, in the same process under
   `run_simulation`) wakes it at once; when nothing is pushed it passes every `DISPATCH_MAX_WAIT` (Flower's 0.1 s).
   Other Flower versions keep their own dispatcher (a warning says so); `flwr run` starts the simulation in
   another process, where only the first wait is shortened.
3. Replies, in the same process: between pulls `FlowerEngine` used to sleep `engine.poll-interval` (2 ms), and
   each pull scans Flower's message store under its lock: on the 2-core machine that polling took about 8 ms of
   CPU per round away from the sites' D steps (bench/RESULTS.md). `store_replies` is Flower 1.41's thread that
   stores the workers' replies (`put_message_into_state`, internal), which also sets an event after each reply;
   `wait_for_replies` waits on that event while such a thread runs in this process (under `run_simulation`), and
   sleeps `engine.poll-interval` otherwise (the deployment engine, `flwr run`, other Flower versions).
4. The Ray call (public Ray configuration, not Flower's): Ray passes a task argument above 100 KB through its
   shared-memory object store instead of inside the call, which on the 2-core machine costs about 6 ms more per
   call for the 200 KB image batch of a round at batch 64 (bench/flower_profile.py). `RAY_ENV` raises that limit
   to `RAY_INLINE_BYTES` through Ray's environment variable, which `ray.init` reads; a value the user has set is
   kept. Larger messages (site groups' replies) still go through the object store.

This module is the only place fedgan touches Flower internals. tests/test_simulation_latency.py measures the
behaviour (a pushed message is dispatched well within Flower's period), not the version string.
"""
from __future__ import annotations

import os
import threading
import time
import warnings
from queue import Empty
from typing import Any

SUPPORTED_FLWR = ("1.41.",)  # the versions whose dispatcher this module's copy reproduces
DISPATCH_MAX_WAIT = 0.1  # seconds between passes when nothing is pushed (Flower's own period)

RAY_INLINE_BYTES = 1 << 20  # Ray's default is 100 KB; one site's round message is about 200 KB each way
RAY_INLINE_VARIABLE = "RAY_max_direct_call_object_size"
RAY_ENV = {RAY_INLINE_VARIABLE: os.environ.get(RAY_INLINE_VARIABLE, str(RAY_INLINE_BYTES))}

REPLY_MAX_WAIT = 0.1  # seconds a wait for replies lasts at most, even with no reply stored (a safety net)

_pushed = threading.Event()
_replied = threading.Event()
_storing_threads = 0  # `store_replies` threads running in this process
_storing_lock = threading.Lock()
_installed = False


def notify_pushed() -> None:
    """Wake the dispatcher: the server has just pushed messages."""
    _pushed.set()


def dispatch_messages(state: Any, queue: Any, nodes_mapping: Any, f_stop: threading.Event) -> None:
    """Flower 1.41's dispatcher pass (each node's next message into the workers' queue), waiting for the next push
    instead of a fixed 0.1 s."""
    while not f_stop.is_set():
        _pushed.clear()  # before the pass: a push during the pass makes the wait below return at once
        for node_id in nodes_mapping.keys():
            for message in state.get_message_ins(node_id=node_id, limit=1):
                queue.put(message)
        _pushed.wait(DISPATCH_MAX_WAIT)


def store_replies(state: Any, queue: Any, f_stop: threading.Event) -> None:
    """Flower 1.41's reply thread (each worker's reply into the LinkState), waking `wait_for_replies` after each."""
    global _storing_threads
    with _storing_lock:
        _storing_threads += 1
    try:
        while not f_stop.is_set():
            try:
                reply = queue.get(timeout=1.0)
            except Empty:
                continue
            state.store_message_res(reply)
            _replied.set()
    finally:
        with _storing_lock:
            _storing_threads -= 1


def expect_replies() -> None:
    """Call before each pull for replies: a reply stored after this call ends the next `wait_for_replies`."""
    _replied.clear()


def wait_for_replies(poll_interval: float, longest: float) -> None:
    """Wait before the next pull: until a reply is stored (at most `longest` and `REPLY_MAX_WAIT` seconds) when
    this process stores the simulation's replies itself, else `poll_interval` seconds."""
    if _storing_threads > 0:
        _replied.wait(max(0.0, min(longest, REPLY_MAX_WAIT)))
    else:
        time.sleep(poll_interval)


def install_dispatcher() -> bool:
    """Use `dispatch_messages` and `store_replies` in Flower's simulation engine (this process); True when
    installed."""
    global _installed
    if _installed:
        return True
    import flwr  # here, not at import: the in-process engines read RAY_ENV without loading Flower

    if not flwr.__version__.startswith(SUPPORTED_FLWR):
        warnings.warn(f"flwr {flwr.__version__}: fedgan's dispatcher supports {', '.join(SUPPORTED_FLWR)}x only; "
                      "keeping Flower's (0.1 s between dispatch passes)", stacklevel=2)
        return False
    from flwr.server.superlink.fleet.vce import vce_api

    vce_api.add_messages_to_queue = dispatch_messages
    vce_api.put_message_into_state = store_replies
    _installed = True
    return True
