"""fedbus: persistence."""
