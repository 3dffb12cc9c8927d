"""Pictures for the run directory: sample grids and training curves, each written atomically as PNG.

Matplotlib is driven through `Figure` objects only (no pyplot), so no global backend is switched, no display is
needed, and plotting from a worker thread is safe.
"""
from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import torch
from matplotlib.figure import Figure
from torchvision.utils import save_image

from fedgan.storage import atomic_write_bytes


def save_sample_grid(images: torch.Tensor, path: str | os.PathLike[str], *, nrow: int, padding: int = 2) -> None:
    """Save (N, C, H, W) images in [-1, 1] as one PNG grid with `nrow` images per row.

    For a conditional generator, pass the samples class by class with `nrow` samples per class: one row per class.
    The grid is (ceil(N / nrow) * (H + padding) + padding) pixels high and (nrow * (W + padding) + padding) wide.
    """
    buffer = io.BytesIO()
    # value_range pins the mapping [-1, 1] -> [0, 1]; per-grid min/max scaling would hide a washed-out generator.
    save_image(images.detach().cpu().float(), buffer, nrow=nrow, padding=padding, normalize=True,
               value_range=(-1.0, 1.0), format="png")
    atomic_write_bytes(path, buffer.getvalue())


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(rounds, values) of the records that carry both `round` and a numeric `key`."""
    points = [
        (float(record["round"]), float(record[key]))
        for record in records
        if isinstance(record.get("round"), int | float) and isinstance(record.get(key), int | float)
    ]
    return [r for r, _ in points], [v for _, v in points]


def _plot_panel(axes: Any, records: Sequence[dict[str, Any]], keys: dict[str, str], ylabel: str) -> None:
    """One panel with a line per key present in the records, or a 'no data' note when none is."""
    drawn = False
    for key, label in keys.items():
        rounds, values = _series(records, key)
        if rounds:
            axes.plot(rounds, values, marker="." if len(rounds) < 50 else None, label=label)
            drawn = True
    if drawn:
        axes.legend()
    else:
        axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
    axes.set_xlabel("round")
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)


def plot_training_curves(records: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """Two panels vs round: generator and mean site discriminator loss; FID_LeNet where it was measured.

    `records` are the per-round log lines; records lacking a key are skipped for that curve only.
    """
    figure = Figure(figsize=(10, 4), layout="constrained")
    loss_axes, fid_axes = figure.subplots(1, 2)
    _plot_panel(loss_axes, records, {"generator_loss": "generator", "discriminator_loss": "discriminator (site mean)"},
                "loss")
    loss_axes.set_title("losses")
    _plot_panel(fid_axes, records, {"fid_lenet": "FID_LeNet"}, "FID_LeNet")
    fid_axes.set_title("FID_LeNet (lower is better)")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())


def plot_mixture_shares(reports: dict[str, dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """Bars of the first source's share per label (or each site's share) for every run, the real share as marks."""
    first = next(iter(reports.values()))
    per_label = "per_label" in first
    rows = first["per_label"] if per_label else first.get("sites", [])
    figure = Figure(figsize=(max(6.0, 0.9 * len(rows) * max(len(reports), 1) / 2 + 3), 4), layout="constrained")
    axes = figure.subplots()
    width = 0.8 / max(len(reports), 1)
    for k, (name, report) in enumerate(reports.items()):
        values = [r["generated"][0] for r in report["per_label"]] if per_label else [s["share"] for s in
                                                                                     report["sites"]]
        axes.bar([i + (k - (len(reports) - 1) / 2) * width for i in range(len(values))], values, width, label=name)
    truth = [r["real"][0] for r in rows] if per_label else [s["weight"] for s in rows]
    axes.scatter(range(len(truth)), truth, color="black", marker="_", s=600, linewidths=2, label="real", zorder=3)
    axes.set_xticks(range(len(rows)))
    axes.set_xticklabels([str(r["label"]) for r in rows] if per_label else [f"site {s['site']}" for s in rows])
    axes.set_ylim(0, 1)
    axes.set_ylabel(f"share of {first['sources'][0]}" if per_label else "share of generated samples")
    axes.set_xlabel("label" if per_label else "site")
    axes.legend()
    axes.grid(alpha=0.3, axis="y")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())
