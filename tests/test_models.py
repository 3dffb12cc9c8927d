"""Models: shapes for every architecture, per-sample input gradients (no batch norm in D), determinism."""
from __future__ import annotations

import pytest
import torch

from fedgan.models import ARCHITECTURES, ModelSpec, build_discriminator, build_generator

SHAPES = [(1, 28, 28), (3, 32, 32)]


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
@pytest.mark.parametrize("conditional", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_generator_and_discriminator_shapes(architecture, conditional, shape):
    # Prepare
    spec = ModelSpec(architecture, conditional, latent_dim=16, width=16)
    G = build_generator(spec, shape, 10, seed=0)
    D = build_discriminator(spec, shape, 10, seed=0)
    labels = torch.arange(5) if conditional else None

    # Execute
    images = G(G.sample_latent(5), labels)
    logits = D(images, labels)

    # Assert
    assert images.shape == (5, *shape)
    assert images.min() >= -1 and images.max() <= 1
    assert logits.shape == (5,)


@pytest.mark.parametrize("architecture", sorted(ARCHITECTURES))
@pytest.mark.parametrize("conditional", [False, True])
def test_discriminator_input_gradient_is_per_sample(architecture, conditional):
    # Prepare: the gradient of the summed logits must equal each sample's own gradient (no cross-sample terms).
    spec = ModelSpec(architecture, conditional, latent_dim=8, width=8)
    D = build_discriminator(spec, (1, 28, 28), 10, seed=1)
    x = torch.randn(4, 1, 28, 28, requires_grad=True)
    labels = torch.tensor([0, 3, 5, 9]) if conditional else None

    # Execute
    (batched,) = torch.autograd.grad(D(x, labels).sum(), x)
    singles = [torch.autograd.grad(D(x[i : i + 1], None if labels is None else labels[i : i + 1]).sum(), x)[0][i]
               for i in range(4)]

    # Assert
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules())
    torch.testing.assert_close(batched, torch.stack(singles))


def test_same_seed_same_weights_and_global_rng_untouched():
    spec = ModelSpec()
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_discriminator(spec, (1, 28, 28), 10, seed=7)
    after = torch.rand(1)
    b = build_discriminator(spec, (1, 28, 28), 10, seed=7)
    c = build_discriminator(spec, (1, 28, 28), 10, seed=8)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(pa, pb)
    assert not torch.equal(a.head.weight, c.head.weight)
    assert torch.equal(before, after)
