"""Flower ServerApp: runs a scenario's federation through `FlowerEngine` (thin shell over `fedgan.experiment`).

`flwr run .` reads the scenario from the run config (``scenario``: a shipped scenario's name, or a path relative to
the project root),
an optional ``out`` directory and an optional ``rounds`` override (0 keeps the scenario's).
`fedgan run` builds its own ServerApp with `make_server_app` and drives it with Flower's `run_simulation`.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedgan.experiment import ProgressFn, run_experiment
from fedgan.scenario import Scenario, load_scenario
from server.engine import NODE_STATE_DIR, FlowerEngine
from server.proof_workers import proof_pool

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCENARIO = "smoke"


def make_server_app(
    scenario: Scenario,
    out_dir: str | Path,
    *,
    progress: ProgressFn | None = None,
    on_done: Callable[[dict[str, Any]], None] | None = None,
    wire_log: list[dict[str, Any]] | None = None,
    resume: bool = False,
    on_error: Callable[[BaseException], None] | None = None,
) -> ServerApp:
    """A ServerApp bound to one scenario and run directory (for `run_simulation`, where run config is empty)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        engine = FlowerEngine(grid, scenario, wire_log, state_dir=Path(out_dir) / NODE_STATE_DIR)
        try:
            summary = run_experiment(scenario, engine, out_dir, progress=progress, proofs=proof_pool(scenario),
                                     resume=resume)
        except BaseException as error:  # handed to the caller as it was raised (Flower would wrap or log it)
            if on_error is not None:
                on_error(error)
            raise
        if on_done is not None:
            on_done(summary)

    return server_app


def _scenario_from_run_config(run_config: dict[str, Any]) -> tuple[Scenario, Path]:
    text = str(run_config.get("scenario") or DEFAULT_SCENARIO)
    path = Path(text) if Path(text).is_absolute() else PROJECT_ROOT / text
    scenario = load_scenario(path if path.is_file() else text)  # else a shipped scenario's name
    rounds = int(run_config.get("rounds") or 0)
    if rounds > 0:
        scenario = scenario.replace(training=scenario.training.__class__(
            **{**scenario.training.__dict__, "rounds": rounds}))
    out = str(run_config.get("out") or "")
    if bool(run_config.get("resume")) and out:  # `flwr run . --run-config "resume=true out='DIR'"`
        return load_scenario(Path(out) / "scenario.toml"), Path(out)
    out_dir = Path(out) if out else Path.cwd() / "runs" / f"{scenario.name}-flwr-{time.strftime('%Y%m%d-%H%M%S')}"
    return scenario, out_dir


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point of `flwr run .`: the scenario named in the run config, through Flower."""
    scenario, out_dir = _scenario_from_run_config(dict(context.run_config))
    resume = bool(context.run_config.get("resume"))
    print(f"fedgan: scenario {scenario.name!r}, {scenario.sites.count} sites, writing {out_dir}", flush=True)
    engine = FlowerEngine(grid, scenario, state_dir=out_dir / NODE_STATE_DIR)
    summary = run_experiment(scenario, engine, out_dir, proofs=proof_pool(scenario), resume=resume)
    print(f"fedgan: done in {summary['wall_seconds']:.1f} s, FID_LeNet {summary['fid_lenet']:.2f}", flush=True)
