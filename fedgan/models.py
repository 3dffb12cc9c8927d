"""Generators and discriminators, behind a registry keyed by architecture name.

Two families:
- ``dcgan``: DCGAN-style convolutional G/D for 28×28 (1 channel) and 32×32 (any channels). G uses batch norm;
  D has none, so each sample's logit depends on that sample only and ∂logit/∂x is a per-sample gradient
  (the quantity Universal Aggregation ships from a site to the server).
- ``mlp``: the fully connected GAN of the seed article "GANs with MNIST Fashion" (linear layers, LeakyReLU, tanh).

Both come unconditional or class-conditional. Conditional G embeds the label and concatenates it to z;
conditional D is a projection discriminator (Miyato & Koyama 2018): logit = ψ(h) + <embed(y), h>.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fedgan.registry import Registry

ImageShape = tuple[int, int, int]


@dataclass(frozen=True)
class ModelSpec:
    """What to build: architecture name, conditional or not, latent size and base width."""

    architecture: str = "dcgan"
    conditional: bool = False
    latent_dim: int = 64
    width: int = 64


class Generator(nn.Module):
    """Base class: maps (z, labels) to images in [-1, 1]; unconditional models ignore labels."""

    latent_dim: int
    num_classes: int
    conditional: bool

    def sample_latent(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Standard normal z of shape (batch, latent_dim) on the model's device."""
        device = next(self.parameters()).device
        return torch.randn(batch, self.latent_dim, generator=generator, device="cpu").to(device)


class Discriminator(nn.Module):
    """Base class: maps (x, labels) to one logit per sample, shape (B,)."""

    conditional: bool


# --------------------------------------------------------------------------------------------------------------
# DCGAN
# --------------------------------------------------------------------------------------------------------------


class DCGANGenerator(Generator):
    """z (+ label embedding) -> linear -> (4w, s, s) -> up-convolutions -> (C, H, W), tanh."""

    def __init__(self, image_shape: ImageShape, num_classes: int, spec: ModelSpec) -> None:
        super().__init__()
        channels, height, _ = image_shape
        self.latent_dim, self.num_classes, self.conditional = spec.latent_dim, num_classes, spec.conditional
        self.image_shape = image_shape
        w = spec.width
        self.embed = nn.Embedding(num_classes, spec.latent_dim) if spec.conditional else None
        in_dim = spec.latent_dim * (2 if spec.conditional else 1)
        if height == 28:  # 7 -> 14 -> 28
            self.start, self.start_channels = 7, 2 * w
            ups = [(2 * w, w), (w, channels)]
        elif height == 32:  # 4 -> 8 -> 16 -> 32
            self.start, self.start_channels = 4, 4 * w
            ups = [(4 * w, 2 * w), (2 * w, w), (w, channels)]
        else:
            raise ValueError(f"dcgan supports 28x28 and 32x32 images, got {image_shape}")
        self.project = nn.Linear(in_dim, self.start_channels * self.start * self.start)
        layers: list[nn.Module] = [nn.BatchNorm2d(self.start_channels), nn.ReLU(True)]
        for i, (cin, cout) in enumerate(ups):
            layers.append(nn.ConvTranspose2d(cin, cout, 4, 2, 1))
            if i < len(ups) - 1:
                layers += [nn.BatchNorm2d(cout), nn.ReLU(True)]
        layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], dim=1)
        h = self.project(z).view(-1, self.start_channels, self.start, self.start)  # (B, 2w|4w, s, s)
        return self.net(h).float()  # (B, C, H, W), float32 under autocast too


class DCGANDiscriminator(Discriminator):
    """Strided convolutions with LeakyReLU (no batch norm: per-sample gradients), linear head, optional projection."""

    def __init__(self, image_shape: ImageShape, num_classes: int, spec: ModelSpec) -> None:
        super().__init__()
        channels, height, _ = image_shape
        self.conditional = spec.conditional
        w = spec.width
        if height == 28:  # 28 -> 14 -> 7
            widths, final = [channels, w, 2 * w], 7
        elif height == 32:  # 32 -> 16 -> 8 -> 4
            widths, final = [channels, w, 2 * w, 4 * w], 4
        else:
            raise ValueError(f"dcgan supports 28x28 and 32x32 images, got {image_shape}")
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 4, 2, 1) for a, b in zip(widths[:-1], widths[1:]))
        self.feature_dim = widths[-1] * final * final
        self.head = nn.Linear(self.feature_dim, 1)
        self.embed = nn.Embedding(num_classes, self.feature_dim) if spec.conditional else None
        if self.embed is not None:
            nn.init.normal_(self.embed.weight, std=1.0 / math.sqrt(self.feature_dim))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = x
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.2)
        h = h.flatten(1)  # (B, feature_dim)
        logit = self.head(h).squeeze(1)  # (B,)
        if self.embed is not None:
            logit = logit + (self.embed(labels) * h).sum(1)
        return logit.float()  # float32 under autocast too (fedgan.precision): losses and replies stay float32


# --------------------------------------------------------------------------------------------------------------
# MLP (the seed article's linear GAN)
# --------------------------------------------------------------------------------------------------------------


class MLPGenerator(Generator):
    """z (+ label embedding) -> 256 -> 512 -> 1024 -> C·H·W, LeakyReLU, tanh (widths scale with spec.width/64)."""

    def __init__(self, image_shape: ImageShape, num_classes: int, spec: ModelSpec) -> None:
        super().__init__()
        self.latent_dim, self.num_classes, self.conditional = spec.latent_dim, num_classes, spec.conditional
        self.image_shape = image_shape
        scale = spec.width / 64
        hidden = [int(256 * scale), int(512 * scale), int(1024 * scale)]
        self.embed = nn.Embedding(num_classes, spec.latent_dim) if spec.conditional else None
        dims = [spec.latent_dim * (2 if spec.conditional else 1), *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.LeakyReLU(0.2, True)]
        layers += [nn.Linear(dims[-1], math.prod(image_shape)), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels)], dim=1)
        return self.net(z).view(-1, *self.image_shape).float()


class MLPDiscriminator(Discriminator):
    """C·H·W -> 1024 -> 512 -> 256 -> 1 with LeakyReLU; projection term when conditional."""

    def __init__(self, image_shape: ImageShape, num_classes: int, spec: ModelSpec) -> None:
        super().__init__()
        self.conditional = spec.conditional
        scale = spec.width / 64
        dims = [math.prod(image_shape), int(1024 * scale), int(512 * scale), int(256 * scale)]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.LeakyReLU(0.2, True)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(dims[-1], 1)
        self.embed = nn.Embedding(num_classes, dims[-1]) if spec.conditional else None

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        h = self.body(x.flatten(1))
        logit = self.head(h).squeeze(1)
        if self.embed is not None:
            logit = logit + (self.embed(labels) * h).sum(1)
        return logit.float()  # float32 under autocast too (fedgan.precision): losses and replies stay float32


# --------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------

ModelFactory = Callable[[ImageShape, int, ModelSpec], nn.Module]
ARCHITECTURES: Registry[tuple[ModelFactory, ModelFactory]] = Registry("model architecture")  # (G, D) factories
ARCHITECTURES.add("dcgan", (DCGANGenerator, DCGANDiscriminator))
ARCHITECTURES.add("mlp", (MLPGenerator, MLPDiscriminator))


def _init_weights(module: nn.Module) -> None:
    """DCGAN initialisation (N(0, 0.02) for conv/linear weights), which keeps early training stable."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def _build(kind: int, spec: ModelSpec, image_shape: ImageShape, num_classes: int, seed: int) -> nn.Module:
    if spec.architecture not in ARCHITECTURES:
        raise KeyError(spec.architecture)
    # A private RNG scope: building a site's D must not move the global stream other code relies on.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ARCHITECTURES[spec.architecture][kind](image_shape, num_classes, spec)
        model.apply(_init_weights)
    return model


def build_generator(spec: ModelSpec, image_shape: ImageShape, num_classes: int, seed: int) -> Generator:
    """The generator named by `spec`, initialised deterministically from `seed`."""
    return _build(0, spec, image_shape, num_classes, seed)  # type: ignore[return-value]


def build_discriminator(spec: ModelSpec, image_shape: ImageShape, num_classes: int, seed: int) -> Discriminator:
    """A discriminator named by `spec` (no batch norm), initialised deterministically from `seed`."""
    return _build(1, spec, image_shape, num_classes, seed)  # type: ignore[return-value]
