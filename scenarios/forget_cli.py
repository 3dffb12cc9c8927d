"""The `fedgan forget` subcommand: queue a forget request for a simulation that is running now.

`fedgan forget --run DIR --site S (--class C | --items 1,2,3 | --items-file F) [--everywhere]` drops one request into
``DIR/inbox``; the server takes it at its next round. This command cannot see the sites' shards, so it checks only
the shape of the request: whether the site holds the items or the class is decided by the server, which records a
refusal with its reason in ``DIR/ledger.jsonl``.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

from fedgan.errors import FedganError
from fedgan.forget import ForgetRequest, drop_request


def add_forget_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``forget`` to the `fedgan` command's subparsers."""
    forget = commands.add_parser("forget", help="ask a running simulation to forget a site's items or class")
    forget.add_argument("--run", required=True, help="run directory of the running simulation")
    forget.add_argument("--site", required=True, type=int, help="the requesting site (0..K-1)")
    what = forget.add_mutually_exclusive_group(required=True)
    what.add_argument("--class", dest="forget_class", type=int, help="forget every item of this class")
    what.add_argument("--items", help="comma-separated global item ids, e.g. 17,42,99")
    what.add_argument("--items-file", help="file of global item ids, separated by commas, spaces or newlines")
    forget.add_argument("--everywhere", action="store_true", help="with --class: forget it at every site holding it")


def _parse_ids(text: str, field: str) -> list[int]:
    """``"17, 42 99"`` -> [17, 42, 99]; anything that is not a non-negative integer is refused by name."""
    tokens = [t for t in re.split(r"[,\s]+", text) if t]
    bad = [t for t in tokens if not (t.isascii() and t.isdigit())]  # "²".isdigit() is True, int("²") fails
    if bad:
        raise FedganError(field, f"{bad[0]!r} is not an item id", "give non-negative integers, e.g. 17,42,99")
    if not tokens:
        raise FedganError(field, "no item ids given", "give at least one id, e.g. 17,42,99")
    return [int(t) for t in tokens]


def _items(args: argparse.Namespace) -> list[int]:
    if args.items_file is None:
        return _parse_ids(args.items, "--items")
    path = Path(args.items_file)
    if not path.is_file():
        raise FedganError("--items-file", f"file {str(path)!r} not found", "give a file of item ids")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise FedganError("--items-file", f"{str(path)!r} is not UTF-8 text", "give a text file of item ids") from None
    except OSError as error:
        raise FedganError("--items-file", f"{str(path)!r} cannot be read ({error.strerror})",
                          "give a readable file of item ids") from None
    return _parse_ids(text, "--items-file")


def _run_dir(text: str) -> Path:
    """The run directory must exist and be one (the runner writes scenario.toml there before round 1)."""
    run = Path(text)
    if not run.is_dir():
        raise FedganError("--run", f"directory {text!r} not found", "give the run directory of a running simulation")
    if not (run / "scenario.toml").is_file():
        raise FedganError("--run", f"{text!r} is not a run directory (no scenario.toml)",
                          "give the directory that `fedgan run --out` writes to")
    return run


def _request(args: argparse.Namespace) -> ForgetRequest:
    """The request as the scenario schema sees it, so the CLI and [[forget]] tables share one validation."""
    raw: dict = {"site": args.site, "everywhere": args.everywhere, "source": "external"}
    if args.forget_class is not None:
        raw["class"] = args.forget_class
    else:
        raw["items"] = _items(args)
    try:
        return ForgetRequest.from_dict(raw, where="forget")
    except FedganError as error:
        # Name the command-line flag rather than the scenario field the user never wrote.
        flag = "--" + error.field.rsplit(".", 1)[-1]
        raise FedganError(flag, error.problem, error.fix) from None


def cmd_forget(args: argparse.Namespace) -> int:
    """Queue the request in the run's inbox and say where; bad input raises FedganError (one line, exit 2)."""
    run = _run_dir(args.run)
    request = _request(args)
    path = drop_request(run, request)
    print(f"fedgan: request {request.with_id().request_id} queued in {path}; "
          "the running server picks it up at its next round")
    return 0
