"""Forget requests: parsing and its errors, resolution against the sites' holdings, the ledger, the inbox, the CLI."""
from __future__ import annotations

import argparse
import json
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from fedgan.errors import FedganError, ScenarioError
from fedgan.forget import (
    ForgetLedger,
    ForgetRequest,
    Holdings,
    LedgerError,
    Refusal,
    drop_request,
    resolve_request,
    take_requests,
)
from scenarios.forget_cli import add_forget_parser, cmd_forget

# ---- parsing ----


def test_from_dict_reads_a_class_request_and_an_item_request():
    # Execute
    by_class = ForgetRequest.from_dict({"site": 2, "class": 7, "everywhere": True, "round": 40})
    by_items = ForgetRequest.from_dict({"site": 1, "items": [42, 17, 42], "round": 5})

    # Assert
    assert (by_class.kind, by_class.forget_class, by_class.everywhere, by_class.round) == ("class", 7, True, 40)
    assert by_items.kind == "items" and by_items.items == (17, 42)
    assert ForgetRequest.from_dict(by_items.to_dict()) == by_items


@pytest.mark.parametrize("spelling", ["forget-class", "forget_class"])
def test_from_dict_accepts_the_other_spellings_of_class(spelling):
    assert ForgetRequest.from_dict({"site": 0, spelling: 3}).forget_class == 3


BAD_REQUESTS = {
    "both items and class": ({"site": 0, "items": [1], "class": 2}, "forget[0].class: give either items or class"),
    "neither items nor class": ({"site": 0}, "forget[0].items: give items or class"),
    "missing site": ({"class": 2}, "forget[0].site"),
    "negative site": ({"site": -1, "class": 2}, "forget[0].site"),
    "site not an integer": ({"site": "3", "class": 2}, "forget[0].site"),
    "empty items": ({"site": 0, "items": []}, "forget[0].items"),
    "negative item": ({"site": 0, "items": [3, -4]}, "forget[0].items"),
    "class not an integer": ({"site": 0, "class": 1.5}, "forget[0].class"),
    "everywhere with items": ({"site": 0, "items": [1], "everywhere": True}, "forget[0].everywhere"),
    "everywhere not a boolean": ({"site": 0, "class": 1, "everywhere": "yes"}, "forget[0].everywhere"),
    "round zero": ({"site": 0, "class": 1, "round": 0}, "forget[0].round"),
    "unknown key": ({"site": 0, "class": 1, "when": 3}, "forget[0].when"),
    "class given twice": ({"site": 0, "class": 1, "forget-class": 1}, "forget[0].forget-class"),
    "not a table": ([0, 1], "forget[0]: got"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_from_dict_refuses_bad_input_naming_the_field(case):
    # Prepare
    raw, start = BAD_REQUESTS[case]

    # Execute
    with pytest.raises(ScenarioError) as caught:
        ForgetRequest.from_dict(raw, where="forget[0]")

    # Assert
    assert str(caught.value).startswith(start), str(caught.value)


def test_key_ignores_round_source_and_item_order():
    # Prepare
    a = ForgetRequest(site=3, items=(42, 17), round=10, source="scenario")
    b = ForgetRequest(site=3, items=(17, 42, 17), round=None, source="external")

    # Assert
    assert a.key() == b.key()
    assert a.with_id().request_id == b.with_id().request_id
    assert a.with_id().request_id.startswith("req-") and len(a.with_id().request_id) == 16
    assert a.key() != ForgetRequest(site=4, items=(17, 42)).key()
    assert ForgetRequest(site=3, forget_class=1).key() != ForgetRequest(site=3, forget_class=1, everywhere=True).key()


# ---- resolution ----


@pytest.fixture
def holdings() -> Holdings:
    """Three sites; class 7 at sites 0 and 2, class 5 at site 1 only."""
    return Holdings(
        ids={0: np.array([10, 11, 12, 13]), 1: np.array([20, 21, 22]), 2: np.array([32, 31, 30])},
        labels={0: np.array([7, 1, 7, 2]), 1: np.array([5, 5, 1]), 2: np.array([7, 3, 7])},
    )


def test_item_request_forgets_exactly_those_items_at_that_site(holdings):
    # Execute
    resolution = resolve_request(ForgetRequest(site=0, items=(13, 10)), holdings, num_classes=10)

    # Assert
    assert list(resolution.forget_ids) == [0]
    assert resolution.forget_ids[0].tolist() == [10, 13]
    assert resolution.forget_classes == ()


def test_class_request_forgets_the_class_at_the_requesting_site_only(holdings):
    # Execute
    resolution = resolve_request(ForgetRequest(site=0, forget_class=7), holdings, num_classes=10)

    # Assert
    assert {s: ids.tolist() for s, ids in resolution.forget_ids.items()} == {0: [10, 12]}
    assert resolution.forget_classes == (7,)


def test_everywhere_request_forgets_the_class_at_every_holder(holdings):
    # Execute
    resolution = resolve_request(ForgetRequest(site=2, forget_class=7, everywhere=True), holdings, num_classes=10)

    # Assert: site 1 holds no 7 and is untouched; ids come sorted.
    assert {s: ids.tolist() for s, ids in resolution.forget_ids.items()} == {0: [10, 12], 2: [30, 32]}


REFUSALS = {
    "unknown site": (ForgetRequest(site=12, forget_class=7), "site 12 is not in this federation (sites 0..2)"),
    "items not held": (
        ForgetRequest(site=1, items=(20, 1, 2, 3, 4, 5, 6, 7)),
        "site 1 does not hold items 1, 2, 3, 4, 5 (and 2 more)",
    ),
    "one item not held": (ForgetRequest(site=1, items=(20, 99)), "site 1 does not hold item 99"),
    "class out of range": (ForgetRequest(site=0, forget_class=10), "class 10 is out of range (classes 0..9)"),
    "class not held": (ForgetRequest(site=1, forget_class=7), "site 1 holds no item of class 7"),
    "everywhere but requester lacks the class": (
        ForgetRequest(site=1, forget_class=7, everywhere=True), "site 1 holds no item of class 7",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_request_the_federation_cannot_honour_is_refused_with_a_reason(case, holdings):
    # Prepare
    request, reason = REFUSALS[case]

    # Execute
    with pytest.raises(Refusal) as caught:
        resolve_request(request, holdings, num_classes=10)

    # Assert
    assert caught.value.reason == reason


# ---- ledger ----


def test_ledger_records_a_request_through_to_done_with_timings_and_certificate(tmp_path):
    # Prepare
    ledger = ForgetLedger(tmp_path / "run" / "ledger.jsonl")
    request = ForgetRequest(site=0, forget_class=7, round=3)

    # Execute
    request_id, is_new = ledger.receive(request)
    ledger.mark(request_id, "running")
    ledger.mark(request_id, "done", forget_ids={0: np.array([10, 12])}, certificate={"forget_class_rate": 0.01})

    # Assert
    view = ledger.states()[request_id]
    assert is_new and view["state"] == "done"
    assert ForgetRequest.from_dict(view["request"]) == request.with_id()
    assert view["certificate"] == {"forget_class_rate": 0.01}
    assert [e["state"] for e in ledger.entries()] == ["received", "running", "done"]
    assert ledger.forgotten_ids() == {0: {10, 12}}


def test_ledger_times_each_request_from_running_to_done(tmp_path, monkeypatch):
    # Prepare: a clock that reads 100 at receipt, 130 when serving starts and 172.5 when it ends.
    clock = iter([100.0, 130.0, 172.5])
    monkeypatch.setattr("fedgan.forget.time", SimpleNamespace(time=lambda: next(clock)))
    ledger = ForgetLedger(tmp_path / "ledger.jsonl")

    # Execute
    request_id, _ = ledger.receive(ForgetRequest(site=0, forget_class=7, round=3))
    ledger.mark(request_id, "running")
    ledger.mark(request_id, "done", forget_ids={0: np.array([10])}, certificate=[])

    # Assert: the serving time, not the wait in the queue; and each stamp from its own event.
    view = ledger.states()[request_id]
    assert (view["received_at"], view["started_at"], view["finished_at"]) == (100.0, 130.0, 172.5)
    assert view["seconds"] == 42.5


def test_a_done_request_is_then_certified_or_its_proof_failed_and_its_items_stay_forgotten(tmp_path, monkeypatch):
    # Prepare: a clock for receipt, start, done (the federation forgot) and the proof's end.
    clock = iter([100.0, 130.0, 140.0, 200.0, 300.0, 310.0, 320.0, 330.0])
    monkeypatch.setattr("fedgan.forget.time", SimpleNamespace(time=lambda: next(clock)))
    ledger = ForgetLedger(tmp_path / "ledger.jsonl")
    first, _ = ledger.receive(ForgetRequest(site=0, items=(1, 2)))
    ledger.mark(first, "running")
    ledger.mark(first, "done", forget_ids={0: [1, 2]})

    # Execute
    ledger.mark(first, "certified", certificate=[{"method": "cascaded"}])
    second, _ = ledger.receive(ForgetRequest(site=1, items=(5,)))
    ledger.mark(second, "running")
    ledger.mark(second, "done", forget_ids={1: [5]})
    ledger.mark(second, "proof-failed", reason="retrain: worker died")

    # Assert: the federation's time and the proof's time apart; both requests' items count as forgotten.
    views = ledger.states()
    assert views[first]["state"] == "certified" and views[first]["seconds"] == 10.0
    assert views[first]["proof_seconds"] == 60.0
    assert views[second]["state"] == "proof-failed" and views[second]["reason"] == "retrain: worker died"
    assert ledger.forgotten_ids() == {0: {1, 2}, 1: {5}}


@pytest.mark.parametrize("path", [("done",), ("received",), ("running", "done", "running"), ("refused", "done"),
                                  ("running", "certified"), ("running", "done", "certified", "proof-failed")])
def test_illegal_transition_raises(tmp_path, path):
    # Prepare: a received request taken along the legal part of `path`.
    ledger = ForgetLedger(tmp_path / "ledger.jsonl")
    request_id, _ = ledger.receive(ForgetRequest(site=0, items=(1,)))
    *legal, illegal = path
    for state in legal:
        ledger.mark(request_id, state)

    # Execute / Assert
    with pytest.raises(ValueError, match="cannot go from"):
        ledger.mark(request_id, illegal)


def test_marking_an_unknown_request_or_state_raises(tmp_path):
    ledger = ForgetLedger(tmp_path / "ledger.jsonl")
    with pytest.raises(ValueError, match="unknown request"):
        ledger.mark("req-nope", "running")
    request_id, _ = ledger.receive(ForgetRequest(site=0, items=(1,)))
    with pytest.raises(ValueError, match="unknown state"):
        ledger.mark(request_id, "paused")


def test_duplicate_request_is_idempotent(tmp_path):
    # Prepare
    ledger = ForgetLedger(tmp_path / "ledger.jsonl")
    first_id, _ = ledger.receive(ForgetRequest(site=0, items=(2, 1), round=4))
    ledger.mark(first_id, "running")

    # Execute: the same content from outside, items in another order.
    again_id, is_new = ledger.receive(ForgetRequest(site=0, items=(1, 2), source="external"))

    # Assert
    assert (again_id, is_new) == (first_id, False)
    assert [e["state"] for e in ledger.entries()] == ["received", "running"]


def test_an_id_in_use_cannot_name_another_request(tmp_path):
    ledger = ForgetLedger(tmp_path / "ledger.jsonl")
    ledger.receive(ForgetRequest(site=0, items=(1,), request_id="req-mine"))
    with pytest.raises(ValueError, match="already used"):
        ledger.receive(ForgetRequest(site=0, items=(2,), request_id="req-mine"))


def test_refused_request_can_be_resubmitted(tmp_path):
    # Prepare
    ledger = ForgetLedger(tmp_path / "ledger.jsonl")
    request = ForgetRequest(site=9, forget_class=1)
    request_id, _ = ledger.receive(request)
    ledger.mark(request_id, "refused", reason="site 9 is not in this federation (sites 0..2)")

    # Execute
    again_id, is_new = ledger.receive(request)

    # Assert
    assert is_new and again_id == request_id
    assert ledger.states()[request_id]["state"] == "received"
    assert "reason" not in ledger.states()[request_id]
    assert [e["state"] for e in ledger.entries()] == ["received", "refused", "received"]


def test_forgotten_ids_merges_done_requests_only(tmp_path):
    # Prepare
    ledger = ForgetLedger(tmp_path / "ledger.jsonl")
    done_a, _ = ledger.receive(ForgetRequest(site=0, items=(1, 2)))
    done_b, _ = ledger.receive(ForgetRequest(site=0, forget_class=3, everywhere=True))
    running, _ = ledger.receive(ForgetRequest(site=1, items=(9,)))
    for request_id in (done_a, done_b, running):
        ledger.mark(request_id, "running")
    ledger.mark(done_a, "done", forget_ids={0: [1, 2]})
    ledger.mark(done_b, "done", forget_ids={0: [2, 5], 2: np.array([7])})

    # Execute / Assert
    assert ledger.forgotten_ids() == {0: {1, 2, 5}, 2: {7}}


def test_torn_last_line_is_skipped_with_a_warning_and_repaired_on_append(tmp_path):
    # Prepare: a crash in the middle of writing the second line.
    ledger = ForgetLedger(tmp_path / "ledger.jsonl")
    request_id, _ = ledger.receive(ForgetRequest(site=0, items=(1,)))
    with open(ledger.path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"request_id": request_id, "state": "running"})[:30])

    # Execute
    with pytest.warns(UserWarning, match="torn last line"):
        entries = ledger.entries()
        ledger.mark(request_id, "running")

    # Assert: the torn line never counted, and the next append did not glue onto it.
    assert [e["state"] for e in entries] == ["received"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [e["state"] for e in ledger.entries()] == ["received", "running"]


def test_corrupt_middle_line_raises_naming_the_line(tmp_path):
    # Prepare
    ledger = ForgetLedger(tmp_path / "ledger.jsonl")
    ledger.receive(ForgetRequest(site=0, items=(1,)))
    ledger.receive(ForgetRequest(site=0, items=(2,)))
    lines = ledger.path.read_text().splitlines()
    ledger.path.write_text("\n".join([lines[0], "{not json", lines[1]]) + "\n")

    # Execute / Assert
    with pytest.raises(LedgerError, match="line 2"):
        ledger.entries()


# ---- inbox ----


def test_dropped_requests_are_taken_in_order_and_moved(tmp_path):
    # Prepare
    first = drop_request(tmp_path, ForgetRequest(site=1, forget_class=4))
    second = drop_request(tmp_path, ForgetRequest(site=2, items=(5, 3)))
    (tmp_path / "inbox" / ".half-written.json.tmp").write_text("{")

    # Execute
    requests, malformed = take_requests(tmp_path)

    # Assert
    assert [(r.site, r.kind, r.source) for r in requests] == [(1, "class", "external"), (2, "items", "external")]
    assert requests[1].items == (3, 5) and requests[0].request_id
    assert malformed == []
    assert not first.exists() and not second.exists()
    assert sorted(p.name for p in (tmp_path / "inbox" / "taken").iterdir()) == sorted([first.name, second.name])
    assert take_requests(tmp_path) == ([], [])


def test_malformed_inbox_file_is_reported_not_raised(tmp_path):
    # Prepare
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "1-bad-json.json").write_text("{not json")
    (inbox / "2-bad-field.json").write_text(json.dumps({"site": 0, "items": [1], "class": 2}))
    good = drop_request(tmp_path, ForgetRequest(site=0, items=(1,)))

    # Execute
    requests, malformed = take_requests(tmp_path)

    # Assert
    assert [r.items for r in requests] == [(1,)]
    assert [name for name, _ in malformed] == ["1-bad-json.json", "2-bad-field.json"]
    assert "inbox/2-bad-field.json.class: give either items or class" in malformed[1][1]
    assert {p.name for p in (inbox / "taken").iterdir()} == {"1-bad-json.json", "2-bad-field.json", good.name}


def test_take_requests_without_an_inbox_returns_nothing(tmp_path):
    assert take_requests(tmp_path) == ([], [])


# ---- the `fedgan forget` command ----


def _forget_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fedgan")
    add_forget_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["forget", *argv])


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "scenario.toml").write_text('name = "tiny"\n')
    return run


def test_forget_command_queues_a_request_in_the_inbox(run_dir, capsys):
    # Execute
    code = cmd_forget(_forget_args(["--run", str(run_dir), "--site", "3", "--items", "42, 17,99"]))

    # Assert
    requests, _ = take_requests(run_dir)
    out = capsys.readouterr().out
    assert code == 0
    assert [(r.site, r.items, r.source) for r in requests] == [(3, (17, 42, 99), "external")]
    assert f"request {requests[0].request_id} queued in {run_dir / 'inbox'}" in out


def test_forget_command_reads_items_from_a_file(run_dir, tmp_path):
    # Prepare
    ids = tmp_path / "ids.txt"
    ids.write_text("5\n6, 7\n")

    # Execute
    cmd_forget(_forget_args(["--run", str(run_dir), "--site", "0", "--items-file", str(ids)]))

    # Assert
    assert take_requests(run_dir)[0][0].items == (5, 6, 7)


BAD_COMMANDS = {
    "run directory missing": (["--run", "{tmp}/nope", "--site", "0", "--class", "1"], "--run"),
    "not a run directory": (["--run", "{tmp}", "--site", "0", "--class", "1"], "--run"),
    "bad item id": (["--run", "{run}", "--site", "0", "--items", "1,x"], "--items"),
    "negative class": (["--run", "{run}", "--site", "0", "--class", "-1"], "--class"),
    "everywhere with items": (["--run", "{run}", "--site", "0", "--items", "1", "--everywhere"], "--everywhere"),
    "missing items file": (["--run", "{run}", "--site", "0", "--items-file", "{tmp}/none.txt"], "--items-file"),
}


@pytest.mark.parametrize("case", sorted(BAD_COMMANDS))
def test_forget_command_refuses_bad_input_naming_the_flag(case, run_dir, tmp_path):
    # Prepare
    argv, flag = BAD_COMMANDS[case]
    args = _forget_args([a.format(tmp=tmp_path, run=run_dir) for a in argv])

    # Execute
    with pytest.raises(FedganError) as caught:
        cmd_forget(args)

    # Assert
    assert caught.value.field == flag
    assert not (run_dir / "inbox").exists()
