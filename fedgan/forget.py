"""Forget requests: what a site asks the federation to forget, whether it can, and the record of every request.

Flow: a request arrives from the scenario's ``[[forget]]`` schedule (`ForgetRequest.from_dict`) or from outside a
running simulation through the run directory's inbox (`drop_request` by ``fedgan forget``, `take_requests` by the
server at its next round). The server records it in the `ForgetLedger` (received), checks it against what each site
holds (`resolve_request`: the shard splits into forget and retain, or a `Refusal` with a readable reason), runs the
unlearning (running) and stores the forgotten ids and the certificate (done), or the reason (refused).

Engine-free: plain data and numpy, so the server, the CLI and the tests share it without starting anything.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import uuid
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedgan.errors import FedganError, ScenarioError
from fedgan.storage import append_jsonl, atomic_write_bytes, atomic_write_json

SOURCES = ("scenario", "external")
INBOX = "inbox"
TAKEN = "taken"
_SHOWN_IDS = 5  # how many offending ids a refusal names before "(and N more)"


# --------------------------------------------------------------------------------------------------------------
# The request
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ForgetRequest:
    """Site `site` asks to forget its items `items` or its class `forget_class` (at every holder if `everywhere`)."""

    site: int
    items: tuple[int, ...] = ()
    forget_class: int | None = None
    everywhere: bool = False
    round: int | None = None
    source: str = "scenario"
    request_id: str = ""

    def __post_init__(self) -> None:
        # Sorted and unique, so that the same items in another order or repeated are the same request (key()).
        object.__setattr__(self, "items", tuple(sorted({int(i) for i in self.items})))
        if bool(self.items) == (self.forget_class is not None):
            raise ValueError(f"a forget request names items or a class, exactly one of them: {self!r}")
        if self.everywhere and self.forget_class is None:
            raise ValueError(f"`everywhere` applies to class requests only: {self!r}")

    @property
    def kind(self) -> str:
        """``"items"`` or ``"class"``."""
        return "class" if self.forget_class is not None else "items"

    def key(self) -> str:
        """Canonical content (site, items, class, everywhere): equal keys are the same request, whenever and
        from wherever it came (round and source are left out on purpose)."""
        content = {"site": self.site, "items": list(self.items), "class": self.forget_class,
                   "everywhere": self.everywhere}
        return json.dumps(content, sort_keys=True, separators=(",", ":"))

    def with_id(self) -> ForgetRequest:
        """This request with `request_id` filled from its content if empty (same content, same id)."""
        if self.request_id:
            return self
        digest = hashlib.sha256(self.key().encode("utf-8")).hexdigest()
        return dataclasses.replace(self, request_id="req-" + digest[:12])

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form that `from_dict` reads back: ``items`` or ``class`` (as in the scenario file)."""
        what = {"items": list(self.items)} if self.kind == "items" else {"class": self.forget_class}
        return {"site": self.site, **what, "everywhere": self.everywhere, "round": self.round,
                "source": self.source, "request_id": self.request_id}

    @classmethod
    def from_dict(cls, raw: Any, where: str = "forget") -> ForgetRequest:
        """Validate a ``[[forget]]`` table (or `to_dict` output, or an inbox file). Raises ScenarioError naming
        the field, e.g. ``forget[0].class: give either items or class, not both; ...``."""
        values = _parse_fields(raw, where)
        _check_combination(values, where)
        return cls(**values)


# Accepted spellings (kebab-case from TOML, snake_case from Python) -> ForgetRequest field.
_FIELD_NAMES = {
    "site": "site", "items": "items", "class": "forget_class", "forget_class": "forget_class",
    "forget-class": "forget_class", "everywhere": "everywhere", "round": "round", "source": "source",
    "request_id": "request_id", "request-id": "request_id",
}


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _parse_fields(raw: Any, where: str) -> dict[str, Any]:
    """One table -> ForgetRequest keyword arguments, each value type-checked under its own field name."""
    if not isinstance(raw, dict):
        raise ScenarioError(where, f"got {raw!r}, expected a table", "write it as [[forget]] with site, items or class")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = _FIELD_NAMES.get(key)
        if name is None:
            valid = "site, items, class, everywhere, round, source, request-id"
            raise ScenarioError(f"{where}.{key}", "unknown key", f"valid keys: {valid}")
        if name in values:
            raise ScenarioError(f"{where}.{key}", "the class is given twice", "write it once, as class = C")
        values[name] = _parse_value(name, value, f"{where}.{'class' if name == 'forget_class' else key}")
    if "site" not in values:
        raise ScenarioError(f"{where}.site", "missing", "name the requesting site: site = S")
    return values


def _parse_value(name: str, value: Any, where: str) -> Any:
    """Type and range of one field (the combination of fields is checked afterwards)."""
    if name in ("site", "forget_class"):
        if not _is_int(value) or value < 0:
            raise ScenarioError(where, f"got {value!r}, expected a non-negative integer", f"set {where} = 0, 1, ...")
        return int(value)
    if name == "items":
        ok = isinstance(value, (list, tuple)) and value and all(_is_int(i) and i >= 0 for i in value)
        if not ok:
            raise ScenarioError(where, f"got {value!r}, expected a non-empty list of non-negative item ids",
                                "write it as items = [17, 42] (the partition's global ids)")
        return tuple(int(i) for i in value)
    if name == "everywhere":
        if not isinstance(value, bool):
            raise ScenarioError(where, f"got {value!r}, expected true or false", f"set {where} = true or false")
        return value
    if name == "round":
        if value is not None and (not _is_int(value) or value < 1):
            raise ScenarioError(where, f"got {value!r}, expected a round number of at least 1",
                                "give the round after which the request is handled")
        return None if value is None else int(value)
    if name == "source":
        if value not in SOURCES:
            raise ScenarioError(where, f"got {value!r}", f"use one of: {', '.join(SOURCES)}")
        return value
    if not isinstance(value, str):  # request_id
        raise ScenarioError(where, f"got {value!r}, expected a string", "leave it out: it is derived from the content")
    return value


def _check_combination(values: dict[str, Any], where: str) -> None:
    """Exactly one of items / class; `everywhere` only with a class."""
    has_items = bool(values.get("items"))
    has_class = values.get("forget_class") is not None
    if has_items and has_class:
        raise ScenarioError(f"{where}.class", "give either items or class, not both",
                            "split it into two [[forget]] requests")
    if not has_items and not has_class:
        raise ScenarioError(f"{where}.items", "give items or class", "add items = [ids] or class = C")
    if has_items and values.get("everywhere"):
        raise ScenarioError(f"{where}.everywhere", "applies to class requests only",
                            "remove everywhere, or forget a class instead of items")


# --------------------------------------------------------------------------------------------------------------
# Resolution: the request against what each site holds
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Holdings:
    """What the server-side orchestrator knows of each site's shard now: global ids and their labels (same order)."""

    ids: dict[int, np.ndarray]
    labels: dict[int, np.ndarray]


@dataclass(frozen=True)
class Resolution:
    """A request made concrete: the sorted global ids to forget at each affected site."""

    request: ForgetRequest
    forget_ids: dict[int, np.ndarray]
    forget_classes: tuple[int, ...]


class Refusal(Exception):
    """A request the federation cannot carry out; `reason` is one human sentence for the ledger and the user."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def _id_list(ids: Iterable[int], noun: str) -> str:
    """``items 17, 42 (and 3 more)``: a refusal names a few offenders, not thousands."""
    ids = [int(i) for i in ids]
    shown = ", ".join(str(i) for i in ids[:_SHOWN_IDS])
    more = f" (and {len(ids) - _SHOWN_IDS} more)" if len(ids) > _SHOWN_IDS else ""
    return f"{noun}{'s' if len(ids) > 1 else ''} {shown}{more}"


def _site_range(sites: Iterable[int]) -> str:
    sites = sorted(sites)
    if sites == list(range(len(sites))):
        return f"sites 0..{len(sites) - 1}"
    return f"sites {', '.join(str(s) for s in sites)}"


def resolve_request(request: ForgetRequest, holdings: Holdings, num_classes: int) -> Resolution:
    """Split the affected shards into forget and retain: the ids to forget per site. Raises `Refusal` for an
    unknown site, items the site does not hold, a class out of range or one the site does not hold."""
    site = request.site
    if site not in holdings.ids:
        raise Refusal(f"site {site} is not in this federation ({_site_range(holdings.ids)})")
    if request.kind == "items":
        wanted = np.asarray(request.items, dtype=np.int64)
        missing = wanted[~np.isin(wanted, holdings.ids[site])]
        if missing.size:
            raise Refusal(f"site {site} does not hold {_id_list(missing, 'item')}")
        return Resolution(request, {site: np.sort(wanted)}, ())
    forget_class = request.forget_class
    if not 0 <= forget_class < num_classes:
        raise Refusal(f"class {forget_class} is out of range (classes 0..{num_classes - 1})")
    if not np.any(holdings.labels[site] == forget_class):
        raise Refusal(f"site {site} holds no item of class {forget_class}")
    # `everywhere`: every site that holds the class forgets it, not only the requester.
    sites = sorted(holdings.ids) if request.everywhere else [site]
    forget_ids = {}
    for s in sites:
        ids = np.sort(np.asarray(holdings.ids[s], dtype=np.int64)[np.asarray(holdings.labels[s]) == forget_class])
        if ids.size:
            forget_ids[s] = ids
    if not forget_ids:  # unreachable while the requester holds the class; kept so a Resolution is never empty
        raise Refusal(f"nothing left to forget: no site holds class {forget_class}")
    return Resolution(request, forget_ids, (forget_class,))


# --------------------------------------------------------------------------------------------------------------
# The ledger: append-only JSON lines, one fsynced line per event
# --------------------------------------------------------------------------------------------------------------


class LedgerError(FedganError):
    """The ledger file is damaged somewhere other than a torn last line."""


def _plain(value: Any) -> Any:
    """numpy arrays and scalars -> JSON types, recursively (callers pass resolved ids as arrays)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    return value


class ForgetLedger:
    """Every forget request and its state, with timings and certificate:
    received -> running -> done -> certified | proof-failed, or -> refused from received or running.

    `done`: the federation has forgotten (the chosen method ran; the ids are deleted). `certified`: the proof
    (retrain, the other methods, the measurements) finished and the certificate is stored; `proof-failed`: the
    proof could not finish, with the reason (the federation has still forgotten). The file is the truth: every
    method re-reads it, so a restarted server resumes from exactly what was written.
    """

    STATES = ("received", "running", "done", "certified", "proof-failed", "refused")
    FORGOTTEN = ("done", "certified", "proof-failed")  # the states in which the items are gone
    _NEXT = {"received": ("running", "refused"), "running": ("done", "refused"), "done": ("certified", "proof-failed")}

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    # ---- writing ----

    def receive(self, request: ForgetRequest, round: int | None = None) -> tuple[str, bool]:
        """Record `request` as received (after training round `round`); returns (request_id, is_new). A request
        with the same content as a known one that was not refused is a duplicate: nothing is written and the known
        id is returned."""
        request = request.with_id()
        states = self.states()
        for view in states.values():
            if view["state"] != "refused" and ForgetRequest.from_dict(view["request"]).key() == request.key():
                return view["request_id"], False
        known = states.get(request.request_id)
        if known is not None and known["state"] != "refused":
            raise ValueError(f"request id {request.request_id} is already used by another request")
        self._append({"request_id": request.request_id, "state": "received", "time": time.time(),
                      "request": request.to_dict(), "round": round})
        return request.request_id, True

    def refuse_unreadable(self, name: str, reason: str) -> str:
        """Record an inbox file that holds no valid request as refused (its id is derived from the file name), so
        that every request that reached the federation has an end state in the ledger. Returns the id."""
        request_id = "inbox-" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:12]
        self._append({"request_id": request_id, "state": "refused", "time": time.time(), "file": name,
                      "reason": reason})
        return request_id

    def mark(self, request_id: str, state: str, **fields: Any) -> None:
        """Append a state change with extra fields (e.g. ``reason``, ``forget_ids={site: ids}``, ``certificate``).
        Only the transitions of the class docstring are legal; others raise ValueError."""
        if state not in self.STATES:
            raise ValueError(f"unknown state {state!r}; use one of {', '.join(self.STATES)}")
        view = self.states().get(request_id)
        if view is None:
            raise ValueError(f"unknown request {request_id!r}: receive() it first")
        if state not in self._NEXT.get(view["state"], ()):
            raise ValueError(f"request {request_id}: cannot go from {view['state']} to {state}")
        self._append({"request_id": request_id, "state": state, "time": time.time(), **_plain(fields)})

    def _append(self, record: dict[str, Any]) -> None:
        self._repair_torn_tail()
        append_jsonl(self.path, record)

    def _repair_torn_tail(self) -> None:
        """A crash mid-write leaves a last line without its newline; appending after it would glue the next
        record onto it and corrupt a middle line. Complete it if it parses, else drop it (it never committed)."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        data = self.path.read_bytes()
        if data.endswith(b"\n"):
            return
        start = data.rfind(b"\n") + 1
        try:
            json.loads(data[start:])
            complete = True
        except ValueError:
            complete = False
        with open(self.path, "r+b") as handle:
            if complete:
                handle.seek(0, os.SEEK_END)
                handle.write(b"\n")
            else:
                handle.truncate(start)
            handle.flush()
            os.fsync(handle.fileno())

    def roll_back(self, lines: int) -> list[dict[str, Any]]:
        """Keep the first `lines` lines (what a checkpoint covers); the rest move to a ``ledger.rolled-back-*``
        file beside it (kept, never deleted) and are returned. A resumed run redoes what they recorded."""
        entries = self.entries()
        tail = entries[lines:]
        if tail:
            kept = self.path.with_name(f"{self.path.stem}.rolled-back-{time.time_ns()}.jsonl")
            atomic_write_bytes(kept, "".join(json.dumps(e) + "\n" for e in tail).encode("utf-8"))
            atomic_write_bytes(self.path, "".join(json.dumps(e) + "\n" for e in entries[:lines]).encode("utf-8"))
        return tail

    # ---- reading ----

    def size(self) -> int:
        """The ledger file's size in bytes (0 when there is none): a cheap way to notice that it changed."""
        return self.path.stat().st_size if self.path.exists() else 0

    def line_count(self) -> int:
        """How many entries the ledger holds."""
        return len(self.entries())

    def entries(self) -> list[dict[str, Any]]:
        """Every line, in order. A torn last line is skipped with a warning; damage elsewhere raises LedgerError."""
        if not self.path.exists():
            return []
        lines = self.path.read_text(encoding="utf-8").split("\n")
        while lines and not lines[-1].strip():
            lines.pop()
        entries = []
        for number, line in enumerate(lines, start=1):
            try:
                entries.append(json.loads(line))
            except ValueError as error:
                if number == len(lines):
                    warnings.warn(f"{self.path}: skipping torn last line {number} (a crash mid-write?)", stacklevel=2)
                    break
                raise LedgerError(f"{self.path} line {number}", f"not valid JSON ({error})",
                                  "restore the ledger from a backup; only the last line may be torn") from None
        return entries

    def states(self) -> dict[str, dict[str, Any]]:
        """request_id -> merged view: `state`, `request`, every field, `received_at`/`started_at`/`finished_at`/
        `proved_at`, `seconds` (finished - started: how long the federation was busy with it) and
        `proof_seconds` (proved - finished). A refused request received again starts a fresh view."""
        views: dict[str, dict[str, Any]] = {}
        stamps = {"received": "received_at", "running": "started_at", "done": "finished_at", "refused": "finished_at",
                  "certified": "proved_at", "proof-failed": "proved_at"}
        for entry in self.entries():
            request_id, state = entry["request_id"], entry["state"]
            if state == "received":
                views.pop(request_id, None)  # re-inserted last: views keep the order of (re)submission
                views[request_id] = {"request_id": request_id}
            view = views.setdefault(request_id, {"request_id": request_id})
            view.update({k: v for k, v in entry.items() if k not in ("request_id", "time")})
            view[stamps[state]] = entry["time"]
            if state in ("done", "refused") and "started_at" in view:
                view["seconds"] = view["finished_at"] - view["started_at"]
            if state in ("certified", "proof-failed"):
                view["proof_seconds"] = view["proved_at"] - view["finished_at"]
        return views

    def forgotten_ids(self) -> dict[int, set[int]]:
        """site -> every id forgotten by a served request (the ``forget_ids`` field stored when marking done)."""
        forgotten: dict[int, set[int]] = {}
        for view in self.states().values():
            if view["state"] in self.FORGOTTEN:
                for site, ids in view.get("forget_ids", {}).items():
                    forgotten.setdefault(int(site), set()).update(int(i) for i in ids)
        return forgotten


# --------------------------------------------------------------------------------------------------------------
# The inbox: requests from outside a running simulation
# --------------------------------------------------------------------------------------------------------------


def drop_request(run_dir: str | Path, request: ForgetRequest) -> Path:
    """Queue `request` for the server running in `run_dir`: one file in ``<run_dir>/inbox``, written atomically
    (a temporary ``.name`` file, then a rename), so the server never reads half a request."""
    request = dataclasses.replace(request, source="external").with_id()
    # time_ns orders requests by arrival when the server sorts names; the uuid keeps simultaneous drops apart.
    path = Path(run_dir) / INBOX / f"{time.time_ns()}-{uuid.uuid4().hex}.json"
    return atomic_write_json(path, request.to_dict())


def take_requests(run_dir: str | Path, round_index: int | None = None
                  ) -> tuple[list[ForgetRequest], list[tuple[str, str]]]:
    """Read and move to ``inbox/taken/`` every queued request, oldest first. Returns (valid requests,
    [(file name, reason)] for malformed files): a bad file is reported, never raised, so the server runs on.
    A request that names a later round than `round_index` stays in the inbox until that round."""
    inbox = Path(run_dir) / INBOX
    if not inbox.is_dir():
        return [], []
    requests, malformed = [], []
    for path in sorted(p for p in inbox.glob("*.json") if p.is_file() and not p.name.startswith(".")):
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            request = ForgetRequest.from_dict(raw, where=f"{INBOX}/{path.name}")
            if request.round is not None and round_index is not None and request.round > round_index:
                continue  # not due yet: left in the inbox
            requests.append(dataclasses.replace(request, source="external"))
        except (OSError, UnicodeDecodeError, ValueError, FedganError) as error:
            malformed.append((path.name, str(error)))
        # Moved after reading: a crash in between only means the file is read again, and the ledger
        # treats the repeat as a duplicate.
        (inbox / TAKEN).mkdir(exist_ok=True)
        os.replace(path, inbox / TAKEN / path.name)
    return requests, malformed
