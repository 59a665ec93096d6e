"""The federation service's method table, with request parsing that refuses bad bytes instead of failing.

grpc's generated `add_FederationServicer_to_server` deserializes with `FromString`: bytes that are not the
message make grpc answer UNKNOWN and log a traceback, once per call. Here a request that does not parse
becomes a `Malformed` value; the servicer turns it into INVALID_ARGUMENT like any other bad input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from contracts.errors import CodecError
from contracts.proto.fedbus.v1 import federation_pb2 as pb

M = TypeVar("M", bound=Message)
SERVICE = "fedbus.v1.Federation"


class Malformed:
    """A request whose bytes are not a valid protobuf message of its method's type."""

    __slots__ = ("detail",)

    def __init__(self, detail: str) -> None:
        self.detail = detail


def parsed(message: M | Malformed) -> M:
    """The message, or CodecError (INVALID_ARGUMENT) for bytes that did not parse."""
    if isinstance(message, Malformed):
        raise CodecError(message.detail)
    return message


def _tolerant(message_type: type[Message]) -> Callable[[bytes], Message | Malformed]:
    def deserialize(data: bytes) -> Message | Malformed:
        try:
            return message_type.FromString(data)
        except (DecodeError, RuntimeError, ValueError) as exc:  # RuntimeError: recursion limit of nested fields
            return Malformed(f"malformed {message_type.DESCRIPTOR.full_name}: {exc}"[:300])

    return deserialize


def _as_is(message: bytes) -> bytes:
    return message


def add_federation_service(servicer: Any, server: grpc.aio.Server) -> None:
    """Register `servicer`'s four methods on `server` with tolerant request parsing."""
    handlers = {
        "Register": grpc.unary_unary_rpc_method_handler(
            servicer.Register,
            request_deserializer=_tolerant(pb.RegisterRequest),
            response_serializer=pb.RegisterReply.SerializeToString,
        ),
        "DownloadModel": grpc.unary_stream_rpc_method_handler(
            servicer.DownloadModel,
            request_deserializer=_tolerant(pb.DownloadRequest),
            response_serializer=_as_is,  # the servicer serializes (and keeps) a model's chunks itself
        ),
        "UploadUpdate": grpc.stream_unary_rpc_method_handler(
            servicer.UploadUpdate,
            request_deserializer=_tolerant(pb.UpdateChunk),
            response_serializer=pb.UploadReply.SerializeToString,
        ),
        "Decline": grpc.unary_unary_rpc_method_handler(
            servicer.Decline,
            request_deserializer=_tolerant(pb.DeclineRequest),
            response_serializer=pb.DeclineReply.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)  # as the generated code does: the faster lookup
