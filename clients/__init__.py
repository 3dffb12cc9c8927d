"""The Flower ClientApp: one site of the federation (its shard, discriminator and local steps)."""
