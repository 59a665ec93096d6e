"""Composition roots: one per runnable (coordinator, aggregator, client), for deployed and embedded modes."""
