"""Rules across fields of router_config.yaml, checked on whatever part of a document is valid.

They run in the same pass as the field checks (model/schema.py), so one run of
`xds-server validate` lists a bad port and a duplicate route and a gRPC
service's unusable strategy together. Each rule reads only values that are
valid on their own and skips what is missing or bad (that has its own problem).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from xds_server.errors import InvalidValue
from xds_server.model.fields import (
    MODEL,
    NAME,
    PROTOCOL,
    ROUTE,
    STRATEGY,
    WEIGHT,
    Rule,
    not_a_list,
)
from xds_server.model.intent import Intent, Protocol, Service
from xds_server.model.rules import grpc_problems, grpc_weight_problem
from xds_server.model.validation import MISSING, Loc, Located, loc_of, path_of
from xds_server.model.values import is_ip
from xds_server.settings.environment import Router


def router_problems(router: Router) -> list[Located]:
    """Each problem blames where the offending value came from: the file's key, or
    the ROUTER_* variable that overrode it."""
    found: list[Located] = []
    values = router.values
    interval, timeout = values.health_check_interval, values.health_check_timeout
    if _known(router, "health_check_interval", "health_check_timeout") and timeout >= interval:
        message = f"must be less than health_check_interval ({interval:g}), got {timeout:g}"
        found.append(Located(router.loc_of("health_check_timeout"), message))
    # A token-less admin API may only be reachable from this host.
    found += _needs_on_a_reachable_address(router, "admin_address", "admin_token")
    # An xDS port others can reach hands configuration to anyone who asks and
    # believes any node id (docs/xds-protocol.md rule 34): TLS or loopback only.
    found += _needs_on_a_reachable_address(router, "xds_address", "xds_tls")
    found += _listener_rule(router) + _stream_idle_rule(router)
    return found


def _needs_on_a_reachable_address(router: Router, address: str, guard: str) -> list[Located]:
    """`guard` (a token, TLS) is required once `address` is not loopback; the
    problem names both, and where the address came from."""
    if not _known(router, address, guard) or getattr(router.values, guard) is not None:
        return []
    bound = getattr(router.values, address)
    if _is_loopback(bound.host):
        return []
    where = path_of(router.loc_of(address))
    message = f"required when {address} is not loopback ({bound}, from {where})"
    return [Located(router.loc_of(guard), message)]


def _listener_rule(router: Router) -> list[Located]:
    """Envoy forwards the admin API from every client that reaches the listener, and
    the controller sees each such call coming from Envoy: a listener other clients can
    reach needs the token too, unless it routes no admin path."""
    values = router.values
    keys = ("listen_address", "admin_via_listener", "admin_token")
    if not _known(router, *keys) or values.admin_token is not None:
        return []
    if not values.admin_via_listener or _is_loopback(values.listen_address.host):
        return []
    where = path_of(router.loc_of("listen_address"))
    via = path_of(router.loc_of("admin_via_listener"))
    message = (
        f"required when listen_address is not loopback ({values.listen_address}, from {where}) "
        f"and the admin API is routed through the listener ({via}: true; "
        "false keeps it off the listener)"
    )
    return [Located(router.loc_of("admin_token"), message)]


def _stream_idle_rule(router: Router) -> list[Located]:
    """Envoy's stream idle timer also runs while a request waits for its response: one
    shorter than the route timeout would cut a slow answer that request_timeout allows."""
    idle, whole = router.values.edge.stream_idle_timeout, router.values.request_timeout
    if not _known(router, "edge.stream_idle_timeout", "request_timeout") or idle >= whole:
        return []
    message = f"must be at least request_timeout ({whole:g}), got {idle:g}"
    return [Located(router.loc_of("edge.stream_idle_timeout"), message)]


def _known(router: Router, *keys: str) -> bool:
    return not router.unknown.intersection(keys)


def _is_loopback(host: str) -> bool:
    # Addresses are IP literals (model/values.py to_ip_socket_address).
    return is_ip(host) and ipaddress.ip_address(host).is_loopback


def service_problems(document: object, router: Router) -> list[Located]:
    """Routes by protocol, unique names and routes, and the gRPC rules."""
    raw = document.get("services") if isinstance(document, dict) else None
    items = list(enumerate(raw)) if isinstance(raw, list) else []
    services = [(i, item) for i, item in items if isinstance(item, dict)]
    found = [f for i, item in services for f in _routes_rule(i, item)]
    found += [f for i, item in services for f in _grpc_weight_rule(i, item)]
    found += _duplicates(services)
    return found + _grpc_problems(dict(services), len(items), router)


def _routes_rule(index: int, item: Mapping[str, Any]) -> list[Located]:
    """A gRPC service may have no routes (`[]` or none): only proxyless gRPC
    clients reach it then, not Envoy."""
    if _valid(PROTOCOL, item, "protocol") is Protocol.GRPC:
        return []
    loc = ("services", index, "routes")
    if "routes" not in item:
        return [Located(loc, "required (only grpc services may omit it)", MISSING)]
    if item["routes"] == []:
        return [Located(loc, not_a_list("path prefixes", []))]
    return []


def _grpc_weight_rule(index: int, item: Mapping[str, Any]) -> list[Located]:
    """A gRPC backend's valid weight other than 1 could not take effect: refused
    here and by the admin API, not by the translator (model/rules.py,
    ignored_grpc_weights: an intent stored before stays publishable)."""
    if _valid(PROTOCOL, item, "protocol") is not Protocol.GRPC:
        return []
    service = _stand_in(item)
    found = []
    for j, backend in _listed(item.get("backends")):
        weight = _valid(WEIGHT, backend, "weight") if isinstance(backend, dict) else None
        problem = None if weight is None else grpc_weight_problem(service, weight)
        if problem is not None:
            found.append(Located(("services", index, "backends", j, "weight"), problem))
    return found


def _duplicates(services: Sequence[tuple[int, Mapping[str, Any]]]) -> list[Located]:
    first: dict[tuple[str, str], Loc] = {}
    found: list[Located] = []
    for loc, kind, value in (claim for i, item in services for claim in _claims(i, item)):
        seen = first.setdefault((kind, value), loc)
        if seen != loc:
            found.append(Located(loc, f"duplicate {kind} {value!r} (first at {path_of(seen)})"))
    return found


def _claims(index: int, item: Mapping[str, Any]) -> Iterator[tuple[Loc, str, str]]:
    """Names, routes and model ids that must be unique across the document, where valid.
    Backend names too: a backend's name is its Envoy endpoint hostname and stats key."""
    at: Loc = ("services", index)
    name = _valid(NAME, item, "name")
    if name is not None:
        yield (*at, "name"), "service name", name
    for j, raw in _listed(item.get("routes")):
        route = _checked(ROUTE, raw)
        if route is not None:
            yield (*at, "routes", j), "route", route
    for j, backend in _listed(item.get("backends")):
        backend_name = _valid(NAME, backend, "name") if isinstance(backend, dict) else None
        if backend_name is not None:
            yield (*at, "backends", j, "name"), "backend name", backend_name
    # A model id picks one service on the OpenAI front door (translate/openai.py).
    for j, raw in _listed(item.get("models")):
        model = _checked(MODEL, raw)
        if model is not None:
            yield (*at, "models", j), "model", model


def _grpc_problems(
    services: dict[int, Mapping[str, Any]], count: int, router: Router
) -> list[Located]:
    """grpc_problems (the intent's rule, which the translator checks too) on a stand-in intent: one
    service per document item, whatever of it is valid; a strategy rule is
    dropped where the effective strategy is not known."""
    stand_ins = [_stand_in(services.get(i, {})) for i in range(count)]
    intent = Intent(services=tuple(stand_ins), default_strategy=router.values.strategy)
    unsure = {
        f"services[{i}].strategy"
        for i, item in services.items()
        if _strategy_unknown(item, "strategy" in router.unknown)
    }
    return [
        Located(loc_of(p.path), p.message) for p in grpc_problems(intent) if p.path not in unsure
    ]


def _stand_in(item: Mapping[str, Any]) -> Service:
    return Service(
        name=_valid(NAME, item, "name") or str(item.get("name", "?")),
        routes=(),
        backends=(),
        strategy=_valid(STRATEGY, item, "strategy"),
        protocol=_valid(PROTOCOL, item, "protocol") or Protocol.HTTP,
    )


def _strategy_unknown(item: Mapping[str, Any], default_unknown: bool) -> bool:
    if "strategy" in item:
        return _valid(STRATEGY, item, "strategy") is None
    return default_unknown


def _valid(rule: Rule, item: Mapping[str, Any], key: str) -> Any:
    """The checked value of item[key], or None when it is absent or bad."""
    return _checked(rule, item[key]) if key in item else None


def _checked(rule: Rule, value: object) -> Any:
    try:
        return rule.convert(value)
    except InvalidValue:
        return None


def _listed(raw: object) -> Iterator[tuple[int, object]]:
    return enumerate(raw) if isinstance(raw, list) else iter(())
