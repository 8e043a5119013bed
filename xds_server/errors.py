"""The one exception tree of xds-server.

    XdsServerError
    ├── ConfigError           settings or intent are invalid; carries every problem
    ├── InvalidValue          one value is wrong (also a ValueError); checks turn it into a Problem
    ├── InconsistentSnapshot  a snapshot references resources it does not hold
    ├── NotFound              an admin operation names an unknown service or backend
    ├── Conflict              an operation clashes with the current state
    ├── DependencyUnavailable a store or other dependency cannot be reached
    │   ├── NotStored         the store refused or could not take a write: nothing was stored
    │   └── OutcomeUnknown    a write was sent and its answer never came: it may be stored
    ├── AddressUnavailable    a server cannot listen on its configured address (e.g. taken)
    ├── ProtocolError         an xDS client broke the protocol; its stream ends INVALID_ARGUMENT
    │   └── LimitExceeded     xds/limits.py: a client passed a cap; stream ends RESOURCE_EXHAUSTED
    ├── NodeNotAuthorized     xds/identity.py: a node its client certificate does not name;
    │                         PERMISSION_DENIED
    ├── StreamReplaced        xds/stream.py: a newer stream of the node took over; ABORTED
    ├── TlsFilesUnusable      pemfiles.py: a certificate, key or CA file (router.xds_tls, .tls)
    ├── AdminAnswerTooLarge   telemetry/envoy_stats.py: an Envoy admin answer over the cap
    ├── LeaseLost             another replica holds the prober lease; this one stops probing
    ├── ListenFailed          no socket could be bound to serve on (also an OSError)
    ├── ApiError              admin/errors.py: an admin request refused with its HTTP status
    ├── ProcessFailed         proxy/processes.py: a child did not become ready, or exited
    ├── EnvoyNotFound         proxy/envoy_process.py: no Envoy binary could be located
    └── EnvoyFailed           proxy/envoy_process.py: Envoy rejected its bootstrap or never got LIVE

NotFound and Conflict may name the input they are about (`field`, e.g.
"service"); the admin API answers it as the error's `field`.

The classes named with a module live there, next to what they carry; the others
live here. gRPC status codes are chosen only in the xDS layer and HTTP status
codes only in the admin layer; both map from these classes. Anything else that
reaches either layer is a bug: it is logged with its traceback and answered as an
internal error.
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


class InvalidValue(XdsServerError, ValueError):
    """A single value is wrong; the message says how. Caught and turned into a Problem.

    Raised by the converters of xds_server/model/values.py, which the field types
    of model/fields.py wrap for the config file and the admin API's bodies alike,
    so the file and the API cannot disagree. A ValueError as well, for callers
    that also use float()."""


class LookupFailed(XdsServerError):
    """A DNS name did not resolve (no such name, no answer in time, no server);
    the message says why. xds_server/dns/ keeps the last good addresses."""


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
    """A dependency (the store) cannot be reached; nothing was changed (but see
    OutcomeUnknown)."""


class NotStored(DependencyUnavailable):
    """A write the store did not take, for certain: it was never sent, Redis refused
    it, or it arrived after its deadline (store/redis.py). Safe to retry as is."""


class OutcomeUnknown(DependencyUnavailable):
    """A write was sent to the store and no answer came within the bound: it may or
    may not have been stored. `revision` is the store revision it would have made;
    read the state back before retrying."""

    def __init__(self, detail: str, revision: int) -> None:
        super().__init__(detail)
        self.revision = revision


class ProtocolError(XdsServerError):
    """The xDS client broke the protocol; the stream ends with INVALID_ARGUMENT."""


class LeaseLost(XdsServerError):
    """The fenced write found another prober: this replica stops probing."""


class ListenFailed(XdsServerError, OSError):
    """No socket could be bound. An OSError too, like the one a taken port raises."""


class AddressUnavailable(XdsServerError):
    """A server (the admin API, the xDS server, Envoy's listener) cannot listen
    on its address, e.g. because another program holds it. `setting` names the
    configuration key that chooses the address."""

    def __init__(self, server: str, address: object, reason: str, setting: str) -> None:
        self.address = str(address)
        super().__init__(f"{server} cannot listen on {address} ({setting}): {reason}")
