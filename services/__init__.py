"""fedbus: services."""
