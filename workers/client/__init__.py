"""fedbus: workers/client."""
