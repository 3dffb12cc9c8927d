"""The mixture measurement (fedgan.evaluation.mixture) and the hard-split pieces it relies on."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from fedgan.datasets import load_dataset, select_classes
from fedgan.errors import DataError, ScenarioError
from fedgan.evaluation.classifier import label_logits, load_or_train_evaluator
from fedgan.evaluation.mixture import disjoint_site_labels, mixture_report, mode_counts
from fedgan.partition import partition_dataset
from fedgan.scenario import PartitionConfig
from scenarios.runner import run_scenario
from tests.conftest import stripes, tiny_scenario


@dataclass
class FixedModes:
    """Stands in for an evaluator whose mode predictions are known, to pin the report's arithmetic."""

    modes: np.ndarray
    num_sources: int = 2
    mode_accuracy: float | None = 0.99

    def predict_modes(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.modes)


def test_per_label_error_is_the_distance_between_generated_and_real_source_shares():
    # 2 labels x 2 sources; real: label 0 is 50 % source 0, label 1 is 25 % source 0.
    real = np.array([[50, 25], [50, 75]])
    asked = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    # label 0: all four generated as source 0 (mode 0); label 1: one of four as source 0 (mode 1), three as mode 3.
    modes = np.array([0, 0, 0, 0, 1, 3, 3, 3])
    report = mixture_report(FixedModes(modes), torch.zeros(8, 1, 28, 28), asked, real, np.array([[1, 1]]),
                            ("a", "b"), ("zero", "one"))
    assert [row["generated"] for row in report["per_label"]] == [[1.0, 0.0], [0.25, 0.75]]
    assert [row["error"] for row in report["per_label"]] == [0.5, 0.0]
    assert report["mae"] == pytest.approx(0.25)
    assert report["label_fidelity"] == 1.0
    assert "sites" not in report  # one site: no site shares


def test_site_shares_are_reported_for_disjoint_sites_against_their_data_share():
    counts = np.array([[0, 300, 0], [0, 0, 100]])  # site 0 holds label 1, site 1 label 2: 3 : 1
    assert disjoint_site_labels(counts) == [[1], [2]]
    modes = np.array([1] * 9 + [2] * 1)  # 90 % label 1, 10 % label 2
    report = mixture_report(FixedModes(modes, num_sources=1), torch.zeros(10, 1, 28, 28), None,
                            counts.sum(0, keepdims=True), counts)
    assert [site["share"] for site in report["sites"]] == [0.9, 0.1]
    assert [site["weight"] for site in report["sites"]] == [0.75, 0.25]
    assert report["site_share_max_error"] == pytest.approx(0.15)
    assert disjoint_site_labels(np.array([[1, 1], [1, 0]])) is None  # label 0 at both sites


def test_mode_counts_tally_source_and_label():
    counts = mode_counts(np.array([0, 1, 1, 2]), np.array([0, 0, 1, 1]), 3, 2)
    assert counts.tolist() == [[1, 1, 0], [0, 1, 1]]


def test_mode_evaluator_tells_sources_apart_and_sums_them_for_label_logits(tmp_path: Path):
    # One label, two sources (horizontal vs vertical stripes): label accuracy is trivial, mode accuracy is not.
    train = torch.cat([stripes(0, 200, 1), stripes(1, 200, 2)])
    test = torch.cat([stripes(0, 50, 3), stripes(1, 50, 4)])
    sources = torch.cat([torch.zeros(200), torch.ones(200)]).long()
    test_sources = torch.cat([torch.zeros(50), torch.ones(50)]).long()
    evaluator = load_or_train_evaluator("stripes-modes", train, torch.zeros(400).long(), test, torch.zeros(100).long(),
                                        1, epochs=2, cache=tmp_path, train_sources=sources,
                                        test_sources=test_sources)
    assert evaluator.num_sources == 2 and evaluator.mode_accuracy > 0.95 and evaluator.accuracy == 1.0
    assert evaluator.logits(test).shape == (100, 1)
    assert (evaluator.predict_modes(test) == test_sources).float().mean() > 0.95
    cached = load_or_train_evaluator("stripes-modes", train, torch.zeros(400).long(), test, torch.zeros(100).long(),
                                     1, epochs=2, cache=tmp_path, train_sources=sources, test_sources=test_sources)
    assert cached.from_cache and cached.num_sources == 2 and cached.mode_accuracy == evaluator.mode_accuracy


def test_label_logits_are_the_log_sum_over_sources():
    mode_logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])  # 2 sources x 2 labels
    expected = torch.tensor([[np.logaddexp(0.0, 2.0), np.logaddexp(1.0, 3.0)]], dtype=torch.float32)
    assert torch.allclose(label_logits(mode_logits, 2), expected)


def test_select_classes_keeps_and_relabels_only_the_listed_labels():
    splits = load_dataset("synthetic_mix", num_train=400, num_test=100)
    small = select_classes(splits, [3, 1])
    assert small.train.num_classes == 2 and set(small.train.labels.tolist()) == {0, 1}
    original = splits.train.labels[torch.isin(splits.train.ids, small.train.ids)]
    assert set(original.tolist()) == {1, 3}
    assert small.train.class_names == (splits.train.class_names[3], splits.train.class_names[1])
    assert small.train.sources is not None
    with pytest.raises(DataError, match="data.classes"):
        select_classes(splits, [1, 1])


def test_by_class_partition_gives_each_site_its_classes_at_the_asked_share():
    data = load_dataset("synthetic", num_train=1000, num_test=100).train
    parts = partition_dataset(data, "by_class", 2, 0, classes=[[1], [7]], shares=[1.0, 0.5])
    labels = [set(data.labels[p].tolist()) for p in parts]
    assert labels == [{1}, {7}]
    assert len(parts[0]) == 100 and len(parts[1]) == 50
    with pytest.raises(ScenarioError, match="partition.classes"):
        partition_dataset(data, "by_class", 2, 0, classes=[[1], [1]])
    with pytest.raises(ScenarioError, match="partition.shares"):
        partition_dataset(data, "by_class", 2, 0, classes=[[1], [2]], shares=[1.0, 0.0])


def test_hard_split_comparison_writes_mixture_for_every_aggregator_and_seed(tmp_path: Path):
    scenario = tiny_scenario(
        data={"name": "synthetic_mix", "num-train": 600, "num-test": 200, "classes": [0, 1, 2]},
        model={"conditional": True},
        training={"rounds": 2, "d-steps": 2, "r1-gamma": 1.0},
        compare={"aggregators": ["ua", "avg"], "seeds": [0, 1]},
    ).replace(partition=PartitionConfig("mixture", {}))
    summary = run_scenario(scenario, tmp_path / "run")
    assert set(summary["variants"]) == {"ua-seed0", "ua-seed1", "avg-seed0", "avg-seed1"}
    assert set(summary["mixture"]) == {"ua", "avg"} and len(summary["mixture"]["ua"]["mae"]) == 2
    variant = json.loads((tmp_path / "run" / "ua-seed1" / "summary.json").read_text())
    assert variant["seed"] == 1 and len(variant["mixture"]["per_label"]) == 3
    assert variant["mixture"]["sources"] == ["shapes", "inverted_shapes"]
    for name in ("comparison.md", "mixture.png"):
        assert (tmp_path / "run" / name).stat().st_size > 0
    assert "mean abs. error" in (tmp_path / "run" / "comparison.md").read_text()


def test_fid_reference_of_a_mixed_dataset_draws_from_every_source():
    from fedgan.experiment import real_reference

    splits = load_dataset("synthetic_mix", num_train=200, num_test=100)
    reference = real_reference(splits, 50)
    assert reference.shape == (50, 1, 28, 28)
    # Inverted shapes are mostly bright: both kinds must be there, not only the first source's block.
    brightness = reference.mean(dim=(1, 2, 3))
    assert (brightness > 0).any() and (brightness < 0).any()
    assert torch.equal(reference, real_reference(splits, 50))  # the same for every run


def test_mixture_markdown_shows_every_run_next_to_the_truth():
    from fedgan.results import mixture_markdown

    counts = np.array([[0, 300, 0], [0, 0, 100]])
    reports = {name: mixture_report(FixedModes(np.array(modes), num_sources=1), torch.zeros(4, 1, 28, 28), None,
                                    counts.sum(0, keepdims=True), counts)
               for name, modes in (("ua", [1, 1, 1, 2]), ("avg", [1, 1, 1, 1]))}
    text = mixture_markdown(reports)
    assert "| 0 | [1] | 0.750 | 0.750 | 1.000 |" in text
    assert "**0.000** | **0.250**" in text


def test_fid_reference_keeps_to_the_labels_the_federation_holds():
    from fedgan.experiment import real_reference

    splits = load_dataset("synthetic", num_train=200, num_test=200)
    reference = real_reference(splits, 1000, np.array([1, 7]))
    held = splits.test.labels[np.isin(splits.test.labels.numpy(), [1, 7])]
    assert len(reference) == len(held) == 40
    assert torch.equal(real_reference(splits, 30), splits.test.float_images()[:30])  # all labels: unchanged
