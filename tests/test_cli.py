"""The `fedgan` command on bad input: one line naming the field and the fix, exit code 2, nothing written."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scenarios.cli import main

ROOT = Path(__file__).resolve().parents[1]

BAD_SCENARIOS = {
    "unknown dataset": ('[data]\nname = "imagenet"\n', "data.name"),
    "unknown aggregator": ('[training]\naggregator = "fedavg"\n', "training.aggregator"),
    "alpha not positive": ('[partition]\nscheme = "dirichlet"\nalpha = 0\n', "partition.alpha"),
    "more sites than items": (
        '[data]\nname = "synthetic"\nnum-train = 20\nnum-test = 10\n[sites]\ncount = 50\n[partition]\nscheme = "iid"\n',
        "sites.count",
    ),
    "missing data directory": ('[data]\nname = "fashion_mnist"\nroot = "/nonexistent/fmnist"\n', "data.root"),
    "wrong type": ('[training]\nrounds = "many"\n', "training.rounds"),
    "unknown key": ('[training]\nlearning-rate = 0.1\n', "training.learning-rate"),
    "malformed toml": ("[training\nrounds = 3\n", "scenario"),
    "per-class weights without labels": ('[training]\nsite-weights = "per_class"\n', "training.site-weights"),
    "unknown real sampling": ('[training]\nreal-sampling = "stratified"\n', "training.real-sampling"),
    "unknown r1 target": ('[training]\nr1-target = "weights"\n', "training.r1-target"),
    "decay with forget requests": ('[training]\nlr-schedule = "linear_decay"\nrounds = 10\n'
                                   '[[forget]]\nround = 5\nsite = 0\nclass = 1\n', "training.lr-schedule"),
    "seeds without aggregators": ('[compare]\nseeds = [0, 1]\n', "compare.seeds"),
    "repeated seeds": ('[compare]\naggregators = ["ua"]\nseeds = [1, 1]\n', "compare.seeds"),
    "classes repeated": ('[data]\nname = "synthetic"\nclasses = [1, 1]\n', "data.classes"),
    "proof workers negative": ('[unlearning]\nproof-workers = -1\n', "unlearning.proof-workers"),
    "proof gpus above one": ('[unlearning]\nproof-gpus = 1.5\n', "unlearning.proof-gpus"),
    "by_class label at two sites": ('[data]\nname = "synthetic"\n[sites]\ncount = 2\n[partition]\n'
                                    'scheme = "by_class"\nclasses = [[1], [1]]\n', "partition.classes"),
}


@pytest.mark.parametrize("case", sorted(BAD_SCENARIOS))
def test_bad_scenario_is_one_line_exit_2_and_writes_nothing(case, tmp_path, capsys):
    # Prepare
    text, field = BAD_SCENARIOS[case]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    out = tmp_path / "out"

    # Execute
    code = main(["run", str(path), "--out", str(out), "--engine", "inprocess", "--quiet"])

    # Assert
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith(f"fedgan: error: {field}"), err
    assert not out.exists()


def test_missing_scenario_file_is_reported(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.toml"), "--quiet"]) == 2
    assert "scenario" in capsys.readouterr().err


def test_existing_run_is_not_overwritten(tmp_path, capsys):
    # Prepare: an earlier run's results in the output directory.
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text('{"kept": true}')

    # Execute
    code = main(["run", str(ROOT / "scenarios" / "smoke.toml"), "--out", str(out), "--quiet"])

    # Assert
    assert code == 2 and "--out" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == '{"kept": true}'


def test_console_command_has_no_traceback_on_bad_input(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[training]\naggregator = "nope"\n')
    result = subprocess.run([sys.executable, "-m", "scenarios.cli", "run", str(path), "--quiet"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "training.aggregator" in result.stderr


@pytest.mark.parametrize("path", sorted((ROOT / "scenarios").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_scenario_validates(path):
    from fedgan.scenario import load_scenario

    scenario = load_scenario(path)
    assert scenario.name == path.stem


def test_compare_overrides_from_the_command_line_are_validated(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text('[compare]\naggregators = ["ua", "avg"]\n')
    code = main(["run", str(path), "--out", str(tmp_path / "out"), "--aggregators", "ua,fedavg", "--quiet"])
    assert code == 2 and capsys.readouterr().err.startswith("fedgan: error: compare.aggregators")
    code = main(["run", str(path), "--out", str(tmp_path / "out"), "--seeds", "0,x", "--quiet"])
    assert code == 2 and capsys.readouterr().err.startswith("fedgan: error: --seeds")
    code = main(["run", str(path), "--out", str(tmp_path / "out"), "--proof-workers", "many", "--quiet"])
    assert code == 2 and capsys.readouterr().err.startswith("fedgan: error: --proof-workers")
    assert not (tmp_path / "out").exists()


def test_a_shipped_scenario_is_found_by_name_from_any_folder(tmp_path, monkeypatch, capsys):
    # Prepare: a working folder with no scenarios/ in it.
    monkeypatch.chdir(tmp_path)

    # Execute
    code = main(["check", "smoke"])

    # Assert
    assert code == 0 and capsys.readouterr().out.startswith("smoke: ok")


def test_an_unknown_scenario_name_lists_the_shipped_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["check", "quickstrat"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedgan: error: scenario: 'quickstrat' is neither a file nor a shipped scenario")
    assert "quickstart" in err and "smoke" in err


def test_a_fedgan_error_survives_a_worker_process_with_its_field():
    import pickle

    from fedgan.errors import FedganError, ScenarioError

    error = pickle.loads(pickle.dumps(ScenarioError("training.rounds", "got 0", "use 1 or more")))
    assert isinstance(error, FedganError) and error.field == "training.rounds" and str(error).startswith(
        "training.rounds: got 0")


@pytest.mark.flower
def test_an_error_inside_a_flower_run_reaches_the_command_line_as_one_line_with_its_field(tmp_path, capsys):
    # A resume through Flower whose checkpoint is damaged: the ServerApp raises inside the simulation.
    from fedgan.results import scenario_to_toml
    from scenarios.runner import run_flower
    from tests.conftest import tiny_scenario

    scenario = tiny_scenario(engine={"name": "flower", "num-cpus": 1})
    out = tmp_path / "run"
    out.mkdir()
    (out / "scenario.toml").write_text(scenario_to_toml(scenario))
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    from fedgan.errors import FedganError

    with pytest.raises(FedganError, match="--resume: .*checkpoint.pt is damaged"):
        run_flower(scenario, out, None, resume=True)
