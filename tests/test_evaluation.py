"""Tests for fedgan.evaluation: the cached evaluator, every registered metric, and the run pictures.

All on synthetic stripes (class 0 horizontal, class 1 vertical), which a tiny evaluator separates in seconds.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from fedgan.errors import DataError, FedganError
from fedgan.evaluation import classifier, metrics
from fedgan.evaluation.classifier import Evaluator, EvaluatorNet, evaluator_cache_path, load_or_train_evaluator
from fedgan.evaluation.metrics import (
    METRICS,
    MetricInputs,
    class_coverage,
    class_histogram,
    evaluate_generator_samples,
    fid_lenet,
    inception_score_lenet,
    kid,
    label_fidelity,
)
from fedgan.evaluation.plots import plot_training_curves, save_sample_grid
from fedgan.registry import Registry
from tests.conftest import labelled_stripes, stripes

NUM_CLASSES = 2




@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own cache folder, so nothing touches ~/.cache/fedgan."""
    monkeypatch.setenv("FEDGAN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def data() -> dict[str, torch.Tensor]:
    """A 400-image train split and a 200-image test split of stripes."""
    train_images, train_labels = labelled_stripes(200, seed=1)
    test_images, test_labels = labelled_stripes(100, seed=100)
    return {"train_images": train_images, "train_labels": train_labels,
            "test_images": test_images, "test_labels": test_labels}


@pytest.fixture(scope="module")
def evaluator(data: dict[str, torch.Tensor], tmp_path_factory: pytest.TempPathFactory) -> Evaluator:
    """One evaluator trained once for the module, in its own cache folder (two epochs: one leaves it unconfident)."""
    return load_or_train_evaluator("stripes", **data, num_classes=NUM_CLASSES, epochs=2,
                                   cache=tmp_path_factory.mktemp("evaluators"))


# ---- classifier ----

def test_evaluator_separates_stripes_and_exposes_features(evaluator: Evaluator, data: dict[str, torch.Tensor]):
    # Execute
    predictions = evaluator.predict(data["test_images"])
    features = evaluator.features(data["test_images"][:7])

    # Assert
    assert evaluator.accuracy >= 0.95
    assert predictions.dtype == torch.int64
    assert (predictions == data["test_labels"]).float().mean() == pytest.approx(evaluator.accuracy)
    assert features.shape == (7, evaluator.feature_dim)
    assert len(evaluator.sha256) == 64 and not evaluator.from_cache


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_evaluator_net_gives_logits_and_features_for_supported_shapes(shape: tuple[int, int, int]):
    # Prepare
    net = EvaluatorNet(shape, num_classes=5)

    # Execute
    x = torch.rand(3, *shape) * 2 - 1

    # Assert
    assert net(x).shape == (3, 5)
    assert net.features(x).shape == (3, net.feature_dim)


def test_evaluator_net_rejects_unsupported_shape():
    with pytest.raises(DataError, match="image_shape"):
        EvaluatorNet((1, 64, 64), num_classes=2)


def test_cached_evaluator_loads_without_retraining(data, monkeypatch: pytest.MonkeyPatch):
    # Prepare
    first = load_or_train_evaluator("stripes", **data, num_classes=NUM_CLASSES, epochs=1)

    def refuse(*args, **kwargs):
        raise AssertionError("retrained although a cached evaluator exists")

    monkeypatch.setattr(classifier, "train_evaluator_net", refuse)

    # Execute
    second = load_or_train_evaluator("stripes", **data, num_classes=NUM_CLASSES, epochs=1)

    # Assert
    assert second.from_cache
    assert (second.sha256, second.accuracy, second.train_seconds) == (first.sha256, first.accuracy, first.train_seconds)
    assert torch.equal(second.predict(data["test_images"]), first.predict(data["test_images"]))


def test_training_is_deterministic_given_seed(data, tmp_path: Path):
    # Execute
    one = load_or_train_evaluator("stripes", **data, num_classes=NUM_CLASSES, epochs=1, seed=3, cache=tmp_path / "a")
    two = load_or_train_evaluator("stripes", **data, num_classes=NUM_CLASSES, epochs=1, seed=3, cache=tmp_path / "b")

    # Assert
    assert one.sha256 == two.sha256 and not two.from_cache


def test_cache_file_name_changes_with_seed_epochs_and_data(data):
    # Prepare
    def path(**changes) -> Path:
        arguments = {**data, "num_classes": NUM_CLASSES, "seed": 0, "epochs": 1, **changes}
        return evaluator_cache_path("fashion/mnist", **arguments)

    # Execute
    base = path()
    flipped = data["train_images"].clone()
    flipped[0] = -flipped[0]

    # Assert
    assert base.name.startswith("fashion_mnist-") and base.parent.name == "evaluators"
    assert len({base, path(seed=1), path(epochs=2), path(train_images=flipped)}) == 4


def test_corrupt_cache_file_is_rebuilt_with_a_warning(data, private_cache: Path):
    # Prepare
    path = evaluator_cache_path("stripes", **data, num_classes=NUM_CLASSES, seed=0, epochs=1)
    path.write_bytes(b"not a torch file")

    # Execute
    with pytest.warns(UserWarning, match="unreadable evaluator cache"):
        rebuilt = load_or_train_evaluator("stripes", **data, num_classes=NUM_CLASSES, epochs=1)

    # Assert
    assert not rebuilt.from_cache
    assert load_or_train_evaluator("stripes", **data, num_classes=NUM_CLASSES, epochs=1).from_cache


def test_bad_labels_are_rejected_before_training(data):
    with pytest.raises(DataError, match="train_labels"):
        load_or_train_evaluator("stripes", **{**data, "train_labels": data["train_labels"] + 5}, num_classes=2)


# ---- metrics ----

def fid_kid(evaluator, real, fake, kid_subset_size=1000):
    """Both distances at once, as the tests below compare them."""
    kid_mean, kid_std = kid(evaluator, real, fake, subset_size=kid_subset_size)
    return {"fid_lenet": fid_lenet(evaluator, real, fake), "kid": kid_mean, "kid_std": kid_std}


def test_fid_and_kid_are_near_zero_for_a_set_against_itself_and_larger_for_another_class(evaluator: Evaluator):
    # Prepare
    horizontal = stripes(0, 150, seed=7)
    vertical = stripes(1, 150, seed=8)

    # Execute
    same = fid_kid(evaluator, horizontal, horizontal, kid_subset_size=100)
    other = fid_kid(evaluator, horizontal, vertical, kid_subset_size=100)

    # Assert
    assert set(same) == {"fid_lenet", "kid", "kid_std"}
    assert same["fid_lenet"] == pytest.approx(0.0, abs=1e-3 * max(other["fid_lenet"], 1.0))
    assert other["fid_lenet"] > 1.0 + 100 * same["fid_lenet"]
    assert abs(same["kid"]) < 0.05 * other["kid"]
    assert other["kid"] > 0


def test_fid_separates_same_distribution_from_a_different_one(evaluator: Evaluator):
    # Execute
    fresh_draw = fid_kid(evaluator, stripes(0, 150, seed=7), stripes(0, 150, seed=9), kid_subset_size=50)
    other_class = fid_kid(evaluator, stripes(0, 150, seed=7), stripes(1, 150, seed=9), kid_subset_size=50)

    # Assert
    assert other_class["fid_lenet"] > 5 * fresh_draw["fid_lenet"]
    assert other_class["kid"] > 5 * fresh_draw["kid"]


def test_kid_shrinks_subset_size_to_small_sample_counts_and_is_reproducible(evaluator: Evaluator):
    # Execute
    first = fid_kid(evaluator, stripes(0, 40, seed=1), stripes(1, 12, seed=2), kid_subset_size=1000)
    second = fid_kid(evaluator, stripes(0, 40, seed=1), stripes(1, 12, seed=2), kid_subset_size=1000)

    # Assert
    assert all(math.isfinite(value) for value in first.values())
    assert first == second


def test_fid_needs_two_samples_per_set(evaluator: Evaluator):
    with pytest.raises(FedganError, match="fake_images"):
        fid_kid(evaluator, stripes(0, 10, seed=1), stripes(0, 1, seed=2))


def test_class_histogram_sums_to_one_and_finds_a_single_class_set(evaluator: Evaluator, data):
    # Execute
    mixed = class_histogram(evaluator, data["test_images"], NUM_CLASSES)
    vertical_only = class_histogram(evaluator, stripes(1, 60, seed=5), NUM_CLASSES)

    # Assert
    assert sum(mixed) == pytest.approx(1.0) and sum(vertical_only) == pytest.approx(1.0)
    assert mixed == pytest.approx([0.5, 0.5], abs=0.05)
    assert vertical_only[1] >= 0.95


def test_class_coverage_counts_classes_at_a_tenth_of_the_uniform_share_by_default():
    # Prepare
    histogram = [0.5, 0.45, 0.04, 0.01, 0.0]  # uniform share 0.2, default threshold 0.02

    # Execute / Assert
    assert class_coverage(histogram) == pytest.approx(3 / 5)
    assert class_coverage(histogram, threshold=0.3) == pytest.approx(2 / 5)
    assert class_coverage([]) == 0.0


def test_inception_score_is_near_one_for_one_class_and_higher_for_both(evaluator: Evaluator, data):
    # Execute
    one_class = inception_score_lenet(evaluator, stripes(0, 100, seed=11))
    both = inception_score_lenet(evaluator, data["test_images"])

    # Assert
    assert 1.0 <= one_class < 1.2
    assert 1.5 < both <= NUM_CLASSES + 1e-9


def test_label_fidelity_is_the_share_classified_as_asked(evaluator: Evaluator):
    # Prepare
    images = torch.cat([stripes(0, 50, seed=3), stripes(1, 50, seed=4)])
    right = torch.cat([torch.zeros(50, dtype=torch.long), torch.ones(50, dtype=torch.long)])

    # Execute / Assert
    assert label_fidelity(evaluator, images, right) >= 0.95
    assert label_fidelity(evaluator, images, 1 - right) <= 0.05


@pytest.mark.parametrize("name", sorted(METRICS))
def test_every_registered_metric_returns_json_ready_numbers(name: str, evaluator: Evaluator, data):
    # Prepare
    inputs = MetricInputs(evaluator, data["test_images"], data["train_images"][:120], NUM_CLASSES,
                          fake_labels=data["train_labels"][:120], kid_subset_size=50)

    # Execute
    result = METRICS[name](inputs)

    # Assert
    assert result and json.loads(json.dumps(result)) == result
    flat = [v for value in result.values() for v in (value if isinstance(value, list) else [value])]
    assert all(isinstance(v, float) and math.isfinite(v) for v in flat)


def test_evaluate_generator_samples_merges_defaults_and_adds_label_fidelity_only_with_labels(evaluator, data):
    # Prepare
    fake, fake_labels = data["train_images"][:100], data["train_labels"][:100]

    # Execute
    unconditional = evaluate_generator_samples(evaluator, data["test_images"], fake, NUM_CLASSES, kid_subset_size=50)
    conditional = evaluate_generator_samples(evaluator, data["test_images"], fake, NUM_CLASSES, fake_labels,
                                             metrics=("class_histogram",))

    # Assert
    assert set(unconditional) == {"fid_lenet", "kid", "kid_std", "class_histogram", "class_coverage",
                                  "inception_score"}
    assert set(conditional) == {"class_histogram", "label_fidelity"}


def test_evaluate_generator_samples_rejects_unknown_metric_names(evaluator, data):
    with pytest.raises(FedganError, match="nope"):
        evaluate_generator_samples(evaluator, data["test_images"], data["test_images"], NUM_CLASSES, metrics=("nope",))


def test_registered_metric_is_selectable_by_name(evaluator, data, monkeypatch: pytest.MonkeyPatch):
    # Prepare
    patched = Registry("metric")
    for name, fn in METRICS.items():
        patched.add(name, fn)
    monkeypatch.setattr(metrics, "METRICS", patched)
    metrics.register_metric("sample_count")(lambda inputs: {"sample_count": float(len(inputs.fake_images))})

    # Execute
    result = metrics.evaluate_generator_samples(evaluator, data["test_images"], data["test_images"][:9], NUM_CLASSES,
                                                metrics=("sample_count",))

    # Assert
    assert result == {"sample_count": 9.0}
    with pytest.raises(ValueError, match="twice"):
        metrics.register_metric("sample_count")(lambda inputs: {})


# ---- plots ----

@pytest.mark.parametrize(("count", "channels"), [(20, 1), (6, 3)])
def test_sample_grid_png_has_one_cell_per_image_plus_padding(tmp_path: Path, count: int, channels: int):
    # Prepare
    images = torch.rand(count, channels, 28, 28) * 2 - 1
    path = tmp_path / "grid" / "samples.png"

    # Execute
    save_sample_grid(images, path, nrow=5)

    # Assert
    rows = math.ceil(count / 5)
    assert Image.open(path).size == (5 * 30 + 2, rows * 30 + 2)
    assert not list(path.parent.glob(".*.tmp"))


def test_training_curves_plot_is_written_even_when_keys_are_missing(tmp_path: Path):
    # Prepare
    records = [{"round": r, "generator_loss": 1.0 / r, "discriminator_loss": 0.7} for r in range(1, 6)]
    records[2]["fid_lenet"] = 120.0
    records[4]["fid_lenet"] = 80.0
    records.append({"note": "no round here"})
    path = tmp_path / "curves.png"

    # Execute
    plot_training_curves(records, path)
    plot_training_curves([], tmp_path / "empty.png")

    # Assert
    assert Image.open(path).format == "PNG"
    assert Image.open(tmp_path / "empty.png").size == Image.open(path).size
