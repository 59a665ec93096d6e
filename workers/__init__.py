"""fedbus: workers."""
