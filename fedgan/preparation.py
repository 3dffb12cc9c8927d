"""What a run needs before anything is written: the data, a partition that works, and the evaluator.

Shared by the experiment (`fedgan.experiment.run_experiment`), the scenario runner and the proof workers
(`fedgan.unlearning.proof`), which rebuild the same data and evaluator in their own processes.
"""
from __future__ import annotations

import torch

from fedgan.datasets import DatasetSplits
from fedgan.engine import load_federation_data, load_full_data, site_positions
from fedgan.errors import FedganError
from fedgan.evaluation.classifier import Evaluator, load_or_train_evaluator
from fedgan.scenario import Scenario


def prepare(scenario: Scenario) -> tuple[DatasetSplits, Evaluator]:
    """Load the data, check the partition, and get the evaluator: everything that can fail on bad input."""
    device = scenario.engine.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FedganError("engine.device", f"got {device!r}, but this machine has no CUDA device",
                          'use device = "auto" (CUDA where there is one) or "cpu"')
    splits = load_federation_data(scenario)
    site_positions(scenario)  # raises on a contradictory partition before anything is written
    evaluator = evaluator_for(scenario, load_full_data(scenario))
    return splits, evaluator


def evaluator_for(scenario: Scenario, splits: DatasetSplits) -> Evaluator:
    """The cached LeNet-style evaluator of this dataset (trained once on its training split)."""
    train, test = splits.train, splits.test
    mixed = train.sources is not None and test.sources is not None
    key = f"{train.name}-{train.num_classes}c{'-modes' if mixed else ''}-{'x'.join(map(str, train.image_shape))}"
    return load_or_train_evaluator(
        key, train.float_images(), train.labels, test.float_images(), test.labels, train.num_classes,
        seed=0, epochs=scenario.evaluation.evaluator_epochs,
        train_sources=train.sources if mixed else None, test_sources=test.sources if mixed else None,
    )
