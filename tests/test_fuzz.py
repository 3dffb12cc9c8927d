"""Bad input everywhere, fuzzed: scenario files with one field mutated and `fedgan forget` arguments never end in a
traceback — one line naming the mutated field and the fix, exit code 2, nothing written — or they are valid."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from fedgan.results import _toml_value
from scenarios.cli import main

BASE = {
    "name": "fuzz",
    "data": {"name": "synthetic", "num-train": 300, "num-test": 100},
    "sites": {"count": 3},
    "partition": {"scheme": "iid"},
    "model": {"architecture": "dcgan", "latent-dim": 8, "width": 4},
    "training": {"rounds": 1, "batch-size": 8},
    "evaluation": {"every": 0, "samples": 32, "final-samples": 32, "evaluator-epochs": 1, "grid-per-class": 1},
    "engine": {"name": "inprocess", "device": "cpu"},
    "unlearning": {"methods": ["finetune"], "proof-workers": 0},
}
# Every key a user may write, per section (the scenario schema's fields, as TOML spells them).
KEYS = {
    "data": ["name", "root", "train-limit", "classes", "num-train", "num-test"],
    "sites": ["count", "per-node"],
    "partition": ["scheme", "alpha", "k", "min-size"],
    "model": ["architecture", "conditional", "latent-dim", "width"],
    "training": ["aggregator", "rounds", "batch-size", "d-steps", "lr-generator", "lr-discriminator", "beta1",
                 "beta2", "r1-gamma", "site-weights", "real-sampling", "r1-target", "lr-schedule", "label-sampling",
                 "checkpoint-every", "reply-limit"],
    "evaluation": ["every", "samples", "final-samples", "evaluator-epochs", "grid-per-class"],
    "engine": ["name", "num-cpus", "num-gpus", "device", "batching", "round-timeout", "poll-interval"],
    "unlearning": ["methods", "stages", "stage-d-steps", "stage-g-rounds", "generator-lr-scale", "weight",
                   "fake-label", "relearn-rounds", "noise-steps", "impair-lr-scale", "drop-class-weight", "mia-size",
                   "eval-samples", "downstream-samples", "downstream-epochs", "proof-workers", "proof-threads",
                   "proof-gpus"],
}
FIELDS = [(section, key) for section, keys in KEYS.items() for key in keys]
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
VALUES = st.one_of(
    TEXT,
    st.integers(-3, 3),
    st.sampled_from([10**9, -(10**9), 2**63]),
    st.floats(-1e3, 1e3) | st.sampled_from([float("nan"), float("inf"), -float("inf")]),
    st.booleans(),
    st.lists(st.integers(-2, 12), max_size=3),
    st.lists(TEXT, max_size=2),
    st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 3), max_size=2),
)


def toml_text(raw: dict) -> str:
    lines = [f"name = {json.dumps(raw['name'])}"]
    for section, table in raw.items():
        if isinstance(table, dict):
            lines.append(f"[{section}]")
            lines += [f"{json.dumps(key)} = {_toml_value(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS), value=VALUES)
@example(field=("data", "num-train"), value=1)  # fewer items than sites: refused by sites.count, naming the data key
def test_a_scenario_with_one_field_mutated_is_valid_or_refused_by_that_field(tmp_path_factory, capsys, field, value):
    # Prepare: the base scenario with one field set to the drawn value.
    section, key = field
    raw = json.loads(json.dumps(BASE))
    raw[section][key] = value
    if isinstance(value, int) and not isinstance(value, bool) and value > 10**6:
        assume(key not in ("num-train", "num-test", "samples", "final-samples", "rounds", "batch-size", "width",
                           "latent-dim", "count", "eval-samples", "downstream-samples", "noise-steps", "stages",
                           "stage-d-steps", "stage-g-rounds", "relearn-rounds", "evaluator-epochs",
                           "downstream-epochs", "d-steps", "grid-per-class", "mia-size"))  # valid but huge
    folder = tmp_path_factory.mktemp("fuzz")
    path, out = folder / "s.toml", folder / "out"
    path.write_text(toml_text(raw), encoding="utf-8")
    capsys.readouterr()

    # Execute (any exception other than the one-line error escapes here and fails the test)
    code = main(["run", str(path), "--out", str(out), "--quiet"])

    # Assert
    err = capsys.readouterr().err.strip()
    if code == 0:
        return  # the mutation was valid, and the run completed
    assert code == 2, (field, value, err)
    assert len(err.splitlines()) == 1 and err.startswith("fedgan: error: "), (field, value, err)
    assert f"{section}.{key}" in err, (field, value, err)
    assert not out.exists(), (field, value)


ARGUMENT = st.one_of(TEXT, st.sampled_from(["²", "-1", "1e3", "0x10", "3,", " ", "17,42", "١٢"]))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flag=st.sampled_from(["--site", "--class", "--items"]), value=ARGUMENT)
def test_forget_arguments_are_queued_or_refused_by_that_flag(tmp_path_factory, capsys, flag, value):
    # Prepare: a run directory; the other flags valid.
    run = tmp_path_factory.mktemp("run")
    (run / "scenario.toml").write_text('name = "r"\n')
    args = {"--site": "0", "--class": "1"}
    args[flag] = value
    if flag == "--items":
        args.pop("--class")
    argv = ["forget", "--run", str(run)] + [part for pair in args.items() for part in pair]
    capsys.readouterr()

    # Execute
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own refusals exit through our one-line handler
        code = exit_.code

    # Assert
    err = capsys.readouterr().err.strip()
    queued = list((run / "inbox").glob("*.json")) if (run / "inbox").exists() else []
    if code == 0:
        assert len(queued) == 1
        return
    assert code == 2 and len(err.splitlines()) == 1 and flag in err, (flag, value, err)
    assert not queued


@given(data=st.binary(max_size=40))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_an_items_file_of_any_bytes_is_queued_or_refused_by_name(tmp_path_factory, capsys, data):
    run = tmp_path_factory.mktemp("run")
    (run / "scenario.toml").write_text('name = "r"\n')
    items = run / "items.txt"
    items.write_bytes(data)
    capsys.readouterr()
    code = main(["forget", "--run", str(run), "--site", "0", "--items-file", str(items)])
    err = capsys.readouterr().err.strip()
    assert code == 0 or (code == 2 and "--items-file" in err and len(err.splitlines()) == 1), (data, err)


@pytest.mark.parametrize("case", ["out is a file", "out unwritable", "cuda without a gpu"])
def test_listed_bad_inputs_are_one_line_and_write_nothing(tmp_path, capsys, case):
    import torch

    raw = json.loads(json.dumps(BASE))
    out = tmp_path / "out"
    if case == "out is a file":
        out.write_text("not a folder")
    elif case == "out unwritable":
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        out = locked / "out"
        import os

        if os.access(locked, os.W_OK):  # root writes anywhere: nothing to test
            pytest.skip("running as a user who can write into a read-only folder")
    else:
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        raw["engine"]["device"] = "cuda"
    path = tmp_path / "s.toml"
    path.write_text(toml_text(raw))
    code = main(["run", str(path), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    field = {"out is a file": "--out", "out unwritable": "--out", "cuda without a gpu": "engine.device"}[case]
    assert err.startswith(f"fedgan: error: {field}"), err
    if case == "out is a file":
        assert Path(out).read_text() == "not a folder"
