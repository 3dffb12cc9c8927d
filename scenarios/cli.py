"""The `fedgan` command: `fedgan run SCENARIO [--out DIR]`, `fedgan check SCENARIO`, `fedgan forget --run DIR ...`.

Bad input (a scenario, a data path, an output directory) ends in one line naming the field and the fix, exit
code 2, no traceback, and nothing written.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedgan.errors import FedganError
from scenarios.forget_cli import add_forget_parser, cmd_forget

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line naming the flag (``fedgan: error: --site: invalid int value: 'x'``),
    exit code 2, like every other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        message = re.sub(r"^argument ([^:]+): ", lambda m: m.group(1).split("/")[0] + ": ", message)
        print(f"fedgan: error: {message}; see `{self.prog} --help`", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="fedgan", description="Federated GAN (UA-GAN) unlearning simulator.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a scenario and write its results")
    run.add_argument("scenario", nargs="?", help="a scenario file, or the name of a shipped one (e.g. quickstart)")
    run.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its checkpoint (after a crash)")
    run.add_argument("--out", help="run directory (default: runs/<scenario>-<timestamp>)")
    run.add_argument("--engine", choices=("flower", "inprocess", "batched"), help="override engine.name")
    run.add_argument("--rounds", type=int, help="override training.rounds")
    run.add_argument("--data-root", help="override data.root (a folder holding the dataset files)")
    run.add_argument("--aggregators", help="override compare.aggregators, e.g. ua,avg")
    run.add_argument("--seeds", help="override compare.seeds, e.g. 0,1")
    run.add_argument("--jobs", type=int, default=1,
                     help="with [compare]: run this many variants at once, each in its own process (e.g. on a GPU)")
    run.add_argument("--proof-workers", help="override unlearning.proof-workers: Ray workers for the proofs of "
                     "forgetting (auto, or a number; 0 runs them in line while the federation waits)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    check = commands.add_parser("check", help="validate a scenario and its data without training")
    check.add_argument("scenario", help="a scenario file, or the name of a shipped one")
    add_forget_parser(commands)
    return parser


def _progress_bar(total_hint: int) -> Any:
    from tqdm import tqdm

    bar = tqdm(total=total_hint, unit="round", dynamic_ncols=True)

    def update(done: int, total: int, line: dict[str, Any]) -> None:
        bar.total = total
        bar.n = done
        shown = {"G": f"{line['generator_loss']:.3f}", "D": f"{line['discriminator_loss']:.3f}"}
        if "fid_lenet" in line:
            shown["FID"] = f"{line['fid_lenet']:.1f}"
        bar.set_postfix(shown, refresh=False)
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def _csv(text: str | None, kind: type, flag: str) -> tuple | None:
    """'a,b' -> (a, b) converted with `kind`; None stays None."""
    if text is None:
        return None
    try:
        return tuple(kind(part.strip()) for part in text.split(",") if part.strip())
    except ValueError:
        raise FedganError(flag, f"got {text!r}", "give a comma-separated list, e.g. 0,1") from None


def _proof_workers(text: str | None) -> str | int | None:
    if text is None or text == "auto":
        return text
    if not text.isdigit():
        raise FedganError("--proof-workers", f"got {text!r}", "use auto, 0 (in line) or a number of workers")
    return int(text)


def cmd_run(args: argparse.Namespace) -> int:
    from fedgan.scenario import load_scenario
    from scenarios.runner import default_out_dir, resume_scenario, run_scenario, with_overrides

    if args.resume:
        if args.scenario or args.out:
            raise FedganError("--resume", "a resumed run takes its scenario and directory from DIR",
                              "give only --resume DIR")
        summary = resume_scenario(Path(args.resume))
        print(f"fedgan: resumed and finished {args.resume}")
        return 0
    if not args.scenario:
        raise FedganError("scenario", "missing", "name a scenario file or a shipped scenario (e.g. quickstart)")
    scenario = with_overrides(load_scenario(args.scenario), engine=args.engine, rounds=args.rounds,
                              data_root=args.data_root, aggregators=_csv(args.aggregators, str, "--aggregators"),
                              seeds=_csv(args.seeds, int, "--seeds"),
                              proof_workers=_proof_workers(args.proof_workers))
    if args.jobs < 1:
        raise FedganError("--jobs", f"got {args.jobs}", "use 1 or more")
    out = Path(args.out) if args.out else default_out_dir(scenario)
    progress = None if args.quiet or args.jobs > 1 else _progress_bar(scenario.training.rounds)
    summary = run_scenario(scenario, out, progress, jobs=args.jobs)
    print(f"fedgan: wrote {out}")
    for key in ("fid_lenet", "kid", "evaluator_accuracy", "wall_seconds"):
        if key in summary:
            print(f"  {key}: {summary[key]:.4g}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from fedgan.engine import load_federation_data, site_positions
    from fedgan.scenario import load_scenario

    scenario = load_scenario(args.scenario)
    load_federation_data(scenario)
    sizes = [len(p) for p in site_positions(scenario)]
    print(f"{scenario.name}: ok ({scenario.sites.count} sites, shard sizes {min(sizes)}..{max(sizes)})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `fedgan` console command."""
    args = _parser().parse_args(argv)
    try:
        return {"run": cmd_run, "check": cmd_check, "forget": cmd_forget}[args.command](args)
    except FedganError as error:
        print(f"fedgan: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as error:  # a failure inside the run, not bad input: one line, the traceback kept in a file
        if os.environ.get("FEDGAN_DEBUG"):
            raise
        log = Path(tempfile.gettempdir()) / f"fedgan-error-{os.getpid()}.log"
        log.write_text(traceback.format_exc(), encoding="utf-8")
        line = (str(error).strip().splitlines() or [""])[0][:300]
        print(f"fedgan: failed: {type(error).__name__}: {line} (traceback in {log}; FEDGAN_DEBUG=1 shows it)",
              file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
