"""The same ServerApp and ClientApp under Flower's deployment engine: a SuperLink and three SuperNodes as separate
processes on loopback, `flwr run` against them, a short federation with one forget request (slow: minutes)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fedgan.engine import load_federation_data, site_positions
from fedgan.forget import ForgetLedger
from fedgan.results import scenario_to_toml
from tests.conftest import kill_processes_with_env, kill_ray_left_since, processes_with_env, tiny_scenario

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.flower, pytest.mark.slow,
              pytest.mark.skipif(sys.platform != "linux", reason="process clean-up reads /proc")]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def deployment_scenario():
    base = tiny_scenario()
    labels = load_federation_data(base).train.labels[torch.from_numpy(site_positions(base)[0])]
    return tiny_scenario(
        training={"rounds": 3}, evaluation={"every": 0}, engine={"name": "flower", "round-timeout": 240.0},
        unlearning={"methods": ["cascaded", "retrain"], "stages": 1, "stage-d-steps": 2, "stage-g-rounds": 1,
                    "eval-samples": 64,
                    "lira-references": 0, "downstream-samples": 64, "downstream-epochs": 1, "proof-workers": 1},
        forget=[{"site": 0, "class": int(torch.bincount(labels).argmax()), "round": 2}],
    )


def test_the_apps_complete_a_federation_with_a_forget_request_across_processes(tmp_path):
    # Prepare: the scenario as a file, a private FLWR_HOME with a connection to the local SuperLink.
    scenario = deployment_scenario()
    scenario_file = tmp_path / "scenario.toml"
    scenario_file.write_text(scenario_to_toml(scenario))
    port = free_port()
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(f'[superlink.loopback]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
    marker = f"FLWR_HOME={home}"  # every process of the run inherits it (Ray's agents too, which keep no other)
    env = dict(os.environ, FLWR_HOME=str(home), PATH=f"{BIN}:{os.environ['PATH']}", FLWR_TELEMETRY_ENABLED="0",
               FLWR_DISABLE_UPDATE_CHECK="1", FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
    out = tmp_path / "run"
    logs = tmp_path / "logs"
    logs.mkdir()
    started: list[subprocess.Popen] = []
    began = time.time()

    def start(name: str, *command: str) -> None:
        log = open(logs / f"{name}.log", "w")
        started.append(subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True))

    # Execute
    try:
        start("superlink", str(BIN / "flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
              "--host", "127.0.0.1", "--port", str(port), "--fleet-api-address", f"127.0.0.1:{free_port()}",
              "--control-api-address", f"127.0.0.1:{free_port()}")
        time.sleep(3)
        for partition in range(3):
            start(f"supernode-{partition}", str(BIN / "flower-supernode"), "--insecure",
                  "--superlink", f"127.0.0.1:{port}", "--port", str(free_port()),
                  "--node-config", f"partition-id={partition} num-partitions=3")
        result = subprocess.run(
            [str(BIN / "flwr"), "run", ".", "loopback", "--stream",
             "--run-config", f"scenario='{scenario_file}' out='{out}' rounds=0"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    finally:
        pids = {p.pid for p in started} | set(processes_with_env(marker))
        for process in started:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # the SuperNodes' superexec children are in their session
            except ProcessLookupError:
                pass
        kill_processes_with_env(marker)  # anything that left the session
        for process in started:
            process.wait(timeout=30)
        time.sleep(1)
        kill_processes_with_env(marker)
        pids |= set(kill_ray_left_since(began))  # Ray's agents, orphaned when their raylet went (seen)

    # Assert: the run finished through the deployment engine; the request was served and certified; every
    # process this test started is gone.
    diagnostics = result.stdout[-3000:] + result.stderr[-3000:] + "".join(
        f"\n--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(logs.iterdir()))
    assert (out / "summary.json").exists(), diagnostics
    summary = json.loads((out / "summary.json").read_text())
    assert summary["engine"] == "flower" and summary["rounds"] == 3 and summary["num_sites"] == 3
    (view,) = ForgetLedger(out / "ledger.jsonl").states().values()
    assert view["state"] == "certified", view
    (entry,) = view["certificate"]
    assert entry["method"] == "cascaded" and entry["forget_class_rate"]["retrain"] is not None
    time.sleep(1)
    alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()
             and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()]
    assert not alive, alive
