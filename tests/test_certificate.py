"""The certificate's share distance: one definition of where a forgotten class's mass went."""
from __future__ import annotations

import pytest

from fedgan.forget import ForgetRequest
from fedgan.unlearning.certificate import retained_share_distance, retained_share_l1


def test_retained_share_l1_skips_the_forgotten_class_only() -> None:
    shares, reference = [0.5, 0.3, 0.2], [0.1, 0.4, 0.5]
    assert retained_share_l1(shares, reference, 0) == pytest.approx(0.1 + 0.3)
    assert retained_share_l1(shares, reference, None) == pytest.approx(0.4 + 0.1 + 0.3)


def test_retained_share_l1_refuses_histograms_of_different_lengths() -> None:
    with pytest.raises(ValueError, match="3 and 2 classes"):
        retained_share_l1([0.5, 0.3, 0.2], [0.5, 0.5], None)


def test_retained_share_distance_reads_both_sides_and_a_missing_histogram_as_none() -> None:
    request = ForgetRequest(site=0, forget_class=2)
    retrain = {"class_histogram": [0.5, 0.5, 0.0]}
    before = {"class_histogram": [0.3, 0.3, 0.4]}
    after = {"class_histogram": [0.45, 0.55, 0.0]}
    distance = retained_share_distance(request, before, after, retrain)
    assert distance == {"before": pytest.approx(0.4), "after": pytest.approx(0.1)}
    assert retained_share_distance(request, {}, after, retrain)["before"] is None
    single = retained_share_distance(request, before, after, retrain, key="class_histogram_single")
    assert single == {"before": None, "after": None}
