"""Pure edits of the intent: an Intent in, a new Intent out, no I/O.

The admin API, the experiments, the tests and the benchmarks all change the
intent through these functions, so its rules (backend names unique across the
intent, a service keeps at least one backend) hold in one place. An unknown
name raises NotFound and a clash raises Conflict; both name the offending
`field`, which the admin API reports as it is.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from xds_server.errors import Conflict, NotFound
from xds_server.model.intent import Backend, Intent, Service, SocketAddress, Strategy

# ---- finding ---------------------------------------------------------------------------


def service_of(intent: Intent, name: str) -> Service:
    service = intent.service(name)
    if service is None:
        raise NotFound(f"unknown service {name!r}", field="service")
    return service


def backend_of(service: Service, name: str) -> Backend:
    backend = service.backend(name)
    if backend is None:
        raise NotFound(f"service {service.name!r} has no backend {name!r}", field="backend")
    return backend


def find_backend(intent: Intent, name: str) -> Backend | None:
    """The backend called `name` in any service (names are unique across the intent)."""
    return next((b for b in intent.backends() if b.name == name), None)


# ---- services --------------------------------------------------------------------------


def with_service(intent: Intent, name: str, **changes: Any) -> Intent:
    """The intent with service `name`'s fields replaced by `changes`."""
    return _put(intent, dataclasses.replace(service_of(intent, name), **changes))


def _put(intent: Intent, service: Service) -> Intent:
    """The intent with `service` in place of the service of the same name."""
    return dataclasses.replace(
        intent, services=tuple(service if s.name == service.name else s for s in intent.services)
    )


def without_service(intent: Intent, name: str) -> Intent:
    service_of(intent, name)
    return dataclasses.replace(intent, services=tuple(s for s in intent.services if s.name != name))


def with_policies(intent: Intent, **changes: Any) -> Intent:
    return dataclasses.replace(intent, policies=dataclasses.replace(intent.policies, **changes))


def set_strategy(
    intent: Intent, strategy: Strategy, service: str | None = None, hash_header: str | None = None
) -> Intent:
    """`strategy` for one service, or (service None) as the default of every service,
    clearing their own strategies. `hash_header`, if given, is the new hash key."""
    if service is None:
        services = tuple(_with_strategy(s, None, hash_header) for s in intent.services)
        return dataclasses.replace(intent, default_strategy=strategy, services=services)
    return _put(intent, _with_strategy(service_of(intent, service), strategy, hash_header))


def _with_strategy(service: Service, strategy: Strategy | None, hash_header: str | None) -> Service:
    return dataclasses.replace(
        service, strategy=strategy, hash_header=hash_header or service.hash_header
    )


# ---- backends --------------------------------------------------------------------------


def add_backend(intent: Intent, service_name: str, backend: Backend) -> Intent:
    """Backend names are unique across the intent: they key Envoy's per-host stats."""
    service = service_of(intent, service_name)
    owner = next((s for s in intent.services if s.backend(backend.name)), None)
    if owner is not None:
        detail = f"backend name {backend.name!r} is taken (service {owner.name!r})"
        raise Conflict(detail, field="name")
    if any((b.address, b.port) == (backend.address, backend.port) for b in service.backends):
        where = f"{backend.address}:{backend.port}"
        raise Conflict(f"service {service_name!r} already has a backend at {where}", field="port")
    return with_service(intent, service_name, backends=(*service.backends, backend))


def update_backend(intent: Intent, service_name: str, backend_name: str, **changes: Any) -> Intent:
    """The intent with one backend's fields (weight, priority, draining, port...) replaced."""
    service = service_of(intent, service_name)
    updated = dataclasses.replace(backend_of(service, backend_name), **changes)
    backends = tuple(updated if b.name == backend_name else b for b in service.backends)
    return with_service(intent, service_name, backends=backends)


def remove_backend(intent: Intent, service_name: str, backend_name: str) -> Intent:
    """The last backend stays: a service without backends is refused by the config file too."""
    service = service_of(intent, service_name)
    backend_of(service, backend_name)
    if len(service.backends) == 1:
        detail = f"{backend_name!r} is the last backend of {service_name!r}"
        raise Conflict(detail, field="backend")
    backends = tuple(b for b in service.backends if b.name != backend_name)
    return with_service(intent, service_name, backends=backends)


# ---- compare-and-swap edits ----------------------------------------------------------------
# An experiment's temporary change, and its undoing, touch only what the
# experiment changes, and only while that still holds the value the experiment
# expects: whatever someone else changed meanwhile (a config reload, another
# replica) stays as they left it (experiments/__init__.py).


def swap_address(intent: Intent, name: str, old: SocketAddress, new: SocketAddress) -> Intent:
    """Backend `name` at `new`, if it is still at `old`; its other fields (weight,
    priority, draining...) as they are now."""
    services = tuple(
        dataclasses.replace(
            s,
            backends=tuple(
                dataclasses.replace(b, address=new.host, port=new.port)
                if b.name == name and (b.address, b.port) == (old.host, old.port)
                else b
                for b in s.backends
            ),
        )
        for s in intent.services
    )
    return dataclasses.replace(intent, services=services)


def swap_ejection_time(intent: Intent, old: float, new: float) -> Intent:
    """`new` as the circuit breaker's ejection time, if it still is `old`."""
    if intent.policies.circuit_breaker_timeout_s != old:
        return intent
    return with_policies(intent, circuit_breaker_timeout_s=new)
