"""Shared fixtures: a private cache per test session, Flower's network calls off, small scenarios."""
from __future__ import annotations

import os

import pytest
import torch

from fedgan.scenario import Scenario, scenario_from_dict

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Datasets and evaluators cached under a temporary folder, never the user's ~/.cache."""
    os.environ["FEDGAN_CACHE"] = str(tmp_path_factory.mktemp("fedgan-cache"))


def tiny_scenario(**overrides) -> Scenario:
    """A scenario on synthetic shapes small enough for unit tests (a few rounds in about a second)."""
    raw = {
        "name": "tiny",
        "seed": 3,
        "data": {"name": "synthetic", "num-train": 600, "num-test": 200},
        "sites": {"count": 3},
        "partition": {"scheme": "classes_per_site", "k": 4},
        "model": {"architecture": "dcgan", "latent-dim": 16, "width": 8},
        "training": {"rounds": 3, "batch-size": 16},
        "evaluation": {"every": 2, "samples": 64, "final-samples": 100, "evaluator-epochs": 1, "grid-per-class": 2},
        "engine": {"name": "inprocess", "device": "cpu"},
        # Few G rounds per method in unit tests, and every batch served with [unlearning] as given (a test may set
        # its own repair rounds or [unlearning.partial]).
        "unlearning": {"repair-rounds": 0, "partial": {}},
    }
    for section, values in overrides.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    return scenario_from_dict(raw)


@pytest.fixture
def tiny():
    return tiny_scenario


def stripes(label: int, count: int, seed: int) -> torch.Tensor:
    """`count` noisy (1,28,28) stripe images in [-1, 1]: horizontal for label 0, vertical for label 1."""
    generator = torch.Generator().manual_seed(seed)
    period = 2 + torch.randint(0, 3, (count, 1, 1, 1), generator=generator)
    phase = torch.randint(0, 4, (count, 1, 1, 1), generator=generator)
    coordinate = torch.arange(28).view(1, 1, 28, 1) if label == 0 else torch.arange(28).view(1, 1, 1, 28)
    pattern = (((coordinate + phase) // period) % 2).float().expand(count, 1, 28, 28) * 1.6 - 0.8
    return (pattern + 0.2 * torch.randn(count, 1, 28, 28, generator=generator)).clamp(-1, 1)


def labelled_stripes(per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both classes, `per_class` each, with their int64 labels."""
    images = torch.cat([stripes(0, per_class, seed), stripes(1, per_class, seed + 1)])
    labels = torch.cat([torch.zeros(per_class, dtype=torch.long), torch.ones(per_class, dtype=torch.long)])
    return images, labels


def kill_ray_left_since(started: float) -> list[int]:
    """SIGKILL the processes of every Ray session created since `started` (a wall-clock time). A driver killed
    with SIGKILL leaves Ray's DashboardAgent and RuntimeEnvAgent behind (re-parented to 1, their environment and
    command line rewritten); they are found by the session folder their open files point into."""
    import signal
    from pathlib import Path

    sessions = [p for p in Path("/tmp/ray").glob("session_2*") if p.stat().st_mtime >= started - 1]
    if not sessions:
        return []
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            targets = {os.readlink(fd) for fd in (entry / "fd").iterdir()}
        except OSError:
            continue
        if any(str(session) in target for session in sessions for target in targets):
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
            except ProcessLookupError:
                pass
    return killed


def processes_with_env(marker: str) -> list[int]:
    """Pids of processes whose environment holds `marker` (what a test started, and their children)."""
    from pathlib import Path

    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def kill_processes_with_env(marker: str) -> list[int]:
    """SIGKILL every process `processes_with_env` finds; their pids."""
    import signal

    killed = []
    for pid in processes_with_env(marker):
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    return killed


@pytest.fixture
def one_thread():
    """torch on one thread for the test, the old count restored after: tiny models train far faster on one thread
    than on two contended ones, and a federation then computes with the proof workers' count (proof-threads 1)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
