"""fedbus: workers/aggregator."""
