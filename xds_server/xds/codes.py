"""The gRPC status each of our errors ends a stream with (xDS and HDS alike)."""

from __future__ import annotations

import grpc

from xds_server.errors import ProtocolError
from xds_server.xds import limits
from xds_server.xds.identity import NodeNotAuthorized
from xds_server.xds.stream import StreamReplaced

_STATUS_OF: dict[type[Exception], grpc.StatusCode] = {
    ProtocolError: grpc.StatusCode.INVALID_ARGUMENT,
    # docs/xds-protocol.md rule 36, the code gRPC itself gives an oversized message.
    limits.LimitExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    NodeNotAuthorized: grpc.StatusCode.PERMISSION_DENIED,
    StreamReplaced: grpc.StatusCode.ABORTED,
}
# The errors a stream ends with on the client's account (or a newer stream's).
STREAM_ERRORS = (ProtocolError, NodeNotAuthorized, StreamReplaced)


def status_of(error: Exception) -> grpc.StatusCode:
    """The code of the error's nearest class in _STATUS_OF (a subclass of
    ProtocolError without its own entry is still INVALID_ARGUMENT)."""
    return next(_STATUS_OF[cls] for cls in type(error).__mro__ if cls in _STATUS_OF)
