"""FNN against the other unlearning methods on one class request: the generator and two classifiers (issue 18).

Trains the scenario's federation once (in process) up to its forget request's round, keeps that state, runs
`retrain` once, then serves the same request with each other method of [unlearning] from the same state (as
bench/cascade_ablation.py does). Beside the generator, two classifier settings forget the same class with every
classifier method (fnn with each layer type, noise, uniform, finetune; `fedgan.classifier_unlearning`):

  (a) an MLP trained on the requesting site's own shard, tested on the real test images of the classes that site
      holds; its reference is a classifier retrained from scratch without the class;
  (b) the proof's downstream classifier, trained on the trained generator's pseudo-labelled samples (the proof's
      draw and count, `downstream-samples`); forget = the samples labelled as the class; tested on real test
      images; its reference is the same classifier trained on the retrained federation's samples, which costs the
      federation's retrain plus that training. Its attack's non-members are a held-out draw of the same generator.

Writes `fnn-compare.json` (every row and certificate), `fnn-compare.md` (one table per setting, the gaps to retrain
and issue 18's targets, PASS/MISS) and `fnn-compare.png` (forget and retained metric per method, retrain as a line)
into the out folder, and prints the markdown.

    FEDGAN_CACHE=/tmp/fcache .venv/bin/python bench/fnn_compare.py scenarios/fnn-compare.toml [--out runs/fnn-compare]
        [--methods M,...] [--seed N] [--skip-federation] [--reuse] [--retrain-seeds K] [--timing-repeats R]
        [--classifier-option KEY=VALUE ...]

`--skip-federation` runs setting (a) alone (no GAN, no evaluator); `--methods a,b` replaces the GAN methods;
`--classifier-option key=value` (repeatable) sets a `ClassifierUnlearningOptions` field for both classifier settings.
With `--retrain-seeds K` > 1 the classifier targets are judged twice: against the first retrain and against the mean
of the K retrains. Classifier seconds are the median of `--timing-repeats` runs of each method (default 5).
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cascade_ablation import parse_variant as parse_overrides  # noqa: E402
from bench.trained_federation import TrainedFederation  # noqa: E402
from fedgan.classifier_unlearning import (  # noqa: E402
    ClassifierUnlearningOptions,
    build_mlp_classifier,
    class_request,
    compare,
    compare_with_reference,
    downstream_classifier,
    generated_class_request,
    measure,
    train_classifier,
)
from fedgan.datasets import DatasetSplits  # noqa: E402
from fedgan.engine import load_federation_data, site_positions  # noqa: E402
from fedgan.evaluation.classifier import Evaluator  # noqa: E402
from fedgan.evaluation.forgetting import pseudo_label  # noqa: E402
from fedgan.federation import GeneratorServer  # noqa: E402
from fedgan.forget import ForgetRequest  # noqa: E402
from fedgan.preparation import prepare  # noqa: E402
from fedgan.scenario import Scenario, load_scenario  # noqa: E402
from fedgan.storage import atomic_write_bytes, atomic_write_text  # noqa: E402
from fedgan.unlearning.measurement import CERTIFICATE_DRAW  # noqa: E402

LabelledImages = tuple[torch.Tensor, torch.Tensor]  # (images, labels)
CLASSIFIER_METHODS = ("original", "fnn-fixed-all", "fnn-fixed-ranked", "fnn-varying-all", "fnn-varying-ranked",
                      "noise", "uniform", "finetune", "retrain")
HELDOUT_DRAW = "fnn-compare-heldout"  # the seed tag of setting (b)'s non-member draw (the proof never uses it)
# ---- issue 18's targets ----
GENERATOR_RATE_FLOOR = 0.01  # forget-class rate <= max(1 %, retrain's + 0.5 point)
GENERATOR_RATE_MARGIN = 0.005
GENERATOR_FID_RATIO = 1.10  # retained FID_LeNet within 10 % of retrain's (a lower FID is no miss)
CLASSIFIER_FORGET_MARGIN = 0.02  # forget accuracy <= retrain's + 2 points
CLASSIFIER_RETAINED_MARGIN = 0.01  # retained accuracy within 1 point of retrain's
CLASSIFIER_AUC_MARGIN = 0.03  # membership AUC on the forgotten items within 0.03 of retrain's
CLASSIFIER_TIME_SHARE = 0.1  # in at most a tenth of retrain's time


# ----------------------------------------------------------------------------------------------------------------
# Setting (a): the requesting site's own classifier
# ----------------------------------------------------------------------------------------------------------------

SPREAD_KEYS = ("forget_accuracy", "retained_accuracy", "mia_auc", "seconds")


def spread_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample sd of each SPREAD_KEYS value over `rows` (retrain under several seeds)."""
    spread: dict[str, Any] = {"count": len(rows)}
    for key in SPREAD_KEYS:
        values = [row[key] for row in rows]
        spread[key] = {"values": values, "mean": statistics.fmean(values), "sd": statistics.stdev(values)}
    return spread


def site_setting(scenario: Scenario, splits: DatasetSplits, request: ForgetRequest,
                 options: ClassifierUnlearningOptions, retrain_seeds: int = 1) -> dict[str, Any]:
    """An MLP on the requesting site's shard forgets the request's class; tested on the classes the site holds
    (a site never saw the others, so every model, retrain included, would fail them alike)."""
    train, test = splits.train, splits.test
    positions = torch.as_tensor(site_positions(scenario)[request.site])
    images, labels = train.float_images()[positions], train.labels[positions]
    held = sorted(labels.unique().tolist())
    setting = {"site": request.site, "shard_items": len(labels), "classes_held": held}
    if held == [request.forget_class]:
        return {**setting, "skipped": "the site holds the forgotten class only: forgetting it empties the shard"}
    keep = torch.isin(test.labels, torch.tensor(held))
    task = class_request(images, labels, test.float_images()[keep], test.labels[keep], [request.forget_class],
                         train.num_classes)
    model = build_mlp_classifier(train.image_shape, train.num_classes, seed=scenario.seed)
    started = time.perf_counter()
    train_classifier(model, images, labels, seed=scenario.seed, options=options)
    setting.update(test_items=int(keep.sum()), forget_items=int(task.forget_mask.sum()),
                   train_seconds=time.perf_counter() - started)
    rows = compare(CLASSIFIER_METHODS, model, task, seed=scenario.seed, options=options)
    if retrain_seeds > 1:  # retrain's own spread: its seed (init, order, attack draw) moved on, the rest kept
        extra = [compare(["retrain"], model, task, seed=scenario.seed + k, options=options)[0]
                 for k in range(1, retrain_seeds)]
        setting["retrain_spread"] = spread_of([next(r for r in rows if r["method"] == "retrain"), *extra])
    return {**setting, "rows": rows}


# ----------------------------------------------------------------------------------------------------------------
# Setting (b): the proof's downstream classifier
# ----------------------------------------------------------------------------------------------------------------

def labelled_draw(server: GeneratorServer, evaluator: Evaluator, count: int, tag: str) -> LabelledImages:
    """`count` samples of G's seeded draw `tag`, with the evaluator's labels (as the proof's downstream set)."""
    images = server.sample(count, tag)
    return images, pseudo_label(evaluator, images)


def downstream_setting(scenario: Scenario, splits: DatasetSplits, request: ForgetRequest, before: LabelledImages,
                       heldout: LabelledImages, retrained: LabelledImages, retrain_seconds: float,
                       options: ClassifierUnlearningOptions, retrain_seeds: int = 1) -> dict[str, Any]:
    """The downstream classifier on G's samples forgets the class; its reference is trained on retrain's G.
    `retrain_seconds`: the federation's retrain plus drawing and labelling retrain's samples."""
    test, num_classes, epochs = splits.test, splits.train.num_classes, scenario.unlearning.downstream_epochs
    counts = {"samples": len(before[1]), "forget_items": int((before[1] == request.forget_class).sum()),
              "retrain_forget_items": int((retrained[1] == request.forget_class).sum()),
              "heldout_forget_items": int((heldout[1] == request.forget_class).sum())}
    if not counts["forget_items"] or not counts["heldout_forget_items"]:
        return {**counts, "skipped": "the trained G drew no sample the evaluator labels as the class"}
    model = downstream_classifier(*before, num_classes, epochs=epochs)
    started = time.perf_counter()
    reference = downstream_classifier(*retrained, num_classes, epochs=epochs)
    reference_seconds = retrain_seconds + time.perf_counter() - started
    task = generated_class_request(*before, *heldout, test.float_images(), test.labels, [request.forget_class],
                                   num_classes)
    rows = compare_with_reference(CLASSIFIER_METHODS, model, task, reference, reference_seconds, seed=scenario.seed,
                                  options=options)
    out: dict[str, Any] = {**counts, "rows": rows}
    if retrain_seeds > 1:  # the reference classifier retrained under further seeds on the same retrained samples
        extra = []
        for k in range(1, retrain_seeds):
            started = time.perf_counter()
            other = downstream_classifier(*retrained, num_classes, epochs=epochs, seed=k)
            seconds = retrain_seconds + time.perf_counter() - started
            extra.append({**measure(other, task, seed=scenario.seed, options=options), "seconds": seconds})
        out["retrain_spread"] = spread_of([next(r for r in rows if r["method"] == "retrain"), *extra])
    return out


# ----------------------------------------------------------------------------------------------------------------
# Targets
# ----------------------------------------------------------------------------------------------------------------

def generator_checks(row: dict[str, Any], retrain: dict[str, Any]) -> dict[str, bool]:
    """Issue 18's generator targets for one method: forget-class rate and retained FID_LeNet against retrain's."""
    rate_bound = max(GENERATOR_RATE_FLOOR, retrain["forget_class_rate"] + GENERATOR_RATE_MARGIN)
    return {"forget_rate": row["forget_class_rate"] <= rate_bound,
            "retained_fid": row["fid_lenet_retained"] <= GENERATOR_FID_RATIO * retrain["fid_lenet_retained"]}


def classifier_checks(row: dict[str, Any], retrain: dict[str, Any]) -> dict[str, bool]:
    """Issue 18's classifier targets for one method, against the setting's retrain row."""
    return {"forget": row["forget_accuracy"] <= retrain["forget_accuracy"] + CLASSIFIER_FORGET_MARGIN,
            "retained": abs(row["retained_accuracy"] - retrain["retained_accuracy"]) <= CLASSIFIER_RETAINED_MARGIN,
            "mia_auc": abs(row["mia_auc"] - retrain["mia_auc"]) <= CLASSIFIER_AUC_MARGIN,
            "time": row["seconds"] <= CLASSIFIER_TIME_SHARE * retrain["seconds"]}


def with_checks(rows: list[dict[str, Any]], checks, spread: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Each method's row gets its target checks against the retrain row (not retrain's, nor the before row:
    `original` for a classifier, `before` for the generator); with retrain's `spread` (several retrain seeds) also
    `checks_mean`, against the retrains' mean (retrain's own seed moves these classifiers by about as much as the
    targets' bands)."""
    retrain = next(row for row in rows if row["method"] == "retrain")
    mean = spread_reference(spread) if spread else None
    checked = []
    for row in rows:
        if row["method"] not in ("retrain", "original", "before"):
            row = {**row, "checks": checks(row, retrain)}
            if mean is not None:
                row["checks_mean"] = checks(row, mean)
        checked.append(row)
    return checked


def spread_reference(spread: dict[str, Any]) -> dict[str, Any]:
    """A retrain row made of the retrains' means (every SPREAD_KEYS value)."""
    return {"method": "retrain", **{key: spread[key]["mean"] for key in SPREAD_KEYS}}


def verdicts(setting: str, rows: list[dict[str, Any]], key: str = "checks", against: str = "") -> list[str]:
    """The target lines of one setting: PASS where some method (of the group the issue names) meets all of its
    `key` checks (`checks_mean`: against the retrains' mean; `against` names that reference in the lines)."""
    checked = [row for row in rows if key in row]
    passing = [row["method"] for row in checked if all(row[key].values())]
    fnn_pass = [name for name in passing if name.startswith("fnn")]
    if setting == "generator":
        if not any(r["method"].startswith("fnn") for r in checked):
            return ["- generator, fnn: not run (no fnn method among --methods)"]
        lines = []
        for key, text in (("forget_rate", "forget-class rate <= max(1 %, retrain's + 0.5 point)"),
                          ("retained_fid", "retained FID_LeNet within 10 % of retrain's (at most 1.1 x)")):
            names = [r["method"] for r in checked if r["method"].startswith("fnn") and r["checks"][key]]
            lines.append(f"- generator, fnn, {text}: {'PASS' if names else 'MISS'} ({', '.join(names) or 'none'})")
        fnn_rows = [r for r in checked if r["method"].startswith("fnn")]
        if fnn_rows:  # the best layer type: fewest targets missed, then the lowest retained FID
            best = min(fnn_rows, key=lambda r: (sum(not v for v in r["checks"].values()), r["fid_lenet_retained"]))
            lines.append(f"- generator, best layer type: {best['method']} (fewest targets missed, then lowest "
                         f"retained FID: {best['fid_lenet_retained']:.2f})")
        return lines
    others = [name for name in passing if not name.startswith("fnn")]
    rule = "forget acc <= retrain's + 2 points, retained within 1 point, MIA AUC within 0.03, <= 1/10 of its time"
    return [f"- {setting}{against}, fnn ({rule}): {'PASS' if fnn_pass else 'MISS'} ({', '.join(fnn_pass) or 'none'})",
            f"- {setting}{against}, another method: {'PASS' if others else 'MISS'} ({', '.join(others) or 'none'})"]


# ----------------------------------------------------------------------------------------------------------------
# Report: markdown and the bar chart
# ----------------------------------------------------------------------------------------------------------------

def _cell(value: float | None, reference: float | None, digits: int) -> str:
    if value is None:
        return "-"
    gap = "" if reference is None else f" ({value - reference:+.{digits}f})"
    return f"{value:.{digits}f}{gap}"


def _speed(retrain_seconds: float, seconds: float | None) -> str:
    return "-" if seconds is None else f"{retrain_seconds / max(seconds, 1e-9):.3g}x"


def _marks(row: dict[str, Any]) -> str:
    return ", ".join(f"{k} {'PASS' if v else 'MISS'}" for k, v in row.get("checks", {}).items()) or "-"


def generator_table(rows: list[dict[str, Any]]) -> list[str]:
    retrain = next(row for row in rows if row["method"] == "retrain")
    lines = ["| method | forget-class rate (gap) | retained FID_LeNet (gap) | downstream acc (gap) | seconds | "
             "speed-up | G rounds | site D steps | targets |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ref = None if row["method"] == "retrain" else retrain
        cells = [row["method"], _cell(row["forget_class_rate"], ref and ref["forget_class_rate"], 4),
                 _cell(row["fid_lenet_retained"], ref and ref["fid_lenet_retained"], 2),
                 _cell(row["downstream_accuracy"], ref and ref["downstream_accuracy"], 4),
                 _cell(row["seconds"], None, 2), _speed(retrain["seconds"], row["seconds"]),
                 "-" if row["rounds"] is None else str(row["rounds"]),
                 "-" if row["site_d_steps"] is None else str(row["site_d_steps"]), _marks(row)]
        lines.append(f"| {' | '.join(cells)} |")
    return lines


def classifier_table(rows: list[dict[str, Any]]) -> list[str]:
    retrain = next(row for row in rows if row["method"] == "retrain")
    lines = ["| method | forget acc (gap) | retained acc (gap) | MIA AUC (gap) | TPR at 1 % FPR | seconds | "
             "speed-up | train batches (retrain's ÷ this) | targets |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ref = None if row["method"] == "retrain" else retrain
        lines.append(
            f"| {row['method']} | {_cell(row['forget_accuracy'], ref and ref['forget_accuracy'], 4)} | "
            f"{_cell(row['retained_accuracy'], ref and ref['retained_accuracy'], 4)} | "
            f"{_cell(row['mia_auc'], ref and ref['mia_auc'], 4)} | {row['mia_tpr_at_1pct_fpr']:.4f} | "
            f"{row['seconds']:.2f} | {_speed(retrain['seconds'], row['seconds'])} | "
            f"{_batches(row, retrain)} | {_marks(row)} |")
    return lines


def _batches(row: dict[str, Any], retrain: dict[str, Any]) -> str:
    """A method's training batches (forward + backward + step; the seconds' machine-free counterpart) and how many
    times fewer than retrain's; "-" where a row has none (the original, a given reference)."""
    own, reference = row.get("train_batches"), retrain.get("train_batches")
    if own is None:
        return "-"
    return f"{own} ({reference / own:.3g}x)" if reference and own else str(own)


def _site_intro(site: dict[str, Any]) -> str:
    return (f"Shard of {site['shard_items']} items (classes {site['classes_held']}, {site['forget_items']} to forget); "
            f"tested on the {site['test_items']} test images of those classes; original trained in "
            f"{site['train_seconds']:.1f} s.")


def _downstream_intro(down: dict[str, Any]) -> str:
    return (f"Trained on {down['samples']} generated samples ({down['forget_items']} labelled as the class; retrain's "
            f"G drew {down['retrain_forget_items']}); attack non-members: a held-out draw of the same G "
            f"({down['heldout_forget_items']} labelled as the class); retrain's seconds are the federation's retrain "
            "plus drawing, labelling and training its classifier.")


def spread_lines(setting: dict[str, Any]) -> list[str]:
    """Retrain's spread under several seeds, and each method's gap to its mean in its sds (`--retrain-seeds`)."""
    spread = setting.get("retrain_spread")
    if not spread:
        return []
    summary = "; ".join(f"{key} {spread[key]['mean']:.4f} ± {spread[key]['sd']:.4f}" for key in SPREAD_KEYS)
    lines = [f"Retrain under {spread['count']} seeds (mean ± sd): {summary}. Gap to that mean in its sds:", "",
             "| method | forget acc | retained acc | MIA AUC | targets against the mean |", "|---|---|---|---|---|"]
    for row in setting["rows"]:
        if row["method"] in ("retrain", "original"):
            continue
        cells = [f"{(row[k] - spread[k]['mean']) / spread[k]['sd']:+.1f}" if spread[k]["sd"] > 0 else "-"
                 for k in ("forget_accuracy", "retained_accuracy", "mia_auc")]
        marks = _marks({"checks": row.get("checks_mean", {})})
        lines.append(f"| {row['method']} | {' | '.join(cells)} | {marks} |")
    return [*lines, ""]


def markdown(report: dict[str, Any]) -> str:
    request = report["request"]
    out = [f"# fnn-compare: {report['scenario']['name']}", "",
           f"Site {request['site']} forgets class {request['class']} after round {report['rounds']}. FNN is a "
           "RECONSTRUCTION of arXiv 2410.22374 from its abstract (fedgan/forgetting_layers.py). Gaps are after - "
           "retrain; speed-up is retrain's seconds over the method's.", ""]
    targets = []
    if "generator" in report:
        out += [f"## Generator (federation trained in {report['train_seconds']:.0f} s)", "",
                *generator_table(report["generator"]["rows"]), ""]
        targets += verdicts("generator", report["generator"]["rows"])
    site = report["classifier_site"]
    sections = [(f"Classifier (a): site {site['site']}'s own MLP", "classifier (a)", site, _site_intro)]
    if "classifier_downstream" in report:
        sections.append(("Classifier (b): the proof's downstream classifier", "classifier (b)",
                         report["classifier_downstream"], _downstream_intro))
    for title, name, setting, intro in sections:
        out += [f"## {title}", ""]
        if "skipped" in setting:
            out += [f"Skipped: {setting['skipped']}.", ""]
            targets.append(f"- {name}: not run ({setting['skipped']})")
            continue
        out += [intro(setting), "", *classifier_table(setting["rows"]), ""]
        out += spread_lines(setting)
        spread = setting.get("retrain_spread")
        first = ", against the first retrain" if spread else ""
        targets += verdicts(name, setting["rows"], against=first)
        if spread:
            targets += verdicts(name, setting["rows"], "checks_mean",
                                f", against the mean of {spread['count']} retrains")
    return "\n".join([*out, "## Issue 18's targets", "", *targets, ""])


def _bars(names: list[str], series: list[tuple[Any, str, list[float], float, str]]) -> None:
    """Grouped bars, one group per method, each series (axes, label, values, retrain's value, colour) on its own
    axes (a rate and an FID need two scales); retrain's value as a dashed line of the series' colour."""
    width = 0.8 / len(series)
    for k, (axes, label, values, reference, colour) in enumerate(series):
        offsets = [i + (k - (len(series) - 1) / 2) * width for i in range(len(names))]
        axes.bar(offsets, values, width, label=label, color=colour)
        axes.axhline(reference, color=colour, linestyle="--", linewidth=1)
        axes.set_ylim(0, 1.3 * max(*values, reference, 1e-3))  # room for the legend above the bars
    first = series[0][0]
    first.set_xticks(range(len(names)))
    first.set_xticklabels(names, rotation=45, ha="right")
    first.grid(alpha=0.3, axis="y")
    handles = [handle for axes in dict.fromkeys(entry[0] for entry in series)
               for handle in axes.get_legend_handles_labels()[0]]
    first.legend(handles=handles, loc="upper left", ncol=2)


def plot(report: dict[str, Any], path: Path) -> None:
    """One panel per setting: forget and retained metric per method, retrain's values as dashed lines."""
    panels = [key for key in ("generator", "classifier_site", "classifier_downstream")
              if key in report and "rows" in report[key]]
    figure = Figure(figsize=(6 * max(len(panels), 1), 4.5), layout="constrained")
    axes_list = figure.subplots(1, max(len(panels), 1), squeeze=False)[0]
    titles = {"generator": "generator", "classifier_site": "classifier (a): site's own",
              "classifier_downstream": "classifier (b): downstream"}
    for axes, key in zip(axes_list, panels):
        rows = report[key]["rows"]
        retrain = next(row for row in rows if row["method"] == "retrain")
        names = [row["method"] for row in rows]
        if key == "generator":
            twin = axes.twinx()
            _bars(names, [(axes, "forget-class rate", [r["forget_class_rate"] for r in rows],
                           retrain["forget_class_rate"], "tab:red"),
                          (twin, "retained FID_LeNet (right)", [r["fid_lenet_retained"] for r in rows],
                           retrain["fid_lenet_retained"], "tab:blue")])
            axes.set_ylabel("forget-class rate")
            twin.set_ylabel("retained FID_LeNet")
        else:
            _bars(names, [(axes, "forget accuracy", [r["forget_accuracy"] for r in rows],
                           retrain["forget_accuracy"], "tab:red"),
                          (axes, "retained accuracy", [r["retained_accuracy"] for r in rows],
                           retrain["retained_accuracy"], "tab:green")])
            axes.set_ylim(0, 1.25)
            axes.set_ylabel("accuracy")
        axes.set_title(f"{titles[key]} (dashed: retrain)")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())


# ----------------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------------

def generator_row(name: str, entry: dict[str, Any], side: str = "after") -> dict[str, Any]:
    """One method's generator numbers from its certificate entry (`side` "before": the trained federation)."""
    before = side == "before"
    return {"method": name, **{key: entry[key][side] for key in
                               ("forget_class_rate", "fid_lenet_retained", "downstream_accuracy")},
            "seconds": None if before else entry["seconds"], "rounds": None if before else entry["rounds"],
            "site_d_steps": None if before else entry["site_d_steps"]}


def federation_settings(scenario: Scenario, request: ForgetRequest, methods: list[str], out: Path,
                        options: ClassifierUnlearningOptions, reuse: bool = False,
                        retrain_seeds: int = 1) -> dict[str, Any]:
    """The generator rows (every method from one trained state, one retrain) and classifier setting (b).
    `reuse`: the trained federation and the retrain (its certificate and its G's labelled draw) from an earlier
    call's `out`, when there."""
    splits, evaluator = prepare(scenario)
    rounds, samples = request.round, scenario.unlearning.downstream_samples

    # ---------------- train once up to the request ----------------
    federation = TrainedFederation(scenario, splits, evaluator, rounds, cache=out / "trained.pt", reuse=reuse)
    server, train_seconds = federation.server, federation.train_seconds
    # setting (b)'s training set is the proof's downstream draw of this G; its non-members another draw of it
    before = labelled_draw(server, evaluator, samples, f"{CERTIFICATE_DRAW}-downstream")
    heldout = labelled_draw(server, evaluator, samples, HELDOUT_DRAW)
    print(json.dumps({"scenario": scenario.name, "rounds": rounds, "train_seconds": train_seconds}), flush=True)

    def serve(name: str) -> dict[str, Any]:
        config = dataclasses.replace(scenario.unlearning, methods=(name,))
        return federation.serve(config, [request], out / name)[0]

    # ---------------- retrain once (the reference for every method, and setting (b)'s) ----------------
    retrain_file = out / "retrain.pt"
    if reuse and retrain_file.exists():
        saved = torch.load(retrain_file, weights_only=False)
        certificates, retrained, retrain_seconds = {"retrain": saved["certificate"]}, saved["draw"], saved["seconds"]
    else:
        certificates = {"retrain": serve("retrain")}
        started = time.perf_counter()
        retrained = labelled_draw(server, evaluator, samples, f"{CERTIFICATE_DRAW}-downstream")  # retrain's G
        retrain_seconds = certificates["retrain"]["seconds"] + time.perf_counter() - started
        buffer = io.BytesIO()
        torch.save({"certificate": certificates["retrain"], "draw": retrained, "seconds": retrain_seconds}, buffer)
        atomic_write_bytes(retrain_file, buffer.getvalue())
    for name in methods:
        certificates[name] = serve(name)
        print(json.dumps({"method": name, **generator_row(name, certificates[name])}), flush=True)
    rows = [generator_row("before", certificates["retrain"], "before"),
            *(generator_row(name, certificates[name]) for name in methods),
            generator_row("retrain", certificates["retrain"])]

    # ---------------- setting (b): the downstream classifier ----------------
    down = downstream_setting(scenario, splits, request, before, heldout, retrained, retrain_seconds, options,
                              retrain_seeds)
    if "rows" in down:
        down["rows"] = with_checks(down["rows"], classifier_checks, down.get("retrain_spread"))
    return {"train_seconds": train_seconds, "classifier_downstream": down,
            "generator": {"rows": with_checks(rows, generator_checks), "certificates": certificates}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario")
    parser.add_argument("--out", default=None)
    parser.add_argument("--methods", default=None, help="comma-separated GAN methods (default: [unlearning] methods)")
    parser.add_argument("--skip-federation", action="store_true", help="classifier setting (a) only")
    parser.add_argument("--request", type=int, default=0, help="which [[forget]] entry to serve (0: the first)")
    parser.add_argument("--seed", type=int, default=None, help="the scenario with another seed")
    parser.add_argument("--reuse", action="store_true",
                        help="take the trained federation and the retrain from an earlier call's --out")
    parser.add_argument("--retrain-seeds", type=int, default=1,
                        help="classifier settings: also retrain the reference under this many seeds in all and "
                             "report its spread (mean ± sd) and each method's gap in its sds")
    parser.add_argument("--timing-repeats", type=int, default=5,
                        help="classifier settings: run each method this many times, its seconds the median "
                             "(sub-second methods' single timings move by a third on a shared CPU)")
    parser.add_argument("--classifier-option", action="append", default=[], metavar="KEY=VALUE",
                        help="a ClassifierUnlearningOptions field for both classifier settings (repeatable), "
                             "e.g. epochs=10 or fnn_iterations=5")
    args = parser.parse_args()
    scenario = load_scenario(args.scenario)
    if args.seed is not None:
        scenario = scenario.replace(seed=args.seed)
    out = Path(args.out or f"runs/fnn-compare-{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    request = scenario.forget[args.request]
    if request.forget_class is None:
        raise SystemExit(f"fnn_compare serves a class request; [[forget]] entry {args.request} names items")
    request = dataclasses.replace(request, round=request.round or scenario.training.rounds)
    options = dataclasses.replace(ClassifierUnlearningOptions(timing_repeats=args.timing_repeats),
                                  **parse_overrides(",".join(args.classifier_option)))
    report: dict[str, Any] = {"scenario": scenario.to_dict(), "request": request.to_dict(), "rounds": request.round,
                              "classifier_options": dataclasses.asdict(options)}

    # ---------------- setting (a): needs the data only ----------------
    site = site_setting(scenario, load_federation_data(scenario), request, options, args.retrain_seeds)
    if "rows" in site:
        site["rows"] = with_checks(site["rows"], classifier_checks, site.get("retrain_spread"))
    report["classifier_site"] = site
    print(json.dumps({"classifier_site": {k: v for k, v in site.items() if k != "rows"}}), flush=True)

    # ---------------- the generator and setting (b): one trained federation, one retrain ----------------
    if not args.skip_federation:
        methods = [m for m in (args.methods.split(",") if args.methods else scenario.unlearning.methods)
                   if m != "retrain"]
        report.update(federation_settings(scenario, request, methods, out, options, args.reuse,
                                          args.retrain_seeds))

    atomic_write_text(out / "fnn-compare.json", json.dumps(report, indent=1, default=str))  # first: the numbers
    text = markdown(report)
    atomic_write_text(out / "fnn-compare.md", text)
    plot(report, out / "fnn-compare.png")
    print(text)


if __name__ == "__main__":
    main()
