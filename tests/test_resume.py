"""Resume after a crash: a run killed with SIGKILL at a named fault point, then resumed, ends with the metrics of a
run never interrupted (every field of summary.json but the timings), and its ledger ends every request once."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedgan.forget import ForgetLedger
from fedgan.results import scenario_to_toml
from tests.conftest import kill_processes_with_env, kill_ray_left_since, tiny_scenario

ROOT = Path(__file__).resolve().parents[1]
TIMINGS = ("seconds", "speedup", "ran", "_at")


def resume_scenario_file(tmp_path: Path) -> Path:
    """6 rounds, checkpoints every 2, a class request after round 3 (cascade + retrain in line), evaluation every 2."""
    scenario = tiny_scenario(
        training={"rounds": 6, "checkpoint-every": 2},
        evaluation={"every": 2},
        unlearning={"methods": ["cascaded", "retrain"], "stages": 2, "stage-d-steps": 2, "stage-g-rounds": 1,
                    "eval-samples": 64,
                    "lira-references": 0, "downstream-samples": 64, "downstream-epochs": 1, "proof-workers": 0},
        forget=[{"site": 0, "class": 2, "round": 3}],
    )
    path = tmp_path / "scenario.toml"
    path.write_text(scenario_to_toml(scenario))
    return path


def fedgan(*args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")  # the same thread count in every run
    env.pop("FEDGAN_FAULT", None)
    if fault:
        env["FEDGAN_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "scenarios.cli", "run", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not any(t in k for t in TIMINGS)}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    result = fedgan(str(resume_scenario_file(root)), "--out", str(root / "run"), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((root / "run" / "summary.json").read_text())


def crash_and_resume(tmp_path: Path, fault: str) -> dict:
    out = tmp_path / "run"
    crashed = fedgan(str(resume_scenario_file(tmp_path)), "--out", str(out), "--quiet", fault=fault)
    assert crashed.returncode == -9, (fault, crashed.returncode, crashed.stderr[-2000:])
    assert not (out / "summary.json").exists()
    resumed = fedgan("--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


def assert_same_run(summary: dict, uninterrupted: dict, out: Path) -> None:
    assert without_timings(summary) == without_timings(uninterrupted)
    views = list(ForgetLedger(out / "ledger.jsonl").states().values())
    assert [v["state"] for v in views] == ["certified"]  # one request, one end, once


def test_a_run_killed_mid_cascade_resumes_to_the_uninterrupted_metrics(tmp_path, uninterrupted):
    summary = crash_and_resume(tmp_path, "cascade")
    assert_same_run(summary, uninterrupted, tmp_path / "run")
    assert list((tmp_path / "run").glob("ledger.rolled-back-*.jsonl"))  # what the crash left is kept, not deleted


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["round@2", "round@5", "retrain@2", "evaluation@2", "checkpoint-write@2",
                                   "checkpoint-write@1"])
def test_a_run_killed_at_each_fault_point_resumes_to_the_uninterrupted_metrics(tmp_path, uninterrupted, fault):
    summary = crash_and_resume(tmp_path, fault)
    assert_same_run(summary, uninterrupted, tmp_path / "run")


def test_a_damaged_checkpoint_is_one_line_naming_the_file(tmp_path):
    out = tmp_path / "run"
    crashed = fedgan(str(resume_scenario_file(tmp_path)), "--out", str(out), "--quiet", fault="round@5")
    assert crashed.returncode == -9
    checkpoint = out / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    result = fedgan("--resume", str(out))
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("fedgan: error: --resume:") and str(checkpoint) in line


@pytest.mark.slow
@pytest.mark.flower
@pytest.mark.skipif(sys.platform != "linux", reason="process clean-up reads /proc")
def test_a_flower_run_killed_mid_cascade_resumes_from_the_nodes_own_snapshots(tmp_path):
    # Prepare: the same scenario through Flower; each node keeps its checkpoint snapshot in its own folder.
    path = resume_scenario_file(tmp_path)
    path.write_text(path.read_text().replace('name = "inprocess"', 'name = "flower"'))
    marker = f"FEDGAN_TEST_RUN={tmp_path}"
    os.environ["FEDGAN_TEST_RUN"] = str(tmp_path)
    started = time.time()
    try:
        # Execute: uninterrupted; then killed in the cascade and resumed.
        whole = fedgan(str(path), "--out", str(tmp_path / "whole"), "--quiet")
        kill_processes_with_env(marker)
        crashed = fedgan(str(path), "--out", str(tmp_path / "run"), "--quiet", fault="cascade")
        kill_processes_with_env(marker)
        resumed = fedgan("--resume", str(tmp_path / "run"))
    finally:
        kill_processes_with_env(marker)
        kill_ray_left_since(started)
        os.environ.pop("FEDGAN_TEST_RUN", None)

    # Assert: the same summary as the uninterrupted Flower run (every field but timings).
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert crashed.returncode == -9, crashed.stderr[-3000:]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = json.loads((tmp_path / "whole" / "summary.json").read_text())
    b = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert a["engine"] == b["engine"] == "flower"
    assert without_timings(b) == without_timings(a)
    assert [v["state"] for v in ForgetLedger(tmp_path / "run" / "ledger.jsonl").states().values()] == ["certified"]


@pytest.mark.slow
@pytest.mark.parametrize("delay", [round(d, 2) for d in __import__("random").Random(16).sample(range(30, 90), 3)])
def test_a_run_killed_at_a_random_moment_resumes_to_the_uninterrupted_metrics(tmp_path, uninterrupted, delay):
    # Prepare / Execute: SIGKILL from outside after `delay` tenths of a second, wherever the run is then.
    import signal

    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("FEDGAN_FAULT", None)
    process = subprocess.Popen([sys.executable, "-m", "scenarios.cli", "run", str(resume_scenario_file(tmp_path)),
                                "--out", str(out), "--quiet"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay / 10)
    process.send_signal(signal.SIGKILL)
    killed = process.wait() == -9 and not (out / "summary.json").exists()
    if killed and (out / "scenario.toml").exists():
        resumed = fedgan("--resume", str(out))
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    elif killed:  # killed before the run wrote anything: it is simply started again
        assert fedgan(str(resume_scenario_file(tmp_path)), "--out", str(out), "--quiet").returncode == 0

    # Assert
    assert_same_run(json.loads((out / "summary.json").read_text()), uninterrupted, out)
