"""`flwr run .` (the Flower CLI with a local SuperLink) completes a short simulation of the default app config."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import kill_processes_with_env

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.flower


@pytest.mark.skipif(sys.platform != "linux", reason="process clean-up reads /proc")
def test_flwr_run_completes_a_short_simulation(tmp_path):
    # Prepare: a private FLWR_HOME, the venv's scripts on PATH (flwr starts `flower-superlink` by name).
    flwr = Path(sys.executable).parent / "flwr"
    if not flwr.exists():
        pytest.skip("flwr CLI not installed next to this interpreter")
    home = tmp_path / "flwr-home"
    env = dict(os.environ, FLWR_HOME=str(home), PATH=f"{flwr.parent}:{os.environ['PATH']}",
               FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
               FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1")
    out = tmp_path / "run"
    command = [str(flwr), "run", ".", "local", "--stream",
               "--federation-config", "num-supernodes=4 client-resources-num-cpus=1",
               "--run-config", f"out='{out}' rounds=6"]

    # Execute
    try:
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=420)
    finally:
        kill_processes_with_env(f"FLWR_HOME={home}")
        shutil.rmtree(home, ignore_errors=True)

    # Assert
    assert (out / "summary.json").exists(), result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["engine"] == "flower" and summary["rounds"] == 6 and summary["num_sites"] == 4
