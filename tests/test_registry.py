"""The one registry helper, and that every registry of the project is one and behaves the same."""
from __future__ import annotations

import pytest

from fedgan.aggregation import AGGREGATORS
from fedgan.datasets import DATASETS
from fedgan.evaluation.metrics import METRICS
from fedgan.models import ARCHITECTURES
from fedgan.partition import PARTITIONERS
from fedgan.registry import Registry
from fedgan.unlearning import METHODS

REGISTRIES = {"aggregators": AGGREGATORS, "datasets": DATASETS, "metrics": METRICS, "architectures": ARCHITECTURES,
              "partitioners": PARTITIONERS, "methods": METHODS}


def test_a_registry_registers_looks_up_and_lists_names():
    # Prepare
    registry: Registry[int] = Registry("widget")

    # Execute
    registry.register("b")(2)
    registry.add("a", 1)

    # Assert
    assert registry["a"] == 1 and registry.get("b") == 2 and registry.get("c") is None
    assert registry.names() == ("a", "b") and list(registry) == ["a", "b"] and len(registry) == 2
    assert "a" in registry and "c" not in registry
    with pytest.raises(KeyError, match="unknown widget 'c'; registered: a, b"):
        registry["c"]


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_every_registry_refuses_a_second_entry_under_a_taken_name(kind):
    # Prepare
    registry = REGISTRIES[kind]
    name = registry.names()[0]
    entry = registry[name]

    # Execute / Assert: the same behaviour everywhere, and the first entry stays.
    assert isinstance(registry, Registry)
    with pytest.raises(ValueError, match="registered twice"):
        registry.add(name, entry)
    assert registry[name] is entry
