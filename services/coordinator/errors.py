"""The coordinator's refusals; the gRPC edge maps each to one status code (services/coordinator/status.py)."""

from __future__ import annotations

from contracts.errors import FedbusError
from contracts.update_validation import RejectReason


class UploadRefused(FedbusError):
    """An update that will not be aggregated, with its reason code."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class RunNotFound(FedbusError, LookupError):
    """No run, or no model version, with that id."""


class NoRoundOpen(FedbusError):
    """A decline or an upload names a round that is not open."""


class UploadStalled(FedbusError):
    """An upload stream that sent nothing for too long, or ran past its time: its slot goes to others."""
