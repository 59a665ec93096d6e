"""The monitoring and management API: async Flask over the event log, with a dashboard and /metrics."""
