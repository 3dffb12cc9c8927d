"""Tests for fedgan.evaluation.lira: the likelihood-ratio score on hand-built references, the resolvable TPR, the
seeded reference training, and the attack's power against a tiny discriminator that memorises its data.

The power tests use 1x8x8 Gaussian images with Gaussian fakes from the same distribution: a discriminator can then
only tell its reals from the fakes by memorising them, so membership is exactly what it learns.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from fedgan.evaluation.forgetting import roc_auc, tpr_at_fpr
from fedgan.evaluation.lira import (
    ReferenceLogits,
    balanced_in_mask,
    discriminator_logits,
    lira_attack,
    lira_scores,
    resolvable_tpr,
    train_discriminator,
    train_references,
)
from fedgan.models import ModelSpec, build_discriminator

IMAGE_SHAPE = (1, 8, 8)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class TinyDiscriminator(nn.Module):
    """64 -> 128 -> 1 MLP with the Discriminator call signature D(images, labels) -> (N,) logits."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.LeakyReLU(0.2), nn.Linear(128, 1))

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(images).squeeze(1)


def gaussian_images(count: int, generator: torch.Generator, shift: float = 0.0) -> torch.Tensor:
    """`count` standard normal 1x8x8 images, every pixel moved by `shift`."""
    return torch.randn(count, *IMAGE_SHAPE, generator=generator) + shift


def attacked_logits(real: torch.Tensor, fake: torch.Tensor, targets: torch.Tensor, steps: int = 300) -> np.ndarray:
    """Logits on `targets` of a TinyDiscriminator trained longer than the references, on `real` against `fake`."""
    discriminator = TinyDiscriminator(seed=100)
    train_discriminator(discriminator, real, None, fake, None, steps=steps, batch_size=32, lr=1e-3,
                        betas=(0.5, 0.999), generator=torch.Generator().manual_seed(5))
    return discriminator_logits(discriminator, targets)


def tiny_references(population: torch.Tensor, targets: torch.Tensor, fake: torch.Tensor, seed: int = 0):
    """Eight briefly trained TinyDiscriminator references on the targets."""
    return train_references(TinyDiscriminator, population, None, targets, None, fake, None,
                            count=8, steps=100, batch_size=32, lr=1e-3, seed=seed)


def in_like_references(target_count: int, seed: int = 0) -> tuple[ReferenceLogits, np.random.Generator]:
    """Synthetic references whose logit is N(0, 1) OUT and N(2, 1) IN, with a balanced mask of 8."""
    rng = np.random.default_rng(seed)
    in_mask = balanced_in_mask(8, target_count, rng)
    logits = rng.normal(size=(8, target_count)) + 2.0 * in_mask
    return ReferenceLogits(logits=logits, in_mask=in_mask, steps=7), rng


# ---- lira_scores: exact small case ----

def test_lira_scores_match_the_hand_computed_likelihood_ratio():
    # Prepare: four references, four targets, rows already standardised (mean 0, std 1), each target IN twice.
    # Target 0: IN {1.4, 0.2}, OUT {-1.4, -0.2}; target 1 alike; pooled sigma_in = sigma_out = 0.6.
    in_mask = np.array([[1, 0, 1, 0], [1, 0, 0, 1], [0, 1, 1, 0], [0, 1, 0, 1]], dtype=bool)
    logits = np.array([[1.4, -1.4, 0.2, -0.2],
                       [0.2, -0.2, -1.4, 1.4],
                       [-1.4, 1.4, 0.2, -0.2],
                       [-0.2, 0.2, -1.4, 1.4]])
    references = ReferenceLogits(logits=logits, in_mask=in_mask, steps=0)
    spare = np.sqrt(1.36)  # keeps the observed row at mean 0, std 1, so it is not rescaled
    observed = np.array([0.8, -0.8, spare, -spare])  # target 0 at its IN mean, target 1 at its OUT mean

    # Execute
    online = lira_scores(observed, references)
    offline = lira_scores(observed, references, online=False)

    # Assert: +-(1.6 / 0.6)^2 / 2 = +-32/9 online; (o - mu_out) / sigma_out = 8/3 and 0 offline.
    assert online[0] == pytest.approx(32 / 9)
    assert online[1] == pytest.approx(-32 / 9)
    assert online[0] > online[1]
    assert offline[0] == pytest.approx(8 / 3)
    assert offline[1] == pytest.approx(0.0, abs=1e-12)


def test_lira_scores_ignore_the_scale_and_offset_of_each_model():
    # Prepare
    references, rng = in_like_references(target_count=50)
    observed = rng.normal(size=50)
    scale = rng.uniform(0.1, 10.0, size=(8, 1))
    rescaled = ReferenceLogits(logits=scale * references.logits - 3.0, in_mask=references.in_mask, steps=7)

    # Execute
    original = lira_scores(observed, references)
    moved = lira_scores(40.0 * observed + 11.0, rescaled)

    # Assert: standardising each model over the targets removes any positive affine change of its logits.
    np.testing.assert_allclose(moved, original, rtol=1e-9, atol=1e-9)


# ---- resolvable_tpr / lira_attack ----

@pytest.mark.parametrize("fpr, too_few, enough", [(0.001, 999, 1000), (0.01, 99, 100)])
def test_resolvable_tpr_is_none_below_one_over_fpr_negatives(fpr, too_few, enough):
    # Prepare
    positive = np.linspace(0.0, 1.0, 50)
    negative = np.random.default_rng(0).uniform(-1.0, 0.9, size=enough)

    # Execute
    unresolved = resolvable_tpr(positive, negative[:too_few], fpr)
    resolved = resolvable_tpr(positive, negative, fpr)

    # Assert
    assert unresolved is None
    assert resolved == tpr_at_fpr(positive, negative, fpr)


def test_lira_attack_reports_each_positive_group_and_leaves_unresolvable_tprs_empty():
    # Prepare: forget and member targets answered like an IN model, non-members like an OUT one.
    references, _ = in_like_references(target_count=300)
    in_means = np.where(references.in_mask, references.logits, 0).sum(0) / references.in_mask.sum(0)
    out_means = np.where(~references.in_mask, references.logits, 0).sum(0) / (~references.in_mask).sum(0)
    observed = np.where(np.arange(300) < 200, in_means, out_means)
    groups = {"forget": np.arange(100), "member": np.arange(100, 200), "nonmember": np.arange(200, 300)}

    # Execute
    summary = lira_attack(observed, references, groups)

    # Assert
    for name in ("forget", "member"):
        assert summary[f"lira_auc_{name}_vs_nonmember"] > 0.9
        assert summary[f"lira_tpr_at_0.1pct_fpr_{name}"] is None  # 100 non-members cannot resolve 0.1 %
        assert 0.0 <= summary[f"lira_tpr_at_1pct_fpr_{name}"] <= 1.0
    assert summary["lira_references"] == 8
    assert summary["lira_steps"] == 7
    assert summary["lira_sizes"] == {"nonmember": 100, "forget": 100, "member": 100}


# ---- train_references ----

def conditional_factory(k: int) -> nn.Module:
    """Reference k: the project's conditional MLP discriminator, narrow, seeded by k."""
    return build_discriminator(ModelSpec("mlp", conditional=True, width=8), IMAGE_SHAPE, 3, seed=k)


def labelled_inputs() -> dict[str, torch.Tensor]:
    """Population, targets and fakes with labels in {0, 1, 2}, as train_references takes them."""
    generator = torch.Generator().manual_seed(0)
    inputs: dict[str, torch.Tensor] = {}
    for images, labels, size in [("population", "population_labels", 20), ("targets", "target_labels", 12),
                                 ("fake", "fake_labels", 40)]:
        inputs[images] = gaussian_images(size, generator)
        inputs[labels] = torch.randint(0, 3, (size,), generator=generator)
    return inputs


def test_train_references_is_seeded_and_balances_the_in_mask():
    # Prepare
    inputs = labelled_inputs()

    def run(seed: int) -> ReferenceLogits:
        return train_references(conditional_factory, inputs["population"], inputs["population_labels"],
                                inputs["targets"], inputs["target_labels"], inputs["fake"], inputs["fake_labels"],
                                count=4, steps=20, batch_size=8, seed=seed)

    # Execute
    first, again, other = run(seed=0), run(seed=0), run(seed=1)

    # Assert
    np.testing.assert_array_equal(first.logits, again.logits)
    np.testing.assert_array_equal(first.in_mask, again.in_mask)
    assert not np.array_equal(first.logits, other.logits)
    assert first.logits.shape == (4, 12)
    assert np.all(first.in_mask.sum(axis=0) == 2)
    assert first.steps == 20


def _with(**changes) -> Callable[[], object]:
    """A train_references call on labelled_inputs with some arguments replaced."""
    def call() -> object:
        arguments = {**labelled_inputs(), **changes}
        count = arguments.pop("count", 4)
        return train_references(conditional_factory, arguments["population"], arguments["population_labels"],
                                arguments["targets"], arguments["target_labels"], arguments["fake"],
                                arguments["fake_labels"], count=count, steps=1, batch_size=4)
    return call


@pytest.mark.parametrize("call, argument", [
    (_with(count=3), "count"),
    (_with(count=2), "count"),
    (_with(targets=torch.zeros(0, *IMAGE_SHAPE), target_labels=torch.zeros(0, dtype=torch.long)), "targets"),
    (_with(population=torch.zeros(5, 1, 4, 4)), "population"),
    (_with(target_labels=torch.zeros(3, dtype=torch.long)), "target_labels"),
    (_with(fake_labels=None), "fake_labels"),
    (lambda: lira_scores(np.zeros(3), in_like_references(4)[0]), "observed_logits"),
    (lambda: lira_attack(np.arange(4.0), in_like_references(4)[0], {"forget": np.arange(2)}), "groups"),
    (lambda: ReferenceLogits(np.zeros((2, 3)), np.zeros((2, 3)), steps=0), "in_mask"),
])
def test_bad_input_raises_a_value_error_naming_the_argument(call, argument):
    # Execute / Assert
    with pytest.raises(ValueError, match=argument):
        call()


# ---- power ----

def test_lira_detects_memorised_targets_and_not_unseen_ones():
    # Prepare: small population so the discriminators memorise; F and N drawn alike, 128 each.
    generator = torch.Generator().manual_seed(0)
    population, forget, nonmember, fake = (gaussian_images(size, generator) for size in (16, 128, 128, 256))
    targets = torch.cat([forget, nonmember])
    references = tiny_references(population, targets, fake)

    # Execute
    trained_on_forget = lira_scores(attacked_logits(torch.cat([population, forget]), fake, targets), references)
    never_saw_forget = lira_scores(attacked_logits(population, fake, targets), references)

    # Assert
    assert roc_auc(trained_on_forget[:128], trained_on_forget[128:]) > 0.8
    assert abs(roc_auc(never_saw_forget[:128], never_saw_forget[128:]) - 0.5) < 0.15


def test_references_without_a_population_train_on_their_in_targets_and_still_detect_members():
    # Prepare: no item outside the targets (a small shard whose attack sets take every item it keeps).
    generator = torch.Generator().manual_seed(0)
    forget, nonmember, fake = (gaussian_images(size, generator) for size in (128, 128, 256))
    targets = torch.cat([forget, nonmember])

    # Execute
    references = tiny_references(torch.zeros(0, *IMAGE_SHAPE), targets, fake)
    scores = lira_scores(attacked_logits(forget, fake, targets), references)

    # Assert: every reference scored every target, and the attack still tells the memorised targets apart.
    assert references.logits.shape == (8, len(targets))
    assert roc_auc(scores[:128], scores[128:]) > 0.8


def test_lira_calibrates_away_non_members_that_any_discriminator_scores_high():
    # Prepare: non-members sit where half the population is (shifted pixels), so every D scores them high;
    # the forgotten items are ordinary draws that only the attacked D memorised.
    generator = torch.Generator().manual_seed(1)
    population = torch.cat([gaussian_images(16, generator), gaussian_images(16, generator, shift=0.5)])
    forget, nonmember = gaussian_images(48, generator), gaussian_images(48, generator, shift=0.5)
    fake = gaussian_images(256, generator)
    targets = torch.cat([forget, nonmember])
    references = tiny_references(population, targets, fake, seed=1)

    # Execute
    observed = attacked_logits(torch.cat([population, forget]), fake, targets)
    lira_auc = roc_auc(*np.split(lira_scores(observed, references), 2))
    raw_auc = roc_auc(observed[:48], observed[48:])

    # Assert: the raw logit threshold is fooled, the per-target calibration is not.
    assert lira_auc > 0.9
    assert lira_auc > raw_auc + 0.2
