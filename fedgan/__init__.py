"""fedgan: a federated GAN unlearning simulator (engine-free core: pure torch/numpy, knows nothing of Flower)."""

__version__ = "0.1.0"
