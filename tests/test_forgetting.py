"""Tests for fedgan.evaluation.forgetting: the attack statistics, class-forgetting and downstream metrics, the
certificate shape.

Image tests use synthetic stripes (class 0 horizontal, class 1 vertical) that a tiny classifier separates in
about a second on the CPU.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedgan.evaluation.classifier import Evaluator, load_or_train_evaluator
from fedgan.evaluation.forgetting import (
    auc_stderr,
    downstream_accuracy,
    forget_class_rate,
    membership_inference,
    pseudo_label,
    retained_fid,
    roc_auc,
    tpr_at_fpr,
    with_retrain_gap,
)
from tests.conftest import labelled_stripes, stripes


class FixedPredictor:
    """A stub evaluator whose `predict` returns the labels it was built with, whatever the images."""

    def __init__(self, labels: list[int]) -> None:
        self.labels = torch.tensor(labels)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.labels[: len(images)]


@pytest.fixture(scope="module")
def stripes_evaluator(tmp_path_factory: pytest.TempPathFactory) -> Evaluator:
    """A two-class stripes evaluator, trained once for the module in its own cache folder."""
    train_images, train_labels = labelled_stripes(150, seed=1)
    test_images, test_labels = labelled_stripes(50, seed=50)
    return load_or_train_evaluator("stripes", train_images, train_labels, test_images, test_labels, 2,
                                   epochs=2, cache=tmp_path_factory.mktemp("evaluators"))


# ---- roc_auc ----

@pytest.mark.parametrize("shift", [0.0, 1.0])
def test_auc_stderr_matches_the_spread_of_auc_over_repeated_samples(shift):
    # Prepare: 400 repetitions of 64 "forgotten" scores against 1,000 non-members (the item scenario's sizes).
    rng = np.random.default_rng(0)
    aucs = [roc_auc(rng.normal(shift, 1.0, 64), rng.normal(0.0, 1.0, 1000)) for _ in range(400)]

    # Execute
    predicted = auc_stderr(float(np.mean(aucs)), 64, 1000)

    # Assert: Hanley-McNeil's exponential approximation is exact enough at chance and errs on the safe side (up to
    # a quarter too large) for separated Gaussian scores; about 0.037 at chance.
    assert 0.9 * float(np.std(aucs)) < predicted < 1.3 * float(np.std(aucs))
    if shift == 0.0:
        assert 0.03 < predicted < 0.045
    with pytest.raises(ValueError, match="auc_stderr"):
        auc_stderr(0.5, 0, 10)


def test_roc_auc_is_one_when_separated_and_zero_when_reversed():
    # Prepare
    high, low = [3.0, 4.0, 5.0], [0.0, 1.0, 2.0]

    # Execute / Assert
    assert roc_auc(high, low) == 1.0
    assert roc_auc(low, high) == 0.0


def test_roc_auc_is_one_half_for_identical_distributions():
    # Prepare
    rng = np.random.default_rng(0)

    # Execute
    auc = roc_auc(rng.normal(size=20_000), rng.normal(size=20_000))

    # Assert
    assert auc == pytest.approx(0.5, abs=0.01)


def test_roc_auc_counts_ties_as_half():
    # Execute / Assert
    assert roc_auc([1.0, 1.0], [1.0, 1.0, 1.0]) == 0.5
    assert roc_auc([2.0, 1.0], [1.0]) == 0.75  # one win, one tie


def test_roc_auc_matches_brute_force_pairs_on_random_data():
    # Prepare: rounded scores, so ties occur
    rng = np.random.default_rng(1)
    positive = np.round(rng.normal(0.3, 1.0, size=57), 1)
    negative = torch.tensor(np.round(rng.normal(0.0, 1.0, size=43), 1))

    # Execute
    auc = roc_auc(torch.tensor(positive), negative)

    # Assert
    pairs = [(p > n) + 0.5 * (p == n) for p, n in itertools.product(positive, negative.numpy())]
    assert auc == pytest.approx(float(np.mean(pairs)), abs=1e-12)


@pytest.mark.parametrize("empty", ["positive", "negative"])
def test_roc_auc_refuses_empty_scores(empty: str):
    # Prepare
    scores = {"positive": [1.0], "negative": [0.0]}
    scores[empty] = []

    # Execute / Assert
    with pytest.raises(ValueError, match=f"{empty}_scores"):
        roc_auc(scores["positive"], scores["negative"])


# ---- tpr_at_fpr ----

def test_tpr_at_fpr_thresholds_at_the_negative_that_keeps_fpr_in_bound():
    # Prepare: 100 negatives 0..99; at 1 % FPR exactly one (99) may lie above the threshold, so t = 98
    negative = np.arange(100, dtype=float)
    positive = np.array([98.0, 98.5, 99.0, 150.0])

    # Execute / Assert
    assert tpr_at_fpr(positive, negative, fpr=0.01) == 0.75  # 98 is not strictly above t
    assert tpr_at_fpr(positive, negative, fpr=0.0) == 0.25  # t = 99: only 150 passes
    assert tpr_at_fpr(positive, negative, fpr=0.29) == 1.0  # t = 70 (0.29 * 100 is not floored to 28)
    assert tpr_at_fpr(positive, negative, fpr=1.0) == 1.0


def test_tpr_at_fpr_with_tied_negatives_never_exceeds_the_fpr():
    # Prepare: half the negatives tie at the top; excluding them all would be needed for FPR 0.1
    negative = [5.0] * 5 + [0.0] * 5
    positive = [6.0, 5.0, 4.0, 0.0]

    # Execute / Assert: t = 5 (no negative strictly above), positives above 5: one
    assert tpr_at_fpr(positive, negative, fpr=0.1) == 0.25
    assert tpr_at_fpr(positive, negative, fpr=0.5) == 0.75  # t = 0: the tied 0.0 positive is not above it


def test_tpr_at_fpr_refuses_fpr_outside_unit_interval():
    with pytest.raises(ValueError, match="fpr"):
        tpr_at_fpr([1.0], [0.0], fpr=1.5)


# ---- membership_inference ----

def test_membership_inference_reports_every_auc_tpr_and_sizes():
    # Prepare: retained members score high, forgotten items like non-members
    forget = np.linspace(0.0, 1.0, 200)
    member = np.linspace(10.0, 11.0, 200)
    nonmember = np.linspace(0.0, 1.0, 200) + 1e-3

    # Execute
    report = membership_inference(forget, member, nonmember)

    # Assert
    assert report["mia_auc_member_vs_nonmember"] == 1.0
    assert report["mia_auc_forget_vs_member"] == 0.0
    assert report["mia_auc_forget_vs_nonmember"] == pytest.approx(0.5, abs=0.01)
    assert report["mia_tpr_at_1pct_fpr_member"] == 1.0
    assert report["mia_tpr_at_1pct_fpr_forget"] <= 0.02
    assert report["mia_sizes"] == {"forget": 200, "member": 200, "nonmember": 200}


# ---- class forgetting ----

def test_forget_class_rate_counts_samples_of_any_forgotten_class():
    # Prepare
    evaluator = FixedPredictor([0, 1, 2, 3, 3, 1, 0, 2])
    images = torch.zeros(8, 1, 28, 28)

    # Execute / Assert
    assert forget_class_rate(evaluator, images, [3]) == 0.25
    assert forget_class_rate(evaluator, images, [1, 3]) == 0.5
    assert forget_class_rate(evaluator, images, []) == 0.0
    assert torch.equal(pseudo_label(evaluator, images), torch.tensor([0, 1, 2, 3, 3, 1, 0, 2]))


def test_retained_fid_compares_fakes_with_retained_classes_only(stripes_evaluator: Evaluator):
    # Prepare: real test images of both classes; class 1 is forgotten, so the reference is class 0 alone
    real_images, real_labels = labelled_stripes(60, seed=200)
    good_fakes, forgotten_fakes = stripes(0, 60, seed=300), stripes(1, 60, seed=301)
    mixed_fakes = torch.cat([good_fakes, forgotten_fakes[:30]])

    # Execute
    good = retained_fid(stripes_evaluator, real_images, real_labels, good_fakes, [0])
    mixed = retained_fid(stripes_evaluator, real_images, real_labels, mixed_fakes, [0])

    # Assert
    assert good["fid_lenet_retained"] < mixed["fid_lenet_retained"]
    assert good["kid_retained"] < mixed["kid_retained"]
    assert mixed["retained_fid_fake_count"] == 90  # leftover forgotten-class samples count against G


# ---- downstream utility ----

def test_downstream_accuracy_learns_separable_classes_and_fails_on_shuffled_labels():
    # Prepare
    train_images, train_labels = labelled_stripes(150, seed=7)
    test_images, test_labels = labelled_stripes(100, seed=400)
    shuffled = train_labels[torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(0))]

    # Execute
    learned = downstream_accuracy(train_images, train_labels, test_images, test_labels, 2, epochs=3)
    chance = downstream_accuracy(train_images, shuffled, test_images, test_labels, 2, epochs=3)
    one_class = downstream_accuracy(train_images, train_labels, test_images, test_labels, 2, classes=[1], epochs=3)

    # Assert
    assert learned > 0.9 and one_class > 0.9
    assert 0.3 < chance < 0.7


def test_downstream_accuracy_is_deterministic_given_seed():
    # Prepare
    train_images, train_labels = labelled_stripes(40, seed=8)
    test_images, test_labels = labelled_stripes(40, seed=9)

    # Execute
    runs = [downstream_accuracy(train_images, train_labels, test_images, test_labels, 2, epochs=1, seed=5)
            for _ in range(2)]

    # Assert
    assert runs[0] == runs[1]


def test_downstream_accuracy_refuses_classes_absent_from_the_test_set():
    # Prepare
    images, labels = labelled_stripes(4, seed=1)

    # Execute / Assert
    with pytest.raises(ValueError, match="classes"):
        downstream_accuracy(images, labels, images, labels, 3, classes=[2], epochs=1)


# ---- certificate shape ----

def test_with_retrain_gap_shapes_each_metric_and_skips_unknown_keys():
    # Prepare
    before = {"forget_class_rate": 0.10, "fid_lenet_retained": 5.0, "class_histogram": [0.5, 0.5]}
    after = {"forget_class_rate": 0.02, "fid_lenet_retained": 5.5, "class_histogram": [0.9, 0.1]}
    retrain = {"forget_class_rate": 0.01, "class_histogram": [1.0, 0.0]}

    # Execute
    shaped = with_retrain_gap(before, after, retrain, ["forget_class_rate", "fid_lenet_retained", "class_histogram",
                                                       "nowhere"])

    # Assert
    assert set(shaped) == {"forget_class_rate", "fid_lenet_retained", "class_histogram"}
    assert shaped["forget_class_rate"]["before"] == 0.10 and shaped["forget_class_rate"]["retrain"] == 0.01
    assert shaped["forget_class_rate"]["gap_to_retrain"] == pytest.approx(0.01)
    assert shaped["fid_lenet_retained"] == {"before": 5.0, "after": 5.5, "retrain": None, "gap_to_retrain": None}
    assert shaped["class_histogram"]["gap_to_retrain"] == pytest.approx([-0.1, 0.1])


def test_results_are_json_ready(tmp_path: Path):
    # Prepare
    report = membership_inference([1.0, 2.0], [3.0, 4.0], [0.0, 0.5])

    # Execute
    path = tmp_path / "mia.json"
    path.write_text(json.dumps(with_retrain_gap(report, report, report, list(report))))

    # Assert
    assert json.loads(path.read_text())["mia_sizes"]["gap_to_retrain"] is None
