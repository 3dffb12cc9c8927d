"""The Flower ServerApp and FlowerEngine: the round loop of `fedgan` driven over Flower messages."""
