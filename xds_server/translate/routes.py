"""Intent -> the RouteConfiguration (RDS) behind the router listener.

Every service prefix routes to the service's cluster with the spec's retry
policy; the controller's own API prefix routes to the admin cluster without
retries (its calls are not idempotent), unless the intent keeps the admin API
off the listener (router.admin_via_listener: false). The overall health summary
(GET /api/v1/health) is routed either way: it changes nothing, and it is what a
load balancer in front of the router probes. The OpenAI front door's routes
(translate/openai.py) come right after the admin routes.

Timeouts and retries are per service (an LLM streams for minutes, a vector search
answers in milliseconds): `timeout` bounds the whole request (0: none),
`idle_timeout` ends a stream silent that long in both directions, and overrides the
listener's stream_idle_timeout for the route. No per_try_timeout is ever set, and
Envoy's router retries only before it started the downstream response, so a
generation the client has begun to read is never run twice (docs/envoy-notes.md,
"Retries and streamed answers").
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import (
    previous_priorities_config_pb2,
)
from google.protobuf import wrappers_pb2

from xds_server.model.intent import Intent, Policies, Service
from xds_server.resources import (
    ADMIN_CLUSTER,
    ADMIN_PREFIX,
    CLIENT_ADDRESS_HEADER,
    OVERALL_HEALTH_PATH,
    ROUTE_CONFIG_NAME,
)
from xds_server.translate.common import duration, packed
from xds_server.translate.memo import Memo
from xds_server.translate.openai import front_door_routes

# What a retry is for: a refused or reset connection and any 5xx. Together with
# the previous-host predicate this is what made a SIGKILLed backend cost no
# request in the measurements of docs/envoy-notes.md.
RETRY_ON = "connect-failure,refused-stream,reset,5xx"
RETRIABLE_STATUS_CODES = "retriable-status-codes"
HOST_SELECTION_ATTEMPTS = 5
ADMIN_TIMEOUT_S = 120.0


def route_configurations(
    intent: Intent,
    per_service: Memo[list[tuple[str, rc_pb2.Route]]],
    memo: Memo[route_pb2.RouteConfiguration],
) -> dict[str, route_pb2.RouteConfiguration]:
    """Each service's routes are remembered on (service, policies); the whole
    configuration on the routes themselves, so a change to a service that
    leaves its routes equal (a backend's weight or port) reuses it."""
    retry_buffer = intent.edge.request_body_buffer_limit_bytes
    by_service = tuple(
        per_service.get(
            s.name,
            (s, intent.policies, retry_buffer),
            functools.partial(service_routes, s, intent.policies, retry_buffer),
        )
        for s in intent.services
    )
    admin_api = intent.admin_via_listener
    # The OpenAI front door's routes use the RouteActions of the services that
    # declare models (translate/openai.py).
    with_models = tuple(s for s in intent.services if s.models)
    front_door = functools.partial(
        front_door_routes,
        with_models,
        functools.partial(route_action, policies=intent.policies),
        retry_buffer,
    )
    build = functools.partial(route_configuration, by_service, front_door, admin_api=admin_api)
    arguments = (by_service, with_models, intent.policies, retry_buffer, admin_api)
    return {ROUTE_CONFIG_NAME: memo.get(ROUTE_CONFIG_NAME, arguments, build)}


def route_configuration(
    by_service: Iterable[list[tuple[str, rc_pb2.Route]]],
    front_door: Callable[[], list[rc_pb2.Route]] = list,
    *,
    admin_api: bool = True,
) -> route_pb2.RouteConfiguration:
    return route_pb2.RouteConfiguration(
        name=ROUTE_CONFIG_NAME,
        virtual_hosts=[
            rc_pb2.VirtualHost(
                name=ROUTE_CONFIG_NAME,
                domains=["*"],
                routes=routes(by_service, front_door(), admin_api),
            )
        ],
    )


def service_routes(
    service: Service, policies: Policies, retry_buffer: int
) -> list[tuple[str, rc_pb2.Route]]:
    """(prefix, route) for every prefix of the service."""
    return [
        (prefix, service_route(prefix, service, policies, retry_buffer))
        for prefix in service.routes
    ]


def routes(
    by_service: Iterable[list[tuple[str, rc_pb2.Route]]],
    front_door: Iterable[rc_pb2.Route] = (),
    admin_api: bool = True,
) -> list[rc_pb2.Route]:
    """Envoy takes the first match, so longer prefixes go first. The front
    door's exact paths come before every prefix."""
    ordered = sorted(
        (pair for pairs in by_service for pair in pairs),
        key=lambda pair: (-len(pair[0]), pair[0]),
    )
    return [*admin_routes(admin_api), *front_door, *(route for _, route in ordered)]


def admin_routes(admin_api: bool = True) -> list[rc_pb2.Route]:
    # Envoy's default route timeout (15 s) would cut off the resilience
    # experiments, which may run up to a minute plus their restore steps; the
    # same bound replaces the listener's stream idle timeout (router.edge), which
    # an experiment's quiet minute must not depend on.
    to_admin = rc_pb2.RouteAction(
        cluster=ADMIN_CLUSTER,
        timeout=duration(ADMIN_TIMEOUT_S),
        idle_timeout=duration(ADMIN_TIMEOUT_S),
    )
    health = admin_route(rc_pb2.RouteMatch(path=OVERALL_HEALTH_PATH), to_admin)
    if not admin_api:
        return [health]
    return [admin_route(rc_pb2.RouteMatch(prefix=ADMIN_PREFIX), to_admin), health]


def admin_route(match: rc_pb2.RouteMatch, to_admin: rc_pb2.RouteAction) -> rc_pb2.Route:
    """The client's address as Envoy determined it (the peer, or the trusted
    X-Forwarded-For entry with router.edge.xff_num_trusted_hops), replacing
    whatever the client sent under that name. X-Forwarded-For itself cannot tell
    the controller: for a client on Envoy's own host Envoy appends its host's
    address, not the loopback one (docs/envoy-notes.md, "Edge settings")."""
    client = base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(
            key=CLIENT_ADDRESS_HEADER, value="%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"
        ),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )
    return rc_pb2.Route(match=match, route=to_admin, request_headers_to_add=[client])


def service_route(
    prefix: str, service: Service, policies: Policies, retry_buffer: int
) -> rc_pb2.Route:
    """`retry_buffer`: the bytes of a request body kept for its retries
    (router.edge.request_body_buffer_limit_bytes); without it Envoy keeps only
    the listener's connection buffer, and would not retry a larger body."""
    return rc_pb2.Route(
        match=rc_pb2.RouteMatch(prefix=prefix),
        request_body_buffer_limit=wrappers_pb2.UInt64Value(value=retry_buffer),
        route=route_action(service, policies),
    )


def route_action(service: Service, policies: Policies) -> rc_pb2.RouteAction:
    """How a request for `service` is sent, whichever route matched it."""
    action = rc_pb2.RouteAction(
        cluster=service.name,
        # A zero duration is Envoy's "no timeout" for both.
        timeout=duration(policies.request_timeout_of(service)),
        retry_policy=retry_policy(service, policies),
        # Only ring_hash and maglev read it; other policies ignore it, so a
        # strategy switch changes clusters only.
        hash_policy=[
            rc_pb2.RouteAction.HashPolicy(
                header=rc_pb2.RouteAction.HashPolicy.Header(header_name=service.hash_header)
            )
        ],
    )
    idle = policies.idle_timeout_of(service)
    if idle is not None:
        action.idle_timeout.CopyFrom(duration(idle))
    return action


def retry_conditions(service: Service) -> tuple[str, list[int]]:
    """(Envoy's retry_on text, retriable_status_codes) of a service."""
    if service.retry_on is None:
        return RETRY_ON, []
    names = [c for c in service.retry_on if not c.isdigit()]
    codes = sorted({int(c) for c in service.retry_on if c.isdigit()})
    if codes and RETRIABLE_STATUS_CODES not in names:
        names.append(RETRIABLE_STATUS_CODES)
    return ",".join(dict.fromkeys(names)), codes


def retry_policy(service: Service, policies: Policies) -> rc_pb2.RetryPolicy:
    retry_on, status_codes = retry_conditions(service)
    policy = rc_pb2.RetryPolicy(
        retry_on=retry_on,
        retriable_status_codes=status_codes,
        num_retries=wrappers_pb2.UInt32Value(value=policies.max_retries),
        retry_back_off=rc_pb2.RetryPolicy.RetryBackOff(
            base_interval=duration(policies.retry_delay_s)
        ),
        retry_host_predicate=[
            rc_pb2.RetryPolicy.RetryHostPredicate(
                name="envoy.retry_host_predicates.previous_hosts",
                typed_config=packed(previous_hosts_pb2.PreviousHostsPredicate()),
            )
        ],
        host_selection_retry_max_attempts=HOST_SELECTION_ATTEMPTS,
    )
    if len({b.priority for b in service.backends}) > 1:
        # Primary and secondary sit in different priorities: a retry must leave
        # the failed priority too, or it lands on the dead primary again.
        policy.retry_priority.CopyFrom(
            rc_pb2.RetryPolicy.RetryPriority(
                name="envoy.retry_priorities.previous_priorities",
                typed_config=packed(
                    previous_priorities_config_pb2.PreviousPrioritiesConfig(update_frequency=1)
                ),
            )
        )
    return policy
