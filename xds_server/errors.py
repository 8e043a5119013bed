"""The one exception tree of xds-server.

    XdsServerError
    ├── ConfigError          settings or intent are invalid; carries every problem
    ├── InconsistentSnapshot a snapshot references resources it does not hold
    ├── NotFound             an admin operation names an unknown service or backend
    ├── Conflict             an operation clashes with the current state
    ├── DependencyUnavailable a store or other dependency cannot be reached
    └── AddressUnavailable   a server cannot listen on its address (e.g. taken)

NotFound and Conflict may name the input they are about (`field`, e.g.
"service"); the admin API answers it as the error's `field`.

gRPC status codes are chosen only in the xDS layer and HTTP status codes only in
the admin layer; both map from these classes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One validation problem: where (a dotted field path) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class XdsServerError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(XdsServerError):
    """Invalid settings or intent. Lists every problem, never only the first."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class InconsistentSnapshot(XdsServerError):
    """A snapshot names a resource it does not contain (docs/xds-protocol.md rule 25)."""


class _FieldError(XdsServerError):
    """An error about one named input; `field` says which (e.g. "service")."""

    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.field = field


class NotFound(_FieldError):
    """An unknown service, backend or proxy."""


class Conflict(_FieldError):
    """The request clashes with the current state (e.g. a duplicate name)."""


class DependencyUnavailable(XdsServerError):
    """A dependency (the store) cannot be reached; nothing was changed."""


class AddressUnavailable(XdsServerError):
    """A server (the admin API, the xDS server, Envoy's listener) cannot listen
    on its address, e.g. because another program holds it. `setting` names the
    configuration key that chooses the address."""

    def __init__(self, server: str, address: object, reason: str, setting: str) -> None:
        self.address = str(address)
        super().__init__(f"{server} cannot listen on {address} ({setting}): {reason}")
