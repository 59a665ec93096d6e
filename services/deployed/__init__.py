"""The deployed runnables: coordinator, aggregator and client as separate processes."""
