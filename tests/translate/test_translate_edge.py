"""The edge settings in the translator's output (the goldens pin the defaults;
these pin that each knob lands, that admin_via_listener drops the admin routes,
and that the memory rebuilds what an edge change touches)."""

from __future__ import annotations

import dataclasses

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import protocol_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from tests.factories import intent_of
from xds_server.model.edge import Edge, EscapedSlashes, UnderscoreHeaders
from xds_server.model.intent import Intent
from xds_server.resources import (
    ADMIN_CLUSTER,
    ADMIN_PREFIX,
    CLIENT_ADDRESS_HEADER,
    CLUSTER,
    LISTENER,
    LISTENER_NAME,
    OVERALL_HEALTH_PATH,
    ROUTE,
    ROUTE_CONFIG_NAME,
)
from xds_server.translate import translate
from xds_server.translate.memo import Memory

CHANGED = Edge(
    xff_num_trusted_hops=2,
    normalize_path=False,
    merge_slashes=False,
    path_with_escaped_slashes_action=EscapedSlashes.UNESCAPE_AND_REDIRECT,
    headers_with_underscores_action=UnderscoreHeaders.DROP_HEADER,
    request_headers_timeout_s=1.5,
    idle_timeout_s=60.0,
    stream_idle_timeout_s=90.0,
    per_connection_buffer_limit_bytes=65536,
    max_concurrent_streams=10,
    initial_stream_window_size=70000,
    initial_connection_window_size=2_000_000,
    max_request_headers_kb=16,
    request_body_buffer_limit_bytes=4096,
)


def listener_of(intent: Intent) -> tuple[listener_pb2.Listener, hcm_pb2.HttpConnectionManager]:
    listener = translate(intent)[LISTENER][LISTENER_NAME]
    assert isinstance(listener, listener_pb2.Listener)
    hcm = hcm_pb2.HttpConnectionManager()
    assert listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    return listener, hcm


def test_every_edge_knob_lands_in_the_listener() -> None:
    listener, hcm = listener_of(dataclasses.replace(intent_of(1), edge=CHANGED))
    assert listener.per_connection_buffer_limit_bytes.value == 65536
    assert hcm.use_remote_address.value is True
    assert hcm.xff_num_trusted_hops == 2
    assert hcm.normalize_path.value is False and hcm.merge_slashes is False
    assert (
        hcm.path_with_escaped_slashes_action == hcm_pb2.HttpConnectionManager.UNESCAPE_AND_REDIRECT
    )
    options = hcm.common_http_protocol_options
    assert options.headers_with_underscores_action == protocol_pb2.HttpProtocolOptions.DROP_HEADER
    assert options.idle_timeout.ToMilliseconds() == 60_000
    assert hcm.request_headers_timeout.ToMilliseconds() == 1500
    assert hcm.stream_idle_timeout.ToMilliseconds() == 90_000
    h2 = hcm.http2_protocol_options
    assert (h2.max_concurrent_streams.value, h2.initial_stream_window_size.value) == (10, 70000)
    assert h2.initial_connection_window_size.value == 2_000_000
    assert hcm.max_request_headers_kb.value == 16


def test_clusters_for_envoy_carry_the_buffer_limit() -> None:
    clusters = translate(dataclasses.replace(intent_of(2), edge=CHANGED))[CLUSTER]
    for cluster in clusters.values():
        assert isinstance(cluster, cluster_pb2.Cluster)
        assert cluster.per_connection_buffer_limit_bytes.value == 65536, cluster.name


def test_service_routes_keep_bodies_for_retries_up_to_the_limit() -> None:
    config = translate(dataclasses.replace(intent_of(2), edge=CHANGED))[ROUTE][ROUTE_CONFIG_NAME]
    assert isinstance(config, route_pb2.RouteConfiguration)
    services = [r for r in config.virtual_hosts[0].routes if r.route.cluster != ADMIN_CLUSTER]
    assert services and all(r.request_body_buffer_limit.value == 4096 for r in services)


def admin_matches(intent: Intent) -> list[str]:
    config = translate(intent)[ROUTE][ROUTE_CONFIG_NAME]
    assert isinstance(config, route_pb2.RouteConfiguration)
    routes = config.virtual_hosts[0].routes
    admin = [r for r in routes if r.route.cluster == ADMIN_CLUSTER]
    for route in admin:  # Envoy, not the client, says who the client is
        (added,) = route.request_headers_to_add
        assert added.header.key == CLIENT_ADDRESS_HEADER
        assert added.append_action == added.OVERWRITE_IF_EXISTS_OR_ADD
    return [r.match.prefix or r.match.path for r in admin]


def test_admin_via_listener_false_leaves_only_the_overall_health_route() -> None:
    assert admin_matches(intent_of(1)) == [ADMIN_PREFIX, OVERALL_HEALTH_PATH]
    off = dataclasses.replace(intent_of(1), admin_via_listener=False)
    assert admin_matches(off) == [OVERALL_HEALTH_PATH]


def test_an_edge_change_rebuilds_the_listener_and_clusters_it_touches() -> None:
    memory = Memory()
    intent = intent_of(2)
    first = translate(intent, memory=memory)
    same = translate(dataclasses.replace(intent, edge=Edge()), memory=memory)
    assert same[LISTENER][LISTENER_NAME] is first[LISTENER][LISTENER_NAME]
    timeout = dataclasses.replace(intent, edge=Edge(request_headers_timeout_s=3.0))
    second = translate(timeout, memory=memory)
    assert second[LISTENER][LISTENER_NAME] is not first[LISTENER][LISTENER_NAME]
    assert second[CLUSTER] == first[CLUSTER]  # equal, and the same objects
    assert all(second[CLUSTER][n] is first[CLUSTER][n] for n in first[CLUSTER])
    buffer = dataclasses.replace(intent, edge=Edge(per_connection_buffer_limit_bytes=4096))
    third = translate(buffer, memory=memory)
    assert all(third[CLUSTER][n] is not second[CLUSTER][n] for n in second[CLUSTER])
    routes_off = translate(dataclasses.replace(intent, admin_via_listener=False), memory=memory)
    assert routes_off[ROUTE][ROUTE_CONFIG_NAME] != third[ROUTE][ROUTE_CONFIG_NAME]
