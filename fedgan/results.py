"""The run directory and its contract: what every run writes, and the fields other tools rely on.

    <out>/scenario.toml        the resolved scenario (every default filled in), written before round 1
    <out>/metrics.jsonl        one JSON line per round ("kind": "round") and per evaluation ("kind": "evaluation")
    <out>/summary.json         the results contract (below), written last
    <out>/samples_*.png        sample grids (one row per class for a conditional generator)
    <out>/curves.png           generator / discriminator loss and FID_LeNet against rounds
    <out>/mixture.md, mixture.png  where there is a mixture to measure (`fedgan.evaluation.mixture`): per label,
                               each source's share among generated samples against the real share; site shares
    <out>/checkpoint.pt        what a resumed run continues from (fedgan.checkpoint)
    <out>/ledger.jsonl         every forget request and its state (fedgan.forget.ForgetLedger)
    <out>/node-state/          under Flower: each node's state files (fedgan.node_state), written by the nodes
    <out>/proofs/              proof tasks of forget batches not yet certified (fedgan.unlearning.proof)

summary.json always has: dataset, num_sites, aggregator, rounds, wall_seconds, fid_lenet, kid, class_histogram
(list of shares, one per class), evaluator_accuracy. Every file is written atomically (temporary file + rename);
metrics.jsonl is appended line by line with fsync.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedgan import __version__
from fedgan.datasets import DatasetSplits
from fedgan.engine import SiteEngine, SiteInfo
from fedgan.errors import FedganError
from fedgan.evaluation.classifier import Evaluator
from fedgan.evaluation.plots import plot_mixture_shares, plot_training_curves, save_sample_grid
from fedgan.scenario import Scenario
from fedgan.storage import append_jsonl, atomic_write_json, atomic_write_text

SUMMARY_FIELDS = (
    "dataset", "num_sites", "aggregator", "rounds", "wall_seconds", "fid_lenet", "kid", "class_histogram",
    "evaluator_accuracy",
)


def refuse_existing_run(out: Path) -> None:
    """Refuse a run directory that already holds a run: its results, ledger and checkpoint must not be lost or
    mixed with a new run's (a reused `out` of `flwr run`, or `run_experiment` called twice on one folder)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FedganError("--out", f"{out} is a file", "name a directory (it is created if missing)")
    if (out / "summary.json").exists() or (out / "metrics.jsonl").exists():
        raise FedganError("--out", f"{out} already holds a run", "choose a new directory (or delete the old run)")


def scenario_to_toml(scenario: Scenario) -> str:
    """The resolved scenario as TOML in the file format `load_scenario` reads (kebab-case keys)."""
    data = scenario.to_dict()
    lines = [f"# resolved scenario written by fedgan {__version__}"]
    for key in ("name", "seed", "description"):
        lines.append(f"{key} = {_toml_value(data.pop(key))}")
    requests = data.pop("forget", [])
    for section, table in data.items():
        lines.append(f"\n[{section}]")
        options = table.pop("options", {}) if isinstance(table, dict) else {}
        for key, value in {**table, **options}.items():
            if value is not None:
                lines.append(f"{key.replace('_', '-')} = {_toml_value(value)}")
    for request in requests:
        lines.append("\n[[forget]]")
        lines += [f"{key.replace('_', '-')} = {_toml_value(value)}" for key, value in request.items()
                  if value is not None]
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_value(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):  # a TOML basic string: JSON's escapes, but characters beyond the BMP as they are
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    return repr(value)


class RunRecorder:
    """Writes one run directory (see the module docstring for its contract)."""

    def __init__(self, out_dir: str | Path, scenario: Scenario) -> None:
        self.out = Path(out_dir)
        self.scenario = scenario
        self.records: list[dict[str, Any]] = []
        self.context: dict[str, Any] = {}

    def start(self, splits: DatasetSplits, evaluator: Evaluator, sites: list[SiteInfo], resume: bool = False
              ) -> None:
        """Create the directory and write the resolved scenario before round 1 (never over an earlier run); with
        `resume`, continue the run already there."""
        if not resume:
            refuse_existing_run(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        if not resume:
            atomic_write_text(self.out / "scenario.toml", scenario_to_toml(self.scenario))
        counts = np.stack([info.class_counts for info in sites])
        self.context = {
            "dataset": splits.train.name,
            "data_provenance": splits.provenance,
            "evaluator_accuracy": evaluator.accuracy,
            "evaluator_sha256": evaluator.sha256,
            "site_sizes": counts.sum(1).tolist(),
            "site_class_counts": counts.tolist(),
            "real_class_histogram": (counts.sum(0) / counts.sum()).tolist(),
        }

    def line_count(self) -> int:
        """Lines of metrics.jsonl written so far (what a checkpoint covers)."""
        return len(self.records)

    def roll_back(self, lines: int) -> None:
        """A resumed run: metrics.jsonl back to its first `lines` lines (what the checkpoint covers); the lines
        after them, which the resumed run writes again, move to a ``metrics.rolled-back-*`` file (kept)."""
        path = self.out / "metrics.jsonl"
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        rows = [row for row in text.split("\n") if row.strip()]
        complete = []
        for row in rows:
            try:
                complete.append(json.loads(row))
            except ValueError:  # a torn last line (the crash happened mid-write)
                break
        if len(complete) < lines:
            raise FedganError("--resume", f"{path} holds {len(complete)} lines, the checkpoint covers {lines}",
                              "resume from an intact run directory, or start the run again")
        if len(rows) > lines:
            atomic_write_text(path.with_name(f"metrics.rolled-back-{time.time_ns()}.jsonl"),
                              "\n".join(rows[lines:]) + "\n")
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in complete[:lines]))
        self.records = complete[:lines]

    def log(self, record: dict[str, Any]) -> None:
        """Append one line to metrics.jsonl."""
        self.records.append(record)
        append_jsonl(self.out / "metrics.jsonl", record)

    def save_grid(self, images: torch.Tensor, nrow: int, name: str) -> None:
        """A sample grid PNG."""
        save_sample_grid(images, self.out / name, nrow=nrow)

    def save_mixture(self, report: dict[str, Any]) -> None:
        """mixture.md and mixture.png: the generated mixture against the real one."""
        atomic_write_text(self.out / "mixture.md", mixture_markdown({self.scenario.training.aggregator: report}))
        plot_mixture_shares({self.scenario.training.aggregator: report}, self.out / "mixture.png")

    def finish(self, *, final: dict[str, Any], engine: SiteEngine, wall_seconds: float, train_seconds: float,
               rounds: int, generator_steps: int, unlearning: list[dict[str, Any]] | None = None
               ) -> dict[str, Any]:
        """Write curves.png and summary.json; return the summary."""
        plot_training_curves(self.records, self.out / "curves.png")
        t = self.scenario.training
        summary = {
            "scenario": self.scenario.name,
            "dataset": self.context["dataset"],
            "num_sites": self.scenario.sites.count,
            "aggregator": t.aggregator,
            "engine": engine.name,
            "rounds": rounds,
            "generator_steps": generator_steps,
            "wall_seconds": wall_seconds,
            "train_seconds": train_seconds,
            "seconds_per_round": train_seconds / max(rounds, 1),
            "bytes_down": engine.traffic.bytes_down,
            "bytes_up": engine.traffic.bytes_up,
            **final,
            **self.context,
            "seed": self.scenario.seed,
            "fedgan_version": __version__,
        }
        if unlearning:
            summary["unlearning"] = unlearning
            atomic_write_text(self.out / "unlearning.md", unlearning_report(unlearning))
        atomic_write_json(self.out / "summary.json", summary)
        return summary


REPORT_METRICS = ("forget_class_rate", "forget_class_rate_single", "forget_class_rate_unasked",
                  "forget_class_rate_asked", "fid_lenet_retained",
                  "downstream_accuracy", "mia_auc_forget_vs_nonmember", "mia_auc_member_vs_nonmember",
                  "mia_tpr_at_1pct_fpr_forget", "mia_tpr_at_0.1pct_fpr_forget", "lira_auc_forget_vs_nonmember",
                  "lira_auc_member_vs_nonmember", "lira_tpr_at_1pct_fpr_forget", "lira_tpr_at_0.1pct_fpr_forget")


def _cell(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}"


def unlearning_report(entries: list[dict[str, Any]]) -> str:
    """A readable Markdown report of every forget request: each metric before, after, for retrain; cost."""
    lines = ["# Forget requests", "",
             "Each metric: before unlearning → after this method (retrain's value; gap to retrain).", ""]
    for entry in entries:
        request = entry["request"]
        what = f"items ({len(request['items'])})" if "items" in request else f"class {request['class']}"
        where = " at every holder" if request.get("everywhere") else ""
        lines.append(f"## {request['request_id']}: site {request['site']} forgets {what}{where} — `{entry['method']}`")
        lines.append("")
        lines.append("| metric | before | after | retrain | gap |")
        lines.append("|---|---|---|---|---|")
        for key in REPORT_METRICS:
            if key in entry:
                m = entry[key]
                lines.append(f"| {key} | {_cell(m['before'])} | {_cell(m['after'])} | {_cell(m['retrain'])} "
                             f"| {_cell(m['gap_to_retrain'])} |")
        for suffix, label in (("", "retained shares, L1 to retrain"),
                              ("_single", "retained shares, L1 to retrain (end-of-side snapshot)")):
            distance = entry.get(f"retained_share_l1_to_retrain{suffix}")
            if distance and distance["after"] is not None:
                lines.append(f"| {label} | {_cell(distance['before'])} | "
                             f"{_cell(distance['after'])} | 0.000 | {_cell(distance['after'])} |")
        snapshots = entry.get("class_share_snapshots")
        if isinstance(snapshots, dict) and snapshots.get("after"):
            lines.append(f"\nClass shares: the mean of {snapshots['after']} snapshots per side (`share-snapshots`); "
                         "`_single`: the snapshot at the end of each side.")
        lines += _spread_lines(entry.get("retrain_spread"))
        cost = (f"{entry['seconds']:.1f} s, {entry['rounds']} generator rounds, {entry.get('site_d_steps', 0)} site D "
                f"steps, {entry['bytes'] / 2**20:.1f} MiB")
        if "speedup_vs_retrain" in entry:
            cost += (f"; retrain {entry['retrain_seconds']:.1f} s, {entry['retrain_rounds']} rounds, "
                     f"{entry.get('retrain_site_d_steps', 0)} site D steps: speed-up "
                     f"{entry['speedup_vs_retrain']:.1f}× in seconds, "
                     f"{entry['speedup_rounds_vs_retrain']:.1f}× in rounds, "
                     f"{entry.get('speedup_site_d_steps_vs_retrain', 0):.1f}× in site D steps")
        lines += ["", f"Cost: {cost}.", ""]
    return "\n".join(lines)


def _spread_lines(spread: dict[str, Any] | None) -> list[str]:
    """The `retrain_spread` of a certificate entry as a small table (none without `retrain-seeds` > 1)."""
    if not spread:
        return []
    seeds = ", ".join(map(str, spread["training_seeds"]))
    lines = ["", f"Retrain under {len(spread['training_seeds'])} training seeds ({seeds}; `retrain-seeds`):", "",
             "| metric | retrains | mean ± sd | after | gap in sd |", "|---|---|---|---|---|"]
    for key, m in spread.items():
        if isinstance(m, dict) and "sd" in m:
            values = ", ".join(_cell(v) for v in m["values"])
            lines.append(f"| {key} | {values} | {_cell(m['mean'])} ± {_cell(m['sd'])} | {_cell(m['after'])} "
                         f"| {_cell(m['after_gap_in_sd'])} |")
    between = spread.get("retained_share_l1_between_retrains")
    if between:
        lines.append(f"| retained shares, L1 | between two retrains: {_cell(between['mean'])} (mean) | | "
                     f"{_cell(spread.get('retained_share_l1_to_retrain_mean'))} (to their mean) | |")
    return lines


def mixture_markdown(reports: dict[str, dict[str, Any]]) -> str:
    """Per-label source shares and site shares of one or more runs (keyed by aggregator) as Markdown."""
    lines = ["# Mixture learned by the generator", ""]
    first = next(iter(reports.values()))
    if "per_label" in first:
        sources = first["sources"]
        lines += [f"Share of **{sources[0]}** among generated samples of each label ({first['grouped_by']}); "
                  "the real share in the first column. Error = total-variation distance of the source mix.", ""]
        names = list(reports)
        lines.append("| label | real | " + " | ".join(names) + " |")
        lines.append("|---|---|" + "---|" * len(names))
        for i, row in enumerate(first["per_label"]):
            cells = [f"{reports[n]['per_label'][i]['generated'][0]:.3f}" for n in names]
            name = str(row["name"]).replace("|", " / ")  # mixed datasets join source names with "|"
            lines.append(f"| {row['label']} {name} | {row['real'][0]:.3f} | " + " | ".join(cells) + " |")
        lines.append("| **mean abs. error** | | " + " | ".join(f"**{reports[n]['mae']:.3f}**" for n in names) + " |")
        if "label_fidelity" in first:
            lines.append("| label fidelity | | " + " | ".join(f"{reports[n]['label_fidelity']:.3f}" for n in names)
                         + " |")
        lines.append("")
    if "sites" in first:
        names = list(reports)
        lines += ["Share of generated samples in each site's labels against the site's share of the data.", "",
                  "| site | labels | data share | " + " | ".join(names) + " |",
                  "|---|---|---|" + "---|" * len(names)]
        for i, site in enumerate(first["sites"]):
            cells = [f"{reports[n]['sites'][i]['share']:.3f}" for n in names]
            lines.append(f"| {site['site']} | {site['labels']} | {site['weight']:.3f} | " + " | ".join(cells) + " |")
        lines.append("| **max abs. error** | | | " + " | ".join(
            f"**{reports[n]['site_share_max_error']:.3f}**" for n in names) + " |")
        lines.append("")
    accuracy = first.get("evaluator_mode_accuracy")
    if accuracy is not None:
        lines.append(f"Evaluator (source × label) test accuracy: {accuracy:.4f}; {first['samples']} samples per run.")
    return "\n".join(lines) + "\n"
