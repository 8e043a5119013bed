"""The listener's edge settings: what Envoy does with a client it does not trust.

Envoy's defaults suit a service mesh, where every client is another proxy of
the same operator. Our listener is a front door, so the defaults here start
from Envoy's "Configuring Envoy as an edge proxy" guide
(https://www.envoyproxy.io/docs/envoy/latest/configuration/best_practices/edge)
and say where they differ and why. They are plain frozen values, part of the
intent (model/intent.py); `router.edge` in router_config.yaml sets them
(model/schema.py `EdgeConfig`), the translator and the bootstraps read them.
Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class EscapedSlashes(StrEnum):
    """What Envoy does with `%2F` / `%5C` in a path (path_with_escaped_slashes_action)."""

    REJECT_REQUEST = "reject_request"  # 400
    UNESCAPE_AND_REDIRECT = "unescape_and_redirect"  # 307 to the unescaped path
    UNESCAPE_AND_FORWARD = "unescape_and_forward"
    KEEP_UNCHANGED = "keep_unchanged"


class UnderscoreHeaders(StrEnum):
    """What Envoy does with a header whose name has `_` (headers_with_underscores_action)."""

    REJECT_REQUEST = "reject_request"  # 400
    DROP_HEADER = "drop_header"
    ALLOW = "allow"


KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


@dataclass(frozen=True)
class Edge:
    """Limits and path rules of the router listener (the guide's value unless noted)."""

    # How many proxies in front of Envoy append to X-Forwarded-For and are
    # trusted to: 0 means Envoy's own peer is the client. Envoy always uses the
    # address it saw (use_remote_address), so a client's own X-Forwarded-For
    # cannot make it someone else.
    xff_num_trusted_hops: int = 0
    # Route on the path as RFC 3986 normalizes it (`/a/../b` is `/b`, `%2e` is
    # `.`) and with `//` merged, so the route Envoy picks and the path the
    # backend receives are the same path: `/api/v1/vectors/../router/strategy`
    # reaches the admin API as /api/v1/router/strategy, or nothing, never the
    # qdrant backend with a path it may resolve differently.
    normalize_path: bool = True
    merge_slashes: bool = True
    # The guide offers REJECT_REQUEST for clients that send normalized paths
    # and UNESCAPE_AND_REDIRECT for browsers. Ours are API clients (SDKs, curl,
    # ab, gRPC) whose paths never legitimately hold an encoded slash, and a
    # redirect of a POST is followed by few of them: a plain 400 says what is
    # wrong.
    path_with_escaped_slashes_action: EscapedSlashes = EscapedSlashes.REJECT_REQUEST
    # Some servers read `x_user` as `x-user`; a client could pass a header the
    # front door never checked.
    headers_with_underscores_action: UnderscoreHeaders = UnderscoreHeaders.REJECT_REQUEST
    # A client gets this long to send its whole request head (slowloris).
    request_headers_timeout_s: float = 10.0
    # A connection without a request in flight is closed after this long.
    idle_timeout_s: float = 3600.0
    # A request with no bytes either way for this long is reset. The guide's
    # 5 minutes: well above the routes' whole-request timeouts (router
    # request_timeout, 15 s by default, and the admin routes' 120 s), so it
    # only reclaims what those do not bound; an LLM stream pauses for seconds,
    # not minutes.
    stream_idle_timeout_s: float = 300.0
    # Read and write buffer per connection, downstream and upstream. Larger
    # bodies still pass (Envoy applies flow control).
    per_connection_buffer_limit_bytes: int = 32 * KIB
    # Not in the guide. What Envoy keeps of a request body to retry it (route
    # request_body_buffer_limit). By default that is the connection buffer, and
    # with 32 KiB a failed request with a larger body is not retried
    # (measured: docs/envoy-notes.md, "Edge settings"), while an LLM prompt
    # with its context or a batch of embeddings is often larger. 1 MiB keeps the
    # spec's retries for them; the heap monitor below bounds the sum.
    request_body_buffer_limit_bytes: int = 1 * MIB
    # HTTP/2: streams per connection and flow-control windows.
    max_concurrent_streams: int = 100
    initial_stream_window_size: int = 64 * KIB
    initial_connection_window_size: int = 1 * MIB
    # Not in the guide; Envoy's default is 60 KiB. Our clients send a handful
    # of short headers (content type, a session id, a bearer token): 32 KiB is
    # generous for them and halves what one request head may hold.
    max_request_headers_kb: int = 32
    # The overload manager (bootstrap): downstream connections across every
    # listener (Envoy's own admin interface is exempt, so the controller can
    # still read the stats of a saturated Envoy), as in the guide's example.
    max_connections: int = 50_000
    # Fixed heap monitor: shrink the heap at 95 % of this, stop accepting
    # requests at 98 % (the guide's thresholds; its 2 GiB, "tune for your
    # system").
    max_heap_bytes: int = 2 * GIB
