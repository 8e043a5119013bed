"""Intent -> the one HTTP Listener (LDS) on the router address.

The listener is a front door: its connection manager takes the edge settings
of the intent (model/edge.py has each default and why), after Envoy's
"Configuring Envoy as an edge proxy" guide
(https://www.envoyproxy.io/docs/envoy/latest/configuration/best_practices/edge).
The overload manager, the other half of that guide, is in the bootstraps
(proxy/overload.py).
"""

from __future__ import annotations

import functools

from envoy.config.core.v3 import protocol_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import wrappers_pb2

from xds_server.model.access_log import AccessLog
from xds_server.model.edge import Edge, EscapedSlashes, UnderscoreHeaders
from xds_server.model.intent import Intent, SocketAddress
from xds_server.resources import LISTENER_NAME, ROUTE_CONFIG_NAME
from xds_server.translate.access_log import access_logs
from xds_server.translate.common import address_of, ads_config_source, duration, packed
from xds_server.translate.memo import Memo
from xds_server.translate.openai import http_filters as front_door_filters
from xds_server.translate.openai import local_reply_config as front_door_local_replies
from xds_server.translate.secrets import tls_transport_socket

HCM_FILTER = "envoy.filters.network.http_connection_manager"
ROUTER_FILTER = "envoy.filters.http.router"
# Each Envoy worker thread keeps its own round-robin position. Without this the
# kernel hands sequential connections (one curl after another) to any of the
# workers, and round robin does not alternate; exact balance gives a new
# connection to the worker with the fewest open ones, so sequential clients
# share one worker and one rotation, and concurrent clients still spread over
# all workers (README, "Round robin across workers"; bench/README.md measures
# that it costs no throughput).
# https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/intro/threading_model
EXACT_BALANCE = listener_pb2.Listener.ConnectionBalanceConfig(
    exact_balance=listener_pb2.Listener.ConnectionBalanceConfig.ExactBalance()
)


_ESCAPED_SLASHES = {
    EscapedSlashes.REJECT_REQUEST: hcm_pb2.HttpConnectionManager.REJECT_REQUEST,
    EscapedSlashes.UNESCAPE_AND_REDIRECT: hcm_pb2.HttpConnectionManager.UNESCAPE_AND_REDIRECT,
    EscapedSlashes.UNESCAPE_AND_FORWARD: hcm_pb2.HttpConnectionManager.UNESCAPE_AND_FORWARD,
    EscapedSlashes.KEEP_UNCHANGED: hcm_pb2.HttpConnectionManager.KEEP_UNCHANGED,
}
_UNDERSCORES = {
    UnderscoreHeaders.REJECT_REQUEST: protocol_pb2.HttpProtocolOptions.REJECT_REQUEST,
    UnderscoreHeaders.DROP_HEADER: protocol_pb2.HttpProtocolOptions.DROP_HEADER,
    UnderscoreHeaders.ALLOW: protocol_pb2.HttpProtocolOptions.ALLOW,
}


# The listener's TLS: None (plaintext), False (TLS), True (TLS with client
# certificates required). Never the certificate itself (translate/secrets.py).
TlsMode = bool | None


def listeners(
    intent: Intent, memo: Memo[listener_pb2.Listener], tls: TlsMode = None
) -> dict[str, listener_pb2.Listener]:
    inputs = (intent.listen, intent.edge, intent.access_log, tls)
    build = functools.partial(router_listener, *inputs)
    return {LISTENER_NAME: memo.get(LISTENER_NAME, inputs, build)}


def router_listener(
    listen: SocketAddress, edge: Edge, access_log: AccessLog, tls: TlsMode = None
) -> listener_pb2.Listener:
    """The one filter chain, plaintext or TLS, so either way every request is logged."""
    hcm = http_connection_manager(edge, access_log)
    chain = listener_components_pb2.FilterChain(
        filters=[listener_components_pb2.Filter(name=HCM_FILTER, typed_config=packed(hcm))]
    )
    if tls is not None:
        chain.transport_socket.CopyFrom(tls_transport_socket(mutual=tls))
    return listener_pb2.Listener(
        name=LISTENER_NAME,
        address=address_of(listen),
        filter_chains=[chain],
        connection_balance_config=EXACT_BALANCE,
        per_connection_buffer_limit_bytes=_uint32(edge.per_connection_buffer_limit_bytes),
    )


def http_connection_manager(edge: Edge, access_log: AccessLog) -> hcm_pb2.HttpConnectionManager:
    return hcm_pb2.HttpConnectionManager(
        stat_prefix=LISTENER_NAME,
        # One JSON line per request (translate/access_log.py), or none.
        access_log=access_logs(access_log),
        # The client sees the id its line carries, whether or not it is logged.
        always_set_request_id_in_response=True,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        rds=hcm_pb2.Rds(config_source=ads_config_source(), route_config_name=ROUTE_CONFIG_NAME),
        http_filters=[
            # Off unless a front door route turns them on (translate/openai.py).
            *front_door_filters(),
            hcm_pb2.HttpFilter(name=ROUTER_FILTER, typed_config=packed(router_pb2.Router())),
        ],
        # Without this, HTTP/1.0 clients such as the spec's `ab` get 426 Upgrade
        # Required (docs/envoy-notes.md, "Traps").
        http_protocol_options=protocol_pb2.Http1ProtocolOptions(accept_http_10=True),
        # The client is the address Envoy saw (less the trusted hops), never what
        # the client's own X-Forwarded-For says: Envoy appends that address to
        # X-Forwarded-For, and the admin API reads it from there
        # (admin/client.py).
        use_remote_address=wrappers_pb2.BoolValue(value=True),
        xff_num_trusted_hops=edge.xff_num_trusted_hops,
        normalize_path=wrappers_pb2.BoolValue(value=edge.normalize_path),
        merge_slashes=edge.merge_slashes,
        path_with_escaped_slashes_action=_ESCAPED_SLASHES[edge.path_with_escaped_slashes_action],
        common_http_protocol_options=protocol_pb2.HttpProtocolOptions(
            idle_timeout=duration(edge.idle_timeout_s),
            headers_with_underscores_action=_UNDERSCORES[edge.headers_with_underscores_action],
        ),
        http2_protocol_options=protocol_pb2.Http2ProtocolOptions(
            max_concurrent_streams=_uint32(edge.max_concurrent_streams),
            initial_stream_window_size=_uint32(edge.initial_stream_window_size),
            initial_connection_window_size=_uint32(edge.initial_connection_window_size),
        ),
        stream_idle_timeout=duration(edge.stream_idle_timeout_s),
        request_headers_timeout=duration(edge.request_headers_timeout_s),
        max_request_headers_kb=_uint32(edge.max_request_headers_kb),
        # Envoy's 413 on the OpenAI paths in OpenAI's error shape (translate/openai.py).
        local_reply_config=front_door_local_replies(edge.request_body_buffer_limit_bytes),
    )


def _uint32(value: int) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=value)
