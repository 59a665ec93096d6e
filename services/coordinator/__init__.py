"""fedbus: services/coordinator."""
