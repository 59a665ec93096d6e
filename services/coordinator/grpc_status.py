"""The one table from coordinator errors to gRPC status codes. Nothing becomes UNKNOWN."""

from __future__ import annotations

import logging

import grpc

from contracts.errors import CodecError, ConcurrencyConflict, ConfigError, DigestMismatch, NotFound, TransientError
from contracts.update_validation import RejectReason
from services.coordinator.errors import NoRoundOpen, RunNotFound, UploadRefused, UploadStalled
from services.coordinator.registry import IdentityClaimed
from services.coordinator.tokens import PermissionDenied, Unauthenticated

log = logging.getLogger(__name__)

REASON_STATUS: dict[RejectReason, grpc.StatusCode] = {
    RejectReason.CORRUPT: grpc.StatusCode.INVALID_ARGUMENT,
    RejectReason.BAD_HEADER: grpc.StatusCode.INVALID_ARGUMENT,
    RejectReason.MISSING_KEYS: grpc.StatusCode.INVALID_ARGUMENT,
    RejectReason.UNEXPECTED_KEYS: grpc.StatusCode.INVALID_ARGUMENT,
    RejectReason.WRONG_SHAPE: grpc.StatusCode.INVALID_ARGUMENT,
    RejectReason.WRONG_DTYPE: grpc.StatusCode.INVALID_ARGUMENT,
    RejectReason.NOT_FINITE: grpc.StatusCode.INVALID_ARGUMENT,
    RejectReason.NORM_EXCEEDED: grpc.StatusCode.INVALID_ARGUMENT,
    RejectReason.DIGEST_MISMATCH: grpc.StatusCode.DATA_LOSS,
    RejectReason.TOO_LARGE: grpc.StatusCode.RESOURCE_EXHAUSTED,
    RejectReason.NOT_SELECTED: grpc.StatusCode.FAILED_PRECONDITION,
    RejectReason.ROUND_CLOSED: grpc.StatusCode.FAILED_PRECONDITION,
    RejectReason.STALE_MODEL: grpc.StatusCode.FAILED_PRECONDITION,
    RejectReason.DUPLICATE: grpc.StatusCode.ALREADY_EXISTS,
    RejectReason.EPSILON_MISSING: grpc.StatusCode.INVALID_ARGUMENT,
    RejectReason.BUDGET_EXCEEDED: grpc.StatusCode.FAILED_PRECONDITION,
}

ERROR_STATUS: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (IdentityClaimed, grpc.StatusCode.ALREADY_EXISTS),
    (UploadStalled, grpc.StatusCode.DEADLINE_EXCEEDED),
    (RunNotFound, grpc.StatusCode.NOT_FOUND),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (NoRoundOpen, grpc.StatusCode.FAILED_PRECONDITION),
    (DigestMismatch, grpc.StatusCode.DATA_LOSS),
    (ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    (CodecError, grpc.StatusCode.INVALID_ARGUMENT),
    (TransientError, grpc.StatusCode.UNAVAILABLE),
    (ConcurrencyConflict, grpc.StatusCode.ABORTED),
)


def status_of(error: Exception) -> tuple[grpc.StatusCode, str]:
    """The status code and message for an error raised below the servicer."""
    if isinstance(error, UploadRefused):
        return REASON_STATUS[error.reason], f"{error.reason.value}: {error.detail}"
    for cls, code in ERROR_STATUS:
        if isinstance(error, cls):
            return code, str(error)
    log.exception("unexpected error at the gRPC edge", exc_info=error)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(error).__name__})"
