"""Rules on the intent as a whole, shared by the config file, the admin API and
the translator (which refuses to publish an intent that breaks them).

The gRPC rules: what proxyless gRPC clients would NACK or silently mishandle.
Source: grpc/grpc doc/grpc_xds_features.md ("xDS Features in gRPC"): C++/Python
clients implement ROUND_ROBIN and RING_HASH (gRFC A42) and NACK any other
lb_policy; LEAST_REQUEST (gRFC A48) is grpc-java only; "the optional
load_balancing_weight is always ignored" under round robin.
"""

from __future__ import annotations

from xds_server.errors import ConfigError, Problem
from xds_server.model.intent import Intent, Protocol, Service, Strategy
from xds_server.resources import LISTENER_NAME

GRPC_STRATEGIES = frozenset({Strategy.ROUND_ROBIN, Strategy.RING_HASH})
_UNSUPPORTED: dict[Strategy, str] = {
    Strategy.LEAST_CONNECTIONS: (
        "gRPC C++/Python clients NACK lb_policy LEAST_REQUEST (only grpc-java implements it)"
    ),
    Strategy.RANDOM: "gRPC clients NACK lb_policy RANDOM",
    Strategy.MAGLEV: "gRPC clients NACK lb_policy MAGLEV",
    Strategy.WEIGHTED: (
        "gRPC round robin ignores endpoint weights, so the weights would be silently dropped"
    ),
}


# TLS is per backend in Envoy's cluster (translate/upstream_tls.py); gRPC clients
# take security only from their xDS credentials and would ignore it.
GRPC_TLS = (
    "not supported on a grpc service's backends: its cluster is also served to "
    "proxyless gRPC clients, which would ignore it and connect in plaintext"
)


def grpc_weight_problem(service: Service, weight: int) -> str | None:
    """Why a backend of `service` cannot have `weight`, or None if it can. A gRPC
    service's endpoints are all published with weight 1 (translate/grpc.py): under
    round robin gRPC ignores weights anyway, and `weighted` is refused."""
    if service.protocol is not Protocol.GRPC or weight == 1:
        return None
    return (
        f"weight {weight} cannot take effect in gRPC service {service.name!r}: its "
        f"endpoints are published with weight 1, because {_UNSUPPORTED[Strategy.WEIGHTED]}"
    )


def ignored_grpc_weights(intent: Intent) -> list[Problem]:
    """Every gRPC backend weight other than 1, with its path. Not a grpc_problems
    entry: the config file and the admin API refuse such a weight, but an intent
    stored (Redis) before they did must stay publishable; its weight is simply
    not published (translate/grpc.py), and the store warns (store/redis.py)."""
    return [
        Problem(f"services[{i}].backends[{j}].weight", problem)
        for i, service in enumerate(intent.services)
        for j, backend in enumerate(service.backends)
        if (problem := grpc_weight_problem(service, backend.weight)) is not None
    ]


def grpc_problems(intent: Intent) -> list[Problem]:
    """Every reason a gRPC client would NACK or mishandle the intent, with its path."""
    problems: list[Problem] = []
    for index, service in enumerate(intent.services):
        if service.protocol is Protocol.GRPC:
            problems.extend(_service_problems(intent, index, service))
    return problems


def _service_problems(intent: Intent, index: int, service: Service) -> list[Problem]:
    path = f"services[{index}]"
    problems = []
    strategy = intent.strategy_of(service)
    if strategy not in GRPC_STRATEGIES:
        inherited = " (the default, router.strategy)" if service.strategy is None else ""
        message = (
            f"{strategy}{inherited} cannot serve gRPC service {service.name!r}: "
            f"{_UNSUPPORTED[strategy]}; use round_robin or ring_hash"
        )
        problems.append(Problem(f"{path}.strategy", message))
    if service.name == LISTENER_NAME:
        message = (
            f"{service.name!r} is the Envoy listener's name, and a gRPC service's "
            "listener is named after the service"
        )
        problems.append(Problem(f"{path}.name", message))
    problems += [
        Problem(f"{path}.backends[{j}].tls", GRPC_TLS)
        for j, backend in enumerate(service.backends)
        if backend.tls is not None
    ]
    return problems


def check_grpc(intent: Intent) -> None:
    """Raise ConfigError listing every grpc_problems entry, if any."""
    problems = grpc_problems(intent)
    if problems:
        raise ConfigError(problems)
