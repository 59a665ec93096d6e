"""fedbus: ops."""
