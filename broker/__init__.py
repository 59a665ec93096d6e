"""fedbus: broker."""
