"""fedbus: services/cli."""
