"""fedbus: workers/learning."""
