"""The Flower ServerApp: the central generator, the round loop, aggregation (and, later, forget requests)."""
