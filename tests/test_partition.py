"""Tests for fedgan.partition: every scheme gives disjoint, sorted, seed-determined shards with the promised skew."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fedgan.datasets import ImageDataset, load_dataset, mix_datasets
from fedgan.errors import DataError, FedganError, ScenarioError
from fedgan.partition import PARTITIONERS, class_counts, partition_dataset


@pytest.fixture(scope="module")
def shapes() -> ImageDataset:
    """600 synthetic items, 60 per class."""
    return load_dataset("synthetic", num_train=600, num_test=10).train


@pytest.fixture(scope="module")
def mixed() -> ImageDataset:
    """A two-source mixture (synthetic stand-ins for MNIST + Fashion-MNIST): 300 + 200 items."""
    first = load_dataset("synthetic", seed=1, num_train=300, num_test=10)
    second = load_dataset("synthetic", seed=2, num_train=200, num_test=10)
    return mix_datasets(first, second, ("mnist", "fashion_mnist")).train


# Per scheme: (number of sites, options, whether the shards must cover every item)
SCHEME_CASES = {
    "single": (1, {}, True),
    "iid": (5, {}, True),
    "dirichlet": (5, {"alpha": 0.5}, True),
    "classes_per_site": (5, {"k": 2}, True),
    "mixture": (10, {}, False),
    "by_class": (2, {"classes": [[0, 1], [2]], "shares": [0.5, 0.5]}, False),
}


def scheme_dataset(scheme: str, shapes: ImageDataset, mixed: ImageDataset) -> ImageDataset:
    return mixed if scheme == "mixture" else shapes


def test_every_registered_scheme_has_a_case() -> None:
    assert set(PARTITIONERS) == set(SCHEME_CASES)


@pytest.mark.parametrize("scheme", sorted(PARTITIONERS))
def test_shards_are_sorted_disjoint_positions_and_cover_when_promised(shapes, mixed, scheme: str) -> None:
    # Prepare
    dataset = scheme_dataset(scheme, shapes, mixed)
    num_sites, options, covers = SCHEME_CASES[scheme]

    # Execute
    parts = partition_dataset(dataset, scheme, num_sites, seed=0, **options)

    # Assert
    assert len(parts) == num_sites
    for part in parts:
        assert part.dtype == np.int64 and len(part) > 0 and np.all(np.diff(part) > 0)
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined) and joined.min() >= 0 and joined.max() < len(dataset)
    if covers:
        assert len(joined) == len(dataset)


@pytest.mark.parametrize("scheme", sorted(set(PARTITIONERS) - {"single"}))
def test_same_seed_gives_same_shards_and_other_seed_differs(shapes, mixed, scheme: str) -> None:
    # Prepare
    dataset = scheme_dataset(scheme, shapes, mixed)
    num_sites, options, _ = SCHEME_CASES[scheme]

    # Execute
    first = partition_dataset(dataset, scheme, num_sites, seed=7, **options)
    again = partition_dataset(dataset, scheme, num_sites, seed=7, **options)
    other = partition_dataset(dataset, scheme, num_sites, seed=8, **options)

    # Assert
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_iid_shards_have_equal_sizes(shapes) -> None:
    # Execute
    parts = partition_dataset(shapes, "iid", 7, seed=0)

    # Assert
    assert {len(part) for part in parts} <= {600 // 7, 600 // 7 + 1}


def dominant_share(dataset: ImageDataset, parts: list[np.ndarray]) -> float:
    """Mean over sites of the share of each site's most common class."""
    counts = class_counts(dataset, parts)
    return float(np.mean(counts.max(1) / counts.sum(1)))


def test_small_alpha_dirichlet_is_skewed_far_beyond_iid(shapes) -> None:
    # Execute
    skewed = partition_dataset(shapes, "dirichlet", 10, seed=0, alpha=0.05)
    iid = partition_dataset(shapes, "dirichlet", 10, seed=0, alpha=1000.0)

    # Assert
    assert dominant_share(shapes, skewed) > 0.5
    assert dominant_share(shapes, iid) < 0.2
    assert min(len(part) for part in skewed) >= 10


@pytest.mark.parametrize("alpha", [0, -1.0, float("nan"), float("inf"), "0.5"])
def test_dirichlet_rejects_alpha_that_is_not_positive(shapes, alpha) -> None:
    # Execute
    with pytest.raises(ScenarioError) as caught:
        partition_dataset(shapes, "dirichlet", 3, seed=0, alpha=alpha)

    # Assert
    assert caught.value.field == "partition.alpha"


def test_dirichlet_min_size_beyond_the_data_is_a_clear_error(shapes) -> None:
    # Execute
    with pytest.raises(DataError) as caught:
        partition_dataset(shapes, "dirichlet", 10, seed=0, alpha=0.5, min_size=61)

    # Assert
    assert caught.value.field == "sites.count" and "600" in str(caught.value)


def test_dirichlet_gives_up_after_bounded_draws(shapes) -> None:
    # Execute: 59 of 60 items per site is only reachable with near-uniform proportions, never at alpha=0.01
    with pytest.raises(DataError) as caught:
        partition_dataset(shapes, "dirichlet", 10, seed=0, alpha=0.01, min_size=59)

    # Assert
    assert caught.value.field == "partition.alpha" and "raise partition.alpha" in caught.value.fix


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "classes_per_site"])
def test_more_sites_than_items_is_a_sites_count_error(scheme: str) -> None:
    # Prepare
    tiny = load_dataset("synthetic", num_train=50, num_test=1).train

    # Execute
    with pytest.raises(DataError) as caught:
        partition_dataset(tiny, scheme, 100, seed=0)

    # Assert
    assert str(caught.value) == ("sites.count: 100 sites but only 50 items; use fewer sites or more data "
                                 "(data.num-train, data.train-limit or data.classes)")


@pytest.mark.parametrize(("num_sites", "k"), [(5, 2), (10, 1), (4, 3), (3, 10)])
def test_classes_per_site_gives_k_classes_each_and_uses_every_class(shapes, num_sites: int, k: int) -> None:
    # Execute
    parts = partition_dataset(shapes, "classes_per_site", num_sites, seed=0, k=k)

    # Assert
    counts = class_counts(shapes, parts)
    assert ((counts > 0).sum(1) == k).all()
    assert (counts.sum(0) == 60).all()  # every class fully handed out


def test_classes_per_site_split_a_shared_class_evenly(shapes) -> None:
    # Execute: 10 sites × 2 classes = each class held by 2 sites
    counts = class_counts(shapes, partition_dataset(shapes, "classes_per_site", 10, seed=0, k=2))

    # Assert
    assert set(counts[counts > 0].tolist()) == {30}


@pytest.mark.parametrize("k", [0, 11, 2.5])
def test_classes_per_site_rejects_k_out_of_range(shapes, k) -> None:
    with pytest.raises(ScenarioError, match="partition.k"):
        partition_dataset(shapes, "classes_per_site", 3, seed=0, k=k)


def test_mixture_gives_site_i_all_primary_items_of_label_i_plus_disjoint_secondary_share(mixed) -> None:
    # Prepare
    sources, labels = mixed.sources.numpy(), mixed.labels.numpy()

    # Execute
    parts = partition_dataset(mixed, "mixture", 10, seed=0)

    # Assert
    for site, part in enumerate(parts):
        primary = part[sources[part] == 0]
        assert np.array_equal(primary, np.flatnonzero((sources == 0) & (labels == site)))
        assert (sources[part] == 1).sum() == 20  # 200 secondary items / 10 sites
    secondary = np.concatenate([part[sources[part] == 1] for part in parts])
    assert len(np.unique(secondary)) == 200


def test_mixture_honours_primary_source_and_fraction(mixed) -> None:
    # Execute
    parts = partition_dataset(mixed, "mixture", 4, seed=0, primary_source=1, secondary_fraction=0.1)

    # Assert
    sources = mixed.sources.numpy()
    assert [(sources[part] == 0).sum() for part in parts] == [30] * 4
    assert all((mixed.labels.numpy()[part[sources[part] == 1]] == site).all() for site, part in enumerate(parts))


@pytest.mark.parametrize(("num_sites", "options", "field"), [
    (11, {}, "sites.count"),
    (5, {"secondary_fraction": 0.5}, "partition.secondary_fraction"),
    (5, {"primary_source": 3}, "partition.primary_source"),
])
def test_mixture_rejects_impossible_requests(mixed, num_sites: int, options: dict, field: str) -> None:
    with pytest.raises(FedganError) as caught:
        partition_dataset(mixed, "mixture", num_sites, seed=0, **options)
    assert caught.value.field == field


def test_mixture_needs_a_dataset_with_sources(shapes) -> None:
    with pytest.raises(DataError, match="needs a mixed dataset"):
        partition_dataset(shapes, "mixture", 5, seed=0)


def test_single_puts_everything_on_one_site_and_refuses_more(shapes) -> None:
    # Execute
    parts = partition_dataset(shapes, "single", 1, seed=0)

    # Assert
    assert np.array_equal(parts[0], np.arange(600))
    with pytest.raises(ScenarioError, match="sites.count"):
        partition_dataset(shapes, "single", 2, seed=0)


def test_class_counts_matches_labels_of_each_shard(shapes) -> None:
    # Prepare
    parts = partition_dataset(shapes, "dirichlet", 4, seed=1, alpha=0.3)

    # Execute
    counts = class_counts(shapes, parts)

    # Assert
    assert counts.shape == (4, 10) and counts.dtype == np.int64
    assert counts.sum() == 600 and (counts.sum(1) == [len(part) for part in parts]).all()
    assert (counts[2] == np.bincount(shapes.labels.numpy()[parts[2]], minlength=10)).all()


@pytest.mark.parametrize(("scheme", "options", "field"), [
    ("round_robin", {}, "partition.scheme"),
    ("iid", {"alpha": 1.0}, "partition.alpha"),
    ("dirichlet", {"beta": 1.0}, "partition.beta"),
])
def test_unknown_scheme_or_option_names_the_partition_field(shapes, scheme: str, options: dict, field: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        partition_dataset(shapes, scheme, 3, seed=0, **options)
    assert caught.value.field == field


def test_a_train_limit_below_the_site_count_is_refused_naming_train_limit() -> None:
    from tests.conftest import tiny_scenario

    with pytest.raises(ScenarioError, match="data.train-limit"):
        tiny_scenario(data={"train-limit": 2})  # three sites


def test_partition_seed_fixes_the_shards_while_the_scenario_seed_varies_training() -> None:
    from fedgan.engine import InProcessEngine, site_positions
    from fedgan.scenario import scenario_from_dict
    from tests.conftest import tiny_scenario

    base = tiny_scenario()  # seed 3
    other_training = tiny_scenario(seed=4, partition={"seed": 3})
    other_partition = tiny_scenario(seed=4)
    same = [np.array_equal(a, b) for a, b in zip(site_positions(base), site_positions(other_training))]
    assert all(same)
    assert not all(np.array_equal(a, b) for a, b in zip(site_positions(base), site_positions(other_partition)))
    # the training streams do follow the scenario seed: the sites' discriminators start elsewhere
    first, second = InProcessEngine(base, "cpu"), InProcessEngine(other_training, "cpu")
    first.open()
    second.open()
    first, second = first.sites[0], second.sites[0]
    assert not all(torch.equal(p, q) for p, q in zip(first.discriminator.parameters(),
                                                      second.discriminator.parameters()))
    assert scenario_from_dict(other_training.to_dict()).partition.seed == 3  # survives the round trip
    with pytest.raises(ScenarioError, match="partition.seed"):
        tiny_scenario(partition={"seed": -1})
