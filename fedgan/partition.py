"""Partitioners behind a registry: split one dataset into the shards of the sites (`partition.scheme`).

Every scheme returns, per site, a sorted int64 array of positions into the dataset (global ids are
`dataset.ids[positions]`); shards never overlap, and the result depends only on the seed.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from fedgan.datasets import ImageDataset
from fedgan.errors import DataError, ScenarioError
from fedgan.registry import Registry

Partitioner = Callable[..., list[np.ndarray]]
PARTITIONERS: Registry[Partitioner] = Registry("partitioner")
DIRICHLET_MAX_DRAWS = 100


def register_partitioner(name: str) -> Callable[[Partitioner], Partitioner]:
    """Decorator adding `fn(dataset, num_sites, rng, **options) -> list of position arrays` under `name`."""
    return PARTITIONERS.register(name)


def partition_dataset(dataset: ImageDataset, scheme: str, num_sites: int, seed: int,
                      **options: Any) -> list[np.ndarray]:
    """Split `dataset` into `num_sites` disjoint shards with `scheme`; per site, sorted int64 positions."""
    partitioner = PARTITIONERS.get(scheme)
    if partitioner is None:
        raise ScenarioError("partition.scheme", f"unknown scheme {scheme!r}",
                            f"use one of: {', '.join(PARTITIONERS.names())}")
    _check_options(scheme, partitioner, options)
    _check_site_count(num_sites, len(dataset))
    parts = partitioner(dataset, num_sites, np.random.default_rng(seed), **options)
    parts = [np.sort(np.asarray(part, dtype=np.int64)) for part in parts]
    for site, part in enumerate(parts):
        if len(part) == 0:
            raise DataError("sites.count", f"site {site} got no items under scheme {scheme!r}",
                            "use fewer sites or more data")
    return parts


def class_counts(dataset: ImageDataset, parts: list[np.ndarray]) -> np.ndarray:
    """(num_sites, num_classes) item counts per site and class (the per-class aggregation weights' input)."""
    labels = dataset.labels.numpy()
    return np.stack([np.bincount(labels[part], minlength=dataset.num_classes) for part in parts]).astype(np.int64)


def _check_options(scheme: str, partitioner: Partitioner, options: dict[str, Any]) -> None:
    allowed = list(inspect.signature(partitioner).parameters)[3:]  # after dataset, num_sites, rng
    for key in options:
        if key not in allowed:
            fix = (f"use one of: {', '.join(k.replace('_', '-') for k in allowed)}" if allowed
                   else "this scheme takes no options")
            raise ScenarioError(f"partition.{key.replace('_', '-')}", f"unknown option for scheme {scheme!r}", fix)


def _check_site_count(num_sites: int, num_items: int) -> None:
    if isinstance(num_sites, bool) or not isinstance(num_sites, (int, np.integer)) or num_sites < 1:
        raise ScenarioError("sites.count", f"got {num_sites!r}", "expected an integer >= 1")
    if num_sites > num_items:
        # The items may be few because of a data key (a synthetic set's size, a limit, a class subset): name those too
        raise DataError("sites.count", f"{num_sites} sites but only {num_items} items",
                        "use fewer sites or more data (data.num-train, data.train-limit or data.classes)")


def _split_by_label(labels: np.ndarray, num_classes: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled positions of each class."""
    return [rng.permutation(np.flatnonzero(labels == label)) for label in range(num_classes)]


@register_partitioner("single")
def partition_single(dataset: ImageDataset, num_sites: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One site holds everything: the centralized baseline."""
    if num_sites != 1:
        raise ScenarioError("sites.count", f"scheme 'single' needs exactly 1 site, got {num_sites}",
                            "set sites.count = 1 or choose another partition.scheme")
    return [np.arange(len(dataset))]


@register_partitioner("iid")
def partition_iid(dataset: ImageDataset, num_sites: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A random split into shards of equal size (±1)."""
    return np.array_split(rng.permutation(len(dataset)), num_sites)


def _dirichlet_draw(by_label: list[np.ndarray], num_sites: int, alpha: float,
                    rng: np.random.Generator) -> list[np.ndarray]:
    """One draw of the label-skew split: each class spread over sites by Dirichlet(alpha) proportions.

    As in Li et al. (NIID-Bench, 2021), a site already holding its fair share gets no more of later classes,
    which keeps shard sizes from collapsing at small alpha.
    """
    total = sum(len(positions) for positions in by_label)
    shards: list[list[np.ndarray]] = [[] for _ in range(num_sites)]
    sizes = np.zeros(num_sites, dtype=np.int64)
    for positions in by_label:
        proportions = rng.dirichlet(np.full(num_sites, alpha)) * (sizes < total / num_sites)
        if proportions.sum() <= 0:  # all mass fell on full sites (possible at tiny alpha): spread evenly
            proportions = (sizes < total / num_sites).astype(np.float64)
        cuts = (np.cumsum(proportions / proportions.sum()) * len(positions)).astype(np.int64)[:-1]
        for site, chunk in enumerate(np.split(positions, cuts)):
            shards[site].append(chunk)
            sizes[site] += len(chunk)
    return [np.concatenate(chunks) for chunks in shards]


@register_partitioner("dirichlet")
def partition_dirichlet(dataset: ImageDataset, num_sites: int, rng: np.random.Generator, alpha: float = 0.5,
                        min_size: int = 10) -> list[np.ndarray]:
    """Label skew (Hsu et al., 2019): per class, site shares ~ Dirichlet(alpha); small alpha = few classes per site.

    Draws again (at most DIRICHLET_MAX_DRAWS times) until every site holds at least `min_size` items.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < float("inf"):
        raise ScenarioError("partition.alpha", f"got {alpha!r}", "expected a number > 0 (e.g. 0.1 skewed, 100 iid)")
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 0:
        raise ScenarioError("partition.min_size", f"got {min_size!r}", "expected an integer >= 0")
    if num_sites * min_size > len(dataset):
        raise DataError("sites.count", f"{num_sites} sites of at least {min_size} items need "
                        f"{num_sites * min_size} items but only {len(dataset)} exist",
                        "use fewer sites, more data or a smaller partition.min_size")
    by_label = _split_by_label(dataset.labels.numpy(), dataset.num_classes, rng)
    for _ in range(DIRICHLET_MAX_DRAWS):
        shards = _dirichlet_draw(by_label, num_sites, float(alpha), rng)
        if min(len(shard) for shard in shards) >= min_size:
            return shards
    raise DataError("partition.alpha", f"no draw in {DIRICHLET_MAX_DRAWS} gave all {num_sites} sites at least "
                    f"{min_size} items with alpha={alpha}",
                    "raise partition.alpha, lower partition.min_size, or use fewer sites")


@register_partitioner("classes_per_site")
def partition_classes_per_site(dataset: ImageDataset, num_sites: int, rng: np.random.Generator,
                               k: int = 2) -> list[np.ndarray]:
    """Each site holds `k` classes, dealt round-robin over a shuffled class order; a class splits evenly.

    Every class is used when num_sites * k >= num_classes; otherwise the items of unused classes stay out.
    """
    num_classes = dataset.num_classes
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_classes:
        raise ScenarioError("partition.k", f"got {k!r}", f"expected an integer from 1 to {num_classes}")
    order = rng.permutation(num_classes)
    holders: list[list[int]] = [[] for _ in range(num_classes)]
    for site in range(num_sites):
        for j in range(k):
            holders[order[(site * k + j) % num_classes]].append(site)
    shards: list[list[np.ndarray]] = [[] for _ in range(num_sites)]
    for label, positions in enumerate(_split_by_label(dataset.labels.numpy(), num_classes, rng)):
        for site, chunk in zip(holders[label], np.array_split(positions, max(len(holders[label]), 1))):
            shards[site].append(chunk)
    return [np.concatenate(chunks) for chunks in shards]


@register_partitioner("mixture")
def partition_mixture(dataset: ImageDataset, num_sites: int, rng: np.random.Generator, primary_source: int = 0,
                      secondary_fraction: float | None = None) -> list[np.ndarray]:
    """UA-GAN's hard split: site i holds every primary-source item of label i plus a disjoint random
    `secondary_fraction` (default 1/num_sites) of all other sources' items.
    """
    if dataset.sources is None:
        raise DataError("partition.scheme", f"scheme 'mixture' needs a mixed dataset, but {dataset.name!r} has no "
                        "sources", "use data.name = 'mnist_fashion_mix' or another partition.scheme")
    if num_sites > dataset.num_classes:
        raise DataError("sites.count", f"scheme 'mixture' gives each site one class, but {num_sites} sites > "
                        f"{dataset.num_classes} classes", f"use at most {dataset.num_classes} sites")
    sources = dataset.sources.numpy()
    if primary_source not in set(sources.tolist()):
        raise ScenarioError("partition.primary_source", f"got {primary_source!r}",
                            f"expected one of the dataset's sources: {sorted(set(sources.tolist()))}")
    fraction = 1.0 / num_sites if secondary_fraction is None else secondary_fraction
    if not isinstance(fraction, (int, float)) or not 0 <= fraction * num_sites <= 1 + 1e-9:
        raise ScenarioError("partition.secondary_fraction", f"got {secondary_fraction!r}",
                            f"expected a number from 0 to 1/num_sites = {1 / num_sites:.4g} (shards are disjoint)")
    labels = dataset.labels.numpy()
    secondary = rng.permutation(np.flatnonzero(sources != primary_source))
    # Round down, so num_sites equal disjoint shares always fit.
    share = min(int(np.floor(fraction * len(secondary) + 1e-9)), len(secondary) // num_sites)
    return [np.concatenate([np.flatnonzero((sources == primary_source) & (labels == site)),
                            secondary[site * share:(site + 1) * share]]) for site in range(num_sites)]


@register_partitioner("by_class")
def partition_by_class(dataset: ImageDataset, num_sites: int, rng: np.random.Generator,
                       classes: list[list[int]] | None = None,
                       shares: list[float] | None = None) -> list[np.ndarray]:
    """Site j holds the classes `classes[j]` (disjoint across sites), a random `shares[j]` of each (default 1).

    Declares a federation exactly, e.g. the two-site disjoint case of UA-GAN: classes = [[1], [7]],
    shares = [1.0, 0.3333] gives trousers : sneakers = 3 : 1.
    """
    num_classes = dataset.num_classes
    fix = f"give one list of labels (0..{num_classes - 1}) per site, e.g. classes = [[1], [7]]"
    if (not isinstance(classes, list) or len(classes) != num_sites
            or not all(isinstance(site, list) and site for site in classes)):
        raise ScenarioError("partition.classes", f"got {classes!r} for {num_sites} sites", fix)
    flat = [c for site in classes for c in site]
    if any(isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < num_classes for c in flat):
        raise ScenarioError("partition.classes", f"got {classes!r}", fix)
    if len(set(flat)) != len(flat):
        raise ScenarioError("partition.classes", f"a label appears at two sites in {classes!r}",
                            "list each label at one site only (shards are disjoint)")
    shares = [1.0] * num_sites if shares is None else shares
    if (not isinstance(shares, list) or len(shares) != num_sites
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1 for v in shares)):
        raise ScenarioError("partition.shares", f"got {shares!r}",
                            f"give {num_sites} numbers in (0, 1], one per site (the share of its classes' items)")
    by_label = _split_by_label(dataset.labels.numpy(), num_classes, rng)
    return [np.concatenate([by_label[c][: max(1, int(round(share * len(by_label[c]))))] for c in site_classes])
            for site_classes, share in zip(classes, shares)]
