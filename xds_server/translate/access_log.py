"""router.access_log -> the listener's Envoy access log: one JSON object per request.

What a line holds (README, "Access logs"; the command operators are Envoy's,
https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/access_log/usage):
the backend is `%UPSTREAM_HOST_NAME%`, the EDS endpoint's `hostname`, which is
the backend's name (translate/endpoints.py), with its address and the
service (the cluster) beside it. A request Envoy answered itself (no route,
no healthy backend, an overflow) has no upstream: those fields are null and
`response_flags` says why. Numbers stay numbers (Envoy's JSON formatter keeps
the operators' types); the upstream service time is the
x-envoy-upstream-service-time header Envoy's router adds to each proxied
response, so it is text, or null when no backend answered. After a retry the
upstream fields are those of the last attempt, and `attempts` counts them.

The metrics never read these lines (telemetry/ reads Envoy's counters), so
`off` changes nothing but the log.
"""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import substitution_format_string_pb2 as format_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from google.protobuf import struct_pb2

from xds_server.model.access_log import AccessLog, AccessLogSink
from xds_server.translate.common import packed

STDOUT_LOGGER = "envoy.access_loggers.stdout"
FILE_LOGGER = "envoy.access_loggers.file"

# key -> Envoy command operator, in the order a reader wants them.
FIELDS: dict[str, str] = {
    # The project's one time format (xds_server/timefmt.py): UTC, milliseconds, Z.
    "start_time": "%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%",
    "method": "%REQ(:METHOD)%",
    # The path as the client sent it (Envoy keeps it there when a route rewrites it).
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "status": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "duration_ms": "%DURATION%",
    "upstream_service_time_ms": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "service": "%UPSTREAM_CLUSTER%",
    "backend": "%UPSTREAM_HOST_NAME%",
    "upstream_address": "%UPSTREAM_HOST%",
    "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    # Envoy's, also in the response (always_set_request_id_in_response), so a
    # client's complaint finds its line.
    "request_id": "%REQ(X-REQUEST-ID)%",
    # The client as Envoy saw it, less the trusted X-Forwarded-For hops
    # (router.edge.xff_num_trusted_hops).
    "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "user_agent": "%REQ(USER-AGENT)%",
}


def access_logs(log: AccessLog) -> list[accesslog_pb2.AccessLog]:
    """The HttpConnectionManager's `access_log` list: empty when off."""
    if log.sink is AccessLogSink.OFF:
        return []
    if log.sink is AccessLogSink.STDOUT:
        name, config = STDOUT_LOGGER, packed(stream_pb2.StdoutAccessLog(log_format=json_lines()))
    else:
        typed = file_pb2.FileAccessLog(path=log.path, log_format=json_lines())
        name, config = FILE_LOGGER, packed(typed)
    return [accesslog_pb2.AccessLog(name=name, typed_config=config)]


def json_lines() -> format_pb2.SubstitutionFormatString:
    """One JSON object per line (Envoy ends each with a newline)."""
    fields = struct_pb2.Struct()
    fields.update(FIELDS)
    return format_pb2.SubstitutionFormatString(json_format=fields)
