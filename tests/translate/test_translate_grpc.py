"""`protocol: grpc` services: the settings that declare them, the validation
that refuses what gRPC clients cannot take, and the resources built for them."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from xds_server.cache import SnapshotCache, build_snapshot
from xds_server.errors import ConfigError
from xds_server.model.edits import set_strategy
from xds_server.model.intent import Intent, Protocol, Strategy
from xds_server.model.rules import ignored_grpc_weights
from xds_server.pipeline.publisher import Publisher
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from xds_server.settings import parse_settings
from xds_server.store.memory import MemoryStore
from xds_server.translate import translate
from xds_server.translate.listeners import ROUTER_FILTER


def document(*services: dict[str, Any], strategy: str = "round_robin") -> dict[str, Any]:
    return {"router": {"strategy": strategy}, "services": list(services)}


def grpc_service(name: str = "greeter", **keys: Any) -> dict[str, Any]:
    backends = [
        {"name": f"{name}-a", "address": "127.0.0.1", "port": 50051},
        {"name": f"{name}-b", "address": "127.0.0.1", "port": 50052},
    ]
    return {"name": name, "protocol": "grpc", "backends": backends, **keys}


def http_service(name: str = "web", **keys: Any) -> dict[str, Any]:
    backends = [{"name": f"{name}-a", "address": "127.0.0.1", "port": 9001}]
    return {"name": name, "routes": [f"/{name}/"], "backends": backends, **keys}


def intent_of(*services: dict[str, Any], strategy: str = "round_robin") -> Intent:
    return parse_settings(document(*services, strategy=strategy), {}, "test").intent


def problems(doc: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as raised:
        parse_settings(doc, {}, "test")
    return {p.path: p.message for p in raised.value.problems}


# ---- settings and validation ---------------------------------------------------------


def test_grpc_service_needs_no_routes_but_http_does() -> None:
    """A gRPC service without routes serves only proxyless clients; an HTTP
    service still needs its routes, and protocol takes only http or grpc."""
    intent = intent_of(grpc_service(), grpc_service("echo", routes=[]))
    assert [(s.protocol, s.routes) for s in intent.services] == [(Protocol.GRPC, ())] * 2
    assert intent_of(http_service()).services[0].protocol is Protocol.HTTP
    web = http_service()
    del web["routes"]
    assert problems(document(web)) == {
        "services[0].routes": "required (only grpc services may omit it)"
    }
    assert "services[0].protocol" in problems(document(grpc_service(protocol="h2")))


@pytest.mark.parametrize(
    ("strategy", "reason"),
    [
        ("least_connections", "NACK lb_policy LEAST_REQUEST"),
        ("random", "NACK lb_policy RANDOM"),
        ("maglev", "NACK lb_policy MAGLEV"),
        ("weighted", "ignores endpoint weights"),
    ],
)
def test_strategies_grpc_cannot_apply_are_refused(strategy: str, reason: str) -> None:
    """Strategies a gRPC client would NACK or silently ignore are refused with
    the service's field path, whether set on the service or inherited."""
    own = problems(document(http_service(), grpc_service(strategy=strategy)))
    assert list(own) == ["services[1].strategy"]
    assert reason in own["services[1].strategy"]
    inherited = problems(document(grpc_service(), strategy=strategy))
    assert "router.strategy" in inherited["services[0].strategy"]
    # An HTTP service may use it: Envoy implements every strategy.
    assert intent_of(http_service(strategy=strategy)).services[0].strategy == strategy


@pytest.mark.parametrize("strategy", ["round_robin", "ring_hash"])
def test_strategies_grpc_implements_are_accepted(strategy: str) -> None:
    intent = intent_of(grpc_service(strategy=strategy), strategy="maglev")
    cluster = translate(intent)[CLUSTER]["greeter"]
    assert isinstance(cluster, cluster_pb2.Cluster)
    assert cluster_pb2.Cluster.LbPolicy.Name(cluster.lb_policy) == strategy.upper()


def test_a_grpc_service_cannot_take_the_envoy_listener_name() -> None:
    assert list(problems(document(grpc_service("router")))) == ["services[0].name"]


def test_admin_strategy_change_that_grpc_cannot_apply_is_refused() -> None:
    """The admin API checks a change with Publisher.check: switching every
    service to maglev fails on the gRPC service, and nothing is published."""
    intent = intent_of(http_service(), grpc_service())
    cache = SnapshotCache()
    publisher = Publisher(MemoryStore(intent), cache)
    with pytest.raises(ConfigError) as raised:
        publisher.check(set_strategy(intent, Strategy.MAGLEV))
    assert [p.path for p in raised.value.problems] == ["services[1].strategy"]
    publisher.check(set_strategy(intent, Strategy.MAGLEV, service="web"))
    assert cache.snapshot is None


# ---- resources -----------------------------------------------------------------------


def test_grpc_service_gets_an_api_listener_and_its_route_configuration() -> None:
    """LDS: a listener named after the service holding an HCM (RDS over ADS,
    the router last); RDS: one virtual host matching the target's name."""
    resources = translate(intent_of(http_service(), grpc_service()))
    assert sorted(resources[LISTENER]) == ["greeter", "router"]
    listener = resources[LISTENER]["greeter"]
    assert isinstance(listener, listener_pb2.Listener)
    assert not listener.HasField("address") and not listener.filter_chains
    hcm = hcm_pb2.HttpConnectionManager()
    assert listener.api_listener.api_listener.Unpack(hcm)
    assert hcm.rds.route_config_name == "greeter" and hcm.rds.config_source.HasField("ads")
    assert [f.name for f in hcm.http_filters][-1] == ROUTER_FILTER
    config = resources[ROUTE]["greeter"]
    assert isinstance(config, route_pb2.RouteConfiguration)
    [virtual_host] = config.virtual_hosts
    assert list(virtual_host.domains) == ["greeter"]
    [route] = virtual_host.routes
    assert (route.match.prefix, route.route.cluster) == ("/", "greeter")
    assert route.route.retry_policy.retry_on == "unavailable"
    build_snapshot(resources, 1)  # consistent: every name referenced exists


def test_grpc_endpoints_have_weighted_named_localities() -> None:
    """gRPC drops a locality without a weight and NACKs one without a
    locality; HTTP services keep their plain assignments."""
    backends = grpc_service()["backends"]
    backends[1]["priority"] = 3
    resources = translate(intent_of(http_service(), grpc_service(backends=backends)))
    assignment = resources[ENDPOINT]["greeter"]
    assert isinstance(assignment, endpoint_pb2.ClusterLoadAssignment)
    assert [
        (g.priority, g.locality.sub_zone, g.load_balancing_weight.value)
        for g in assignment.endpoints
    ] == [(0, "priority-0", 1), (1, "priority-1", 1)]
    web = resources[ENDPOINT]["web"]
    assert isinstance(web, endpoint_pb2.ClusterLoadAssignment)
    assert not web.endpoints[0].HasField("locality")


def test_no_retry_policy_when_retries_are_off() -> None:
    """gRPC NACKs num_retries 0, so max_retries 0 means no retry policy."""
    doc = document(grpc_service())
    doc["router"]["max_retries"] = 0
    config = translate(parse_settings(doc, {}, "test").intent)[ROUTE]["greeter"]
    assert isinstance(config, route_pb2.RouteConfiguration)
    assert not config.virtual_hosts[0].routes[0].route.HasField("retry_policy")


def grpc_route_of(*services: dict[str, Any], **router: Any) -> Any:
    doc = document(*services)
    doc["router"].update(router)
    config = translate(parse_settings(doc, {}, "test").intent)[ROUTE]["greeter"]
    assert isinstance(config, route_pb2.RouteConfiguration)
    return config.virtual_hosts[0].routes[0].route


def test_the_services_own_request_timeout_caps_the_call_deadline() -> None:
    """gRPC ignores a route's `timeout` (gRFC A31): the service's
    request_timeout, not the router's, goes to max_stream_duration and
    grpc_timeout_header_max, which gRPC reads first; 0 (none) stays 0."""
    action = grpc_route_of(grpc_service(request_timeout=300), request_timeout=15)
    limits = action.max_stream_duration
    assert limits.max_stream_duration.seconds == 300
    assert limits.grpc_timeout_header_max.seconds == 300
    inherited = grpc_route_of(grpc_service(), request_timeout=7.5).max_stream_duration
    assert inherited.max_stream_duration.ToTimedelta().total_seconds() == 7.5
    unlimited = grpc_route_of(grpc_service(request_timeout=0)).max_stream_duration
    assert unlimited.max_stream_duration.ToNanoseconds() == 0


def test_the_services_grpc_retry_conditions_reach_grpc_clients() -> None:
    """gRPC retries only on status codes (gRFC A44): the service's gRPC codes
    make its retry_on; its HTTP-only conditions (for Envoy's routes of the
    service) are left out, and with none left no policy is sent at all."""
    codes = ["resource-exhausted", "5xx", "unavailable", "503", "cancelled"]
    action = grpc_route_of(grpc_service(retry_on=codes))
    assert action.retry_policy.retry_on == "resource-exhausted,unavailable,cancelled"
    assert not action.retry_policy.retriable_status_codes
    assert grpc_route_of(grpc_service()).retry_policy.retry_on == "unavailable"
    http_only = grpc_route_of(grpc_service(retry_on=["5xx", "reset"]))
    assert not http_only.HasField("retry_policy")


def test_a_grpc_backends_weight_in_the_file_is_refused_at_its_path() -> None:
    """A weight other than 1 on a gRPC service's backend could not take effect
    (its endpoints are published with weight 1): the file refuses it with the
    field path, as the admin API does; weight 1 and an HTTP service's weight
    pass, and an invalid protocol or weight is reported only once, as itself."""
    backends = grpc_service()["backends"]
    backends[0]["weight"] = 1
    backends[1]["weight"] = 5
    found = problems(document(http_service(), grpc_service(backends=backends)))
    assert list(found) == ["services[1].backends[1].weight"]
    assert (
        "weight 5 cannot take effect in gRPC service 'greeter'"
        in found["services[1].backends[1].weight"]
    )
    web = http_service()
    web["backends"][0]["weight"] = 5
    assert intent_of(web).services[0].backends[0].weight == 5
    backends[1]["weight"] = 0
    assert list(problems(document(grpc_service(backends=backends)))) == [
        "services[0].backends[1].weight"
    ]
    assert (
        "1 and"
        in problems(document(grpc_service(backends=backends)))["services[0].backends[1].weight"]
    )


def test_a_stored_grpc_weight_is_published_as_weight_1_with_a_warning() -> None:
    """An intent stored before the rule (Redis) may carry such a weight: it stays
    publishable, the weight is ignored (weight 1), and ignored_grpc_weights says
    where, for the store's warning."""
    intent = intent_of(http_service(), grpc_service())
    [web, greeter] = intent.services
    heavy = dataclasses.replace(greeter.backends[1], weight=5)
    stored = dataclasses.replace(
        intent, services=(web, dataclasses.replace(greeter, backends=(greeter.backends[0], heavy)))
    )
    resources = translate(stored)
    assignment = resources[ENDPOINT]["greeter"]
    assert isinstance(assignment, endpoint_pb2.ClusterLoadAssignment)
    weights = [e.load_balancing_weight.value for g in assignment.endpoints for e in g.lb_endpoints]
    assert set(weights) <= {0, 1}
    [ignored] = ignored_grpc_weights(stored)
    assert ignored.path == "services[1].backends[1].weight"
    assert "weight 5" in ignored.message
    assert ignored_grpc_weights(intent) == []
