"""Did the generator learn the mixture of the sites? (UA-GAN's headline claim, docs/methods.md, Universal Aggregation.)

Two views, both through the evaluator:
- **Modes per label** (mixed datasets such as the hard split, where digit i and garment i share label i): for each
  label, the share of each source among generated samples of that label next to the source's share among the
  federation's real items of that label. The error of a label is the total-variation distance between the two
  source distributions (with two sources: |generated MNIST share − real MNIST share|); `mae` is its mean over labels.
  A conditional generator's samples are grouped by the label they were asked for, an unconditional one's by the
  label the evaluator predicts.
- **Site shares** (sites whose label sets are disjoint, e.g. trousers at one site and sneakers at another): the
  share of generated samples the evaluator puts in each site's labels next to the site's share of the data, n_j / n.

The real shares are those of the items the partition gave the sites (the simulator's knowledge, not the server's).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fedgan.evaluation.classifier import Evaluator


def mode_counts(labels: np.ndarray, sources: np.ndarray | None, num_classes: int, num_sources: int) -> np.ndarray:
    """Real items per (source, label), shape (num_sources, num_classes)."""
    sources = np.zeros_like(labels) if sources is None else sources
    counts = np.zeros((num_sources, num_classes), dtype=np.int64)
    np.add.at(counts, (sources, labels), 1)
    return counts


def disjoint_site_labels(class_counts: np.ndarray) -> list[list[int]] | None:
    """Each site's labels when no label is held by two sites (and there are at least two sites), else None."""
    held = np.asarray(class_counts) > 0  # (K, C)
    if held.shape[0] < 2 or (held.sum(0) > 1).any():
        return None
    return [np.flatnonzero(row).tolist() for row in held]


def _shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum(-1, keepdims=True)
    return np.divide(counts, total, out=np.zeros(counts.shape, dtype=np.float64), where=total > 0)


def mixture_report(
    evaluator: Evaluator,
    fake_images: torch.Tensor,
    fake_labels: torch.Tensor | None,
    real_modes: np.ndarray,
    site_class_counts: np.ndarray,
    source_names: tuple[str, ...] = (),
    class_names: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The `mixture` block of summary.json (see the module docstring). `real_modes` is (sources, labels) counts."""
    num_sources, num_classes = real_modes.shape
    modes = evaluator.predict_modes(fake_images).cpu().numpy()
    generated_source = modes // num_classes if evaluator.num_sources > 1 else np.zeros_like(modes)
    predicted_label = modes % num_classes
    group = fake_labels.cpu().numpy() if fake_labels is not None else predicted_label
    generated = mode_counts(group, np.minimum(generated_source, num_sources - 1), num_classes, num_sources)
    real_share = _shares(real_modes.T)  # (C, S)
    generated_share = _shares(generated.T)
    report: dict[str, Any] = {
        "grouped_by": "asked label" if fake_labels is not None else "predicted label",
        "sources": list(source_names) or ["all"],
        "samples": int(len(fake_images)),
        "evaluator_mode_accuracy": evaluator.mode_accuracy,
    }
    if num_sources > 1:
        errors = 0.5 * np.abs(generated_share - real_share).sum(1)  # total variation per label
        present = real_modes.sum(0) > 0
        report["per_label"] = [
            {"label": y, "name": class_names[y] if y < len(class_names) else str(y),
             "real": real_share[y].round(4).tolist(), "generated": generated_share[y].round(4).tolist(),
             "error": round(float(errors[y]), 4), "samples": int(generated[:, y].sum())}
            for y in range(num_classes) if present[y]
        ]
        report["mae"] = float(errors[present].mean())
    if fake_labels is not None:
        report["label_fidelity"] = float((predicted_label == fake_labels.cpu().numpy()).mean())
    site_labels = disjoint_site_labels(site_class_counts)
    if site_labels is not None:
        label_share = np.bincount(predicted_label, minlength=num_classes) / max(len(predicted_label), 1)
        sizes = np.asarray(site_class_counts).sum(1)
        report["sites"] = [
            {"site": j, "labels": labels, "weight": round(float(sizes[j] / sizes.sum()), 4),
             "share": round(float(label_share[labels].sum()), 4),
             "error": round(abs(float(label_share[labels].sum() - sizes[j] / sizes.sum())), 4)}
            for j, labels in enumerate(site_labels)
        ]
        report["site_share_max_error"] = max(site["error"] for site in report["sites"])
        # Samples in labels no site holds (evaluator confusions or invented content) count against every site.
        report["outside_share"] = round(float(1 - sum(site["share"] for site in report["sites"])), 4)
    return report


def headline(report: dict[str, Any] | None) -> dict[str, float]:
    """The one-number view of a mixture report for per-round logs: `mixture_mae` and/or `site_share_max_error`."""
    if not report:
        return {}
    keys = ("mae", "site_share_max_error", "label_fidelity")
    names = {"mae": "mixture_mae"}
    return {names.get(key, key): report[key] for key in keys if key in report}
