"""Value converters: the rules of single values, shared by the config file and the admin API.

Each converter takes a parsed YAML (or JSON) value and returns the typed value,
or raises InvalidValue with a message that says how it is wrong. The field
types of model/fields.py wrap them, so the config file's models and the admin
API's body models check a value alike and cannot disagree on a limit or a
message. The `*_from_text` readers turn a `ROUTER_*` environment string into
the YAML-like value a converter takes.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from xds_server.errors import InvalidValue
from xds_server.model.access_log import EXPECTED as ACCESS_LOG_EXPECTED
from xds_server.model.access_log import AccessLog, AccessLogSink, path_problem
from xds_server.model.intent import Backend, Protocol, SocketAddress, Strategy

# Paths Envoy sends to the controller; a service route there would hijack them.
RESERVED_ROUTE_PREFIX = "/api/v1/router/"
RESERVED_ROUTES = frozenset({"/api/v1/router", "/api/v1/health"})

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
# An OpenAI-style model id as clients send it ("phi3", "gpt-4o-mini",
# "meta-llama/Llama-3-8B", "phi3:mini"): printable ASCII without spaces or
# quotes, so it sits unescaped in Envoy matchers and JSON bodies.
MODEL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}")
HOST_LABEL_PATTERN = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")  # RFC 1123, lower case
MAX_HOST_NAME = 253
# The same rule for JSON Schema (any case; the converter lowers it), and what
# makes a dotted number no name: its last label is all digits.
HOST_NAME_SCHEMA_PATTERN = (
    r"^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"
)
NUMERIC_LAST_LABEL_PATTERN = r"(^|\.)[0-9]+$"
HEADER_PATTERN = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")  # RFC 9110 token, lower case
FLAGS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
MAX_WEIGHT = 1_000_000
# Envoy's LocalityLbEndpoints.priority is a uint32.
MAX_PRIORITY = 2**32 - 1
# A year: far beyond any request, and well inside protobuf's Duration.
MAX_TIMEOUT_S = 31_536_000
# Envoy's retry_on conditions (x-envoy-retry-on and x-envoy-retry-grpc-on, both
# read from a route's retry_on): https://www.envoyproxy.io/docs/envoy/latest/
# configuration/http/http_filters/router_filter#x-envoy-retry-on
RETRY_CONDITIONS = (
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
)
RETRY_STATUS_CODES = (400, 599)


Convert = Callable[[object], Any]


# --- leaf converters: YAML value -> typed value, or InvalidValue -------------------------


def integer_between(minimum: int, maximum: int | None = None) -> Convert:
    def convert(value: object) -> int:
        # bool is an int subclass; `port: yes` must not become 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidValue(f"must be an integer, got {shown(value)}")
        if value < minimum or (maximum is not None and value > maximum):
            raise InvalidValue(
                f"must be an integer {describe_range(minimum, maximum)}, got {value}"
            )
        return value

    return convert


def number_between(minimum: float, *, inclusive: bool, maximum: float | None = None) -> Convert:
    def convert(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidValue(f"must be a number, got {shown(value)}")
        low_ok = value >= minimum if inclusive else value > minimum
        if not math.isfinite(value) or not low_ok or (maximum is not None and value > maximum):
            bounds = describe_range(minimum, maximum) if inclusive else f"> {minimum:g}"
            raise InvalidValue(f"must be a number {bounds}, got {value}")
        return float(value)

    return convert


def describe_range(minimum: float, maximum: float | None) -> str:
    low = _bound(minimum)
    return f">= {low}" if maximum is None else f"between {low} and {_bound(maximum)}"


def _bound(value: float) -> str:
    # An integer bound in full: 4294967295, not 4.29497e+09.
    return str(value) if isinstance(value, int) else f"{value:g}"


def or_null(convert: Convert) -> Convert:
    """`convert`, with null meaning "not set here" (an inherited default)."""

    def check(value: object) -> Any:
        return None if value is None else convert(value)

    return check


def to_retry_condition(value: object) -> str:
    """An Envoy retry_on condition, or an HTTP status code (retriable_status_codes)."""
    low, high = RETRY_STATUS_CODES
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return str(value)
    if isinstance(value, str) and value in RETRY_CONDITIONS:
        return value
    raise InvalidValue(
        f"{shown(value)} is not an Envoy retry condition: expected one of "
        f"{', '.join(RETRY_CONDITIONS)}, or an HTTP status code {low}-{high}"
    )


def to_flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidValue(f"must be true or false, got {shown(value)}")
    return value


def to_text(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidValue(f"must be a string, got {shown(value)}")
    return value


def to_name(value: object) -> str:
    return _matching(value, NAME_PATTERN, "lower case, up to 63 characters")


def to_model(value: object) -> str:
    return _matching(value, MODEL_PATTERN, "a model id, up to 128 characters")


def _matching(value: object, pattern: re.Pattern[str], what: str) -> str:
    text = to_text(value)
    if not pattern.fullmatch(text):
        raise InvalidValue(f"{text!r} must match {pattern.pattern} ({what})")
    return text


def to_strategy(value: object) -> Strategy:
    allowed = ", ".join(s.value for s in Strategy)
    if not isinstance(value, str) or value not in {s.value for s in Strategy}:
        raise InvalidValue(f"must be one of {allowed}, got {shown(value)}")
    return Strategy(value)


def to_protocol(value: object) -> Protocol:
    allowed = ", ".join(p.value for p in Protocol)
    if not isinstance(value, str) or value not in {p.value for p in Protocol}:
        raise InvalidValue(f"must be one of {allowed}, got {shown(value)}")
    return Protocol(value)


def one_of(choices: type[StrEnum]) -> Convert:
    """A member of `choices`, spelled as its value."""
    allowed = ", ".join(c.value for c in choices)

    def convert(value: object) -> StrEnum:
        if not isinstance(value, str) or value not in {c.value for c in choices}:
            raise InvalidValue(f"must be one of {allowed}, got {shown(value)}")
        return choices(value)

    return convert


def to_access_log(value: object) -> AccessLog:
    """`stdout`, `off` (YAML reads an unquoted off as false: that too) or an
    absolute file path (model/access_log.py)."""
    if value is False or value == AccessLogSink.OFF.value:
        return AccessLog(AccessLogSink.OFF)
    if value == AccessLogSink.STDOUT.value:
        return AccessLog(AccessLogSink.STDOUT)
    if not isinstance(value, str) or not value.strip():
        raise InvalidValue(f"must be {ACCESS_LOG_EXPECTED}, got {shown(value)}")
    problem = path_problem(value)
    if problem is not None:
        raise InvalidValue(f"must be {ACCESS_LOG_EXPECTED}; {value!r} {problem}")
    return AccessLog(AccessLogSink.FILE, value)


def to_header_name(value: object) -> str:
    text = to_text(value)
    if not HEADER_PATTERN.fullmatch(text):
        raise InvalidValue(f"{text!r} is not a lower-case HTTP header name")
    return text


def to_path(value: object) -> str:
    text = to_text(value)
    if not text.startswith("/") or any(c.isspace() or c in "?#" for c in text):
        raise InvalidValue(f"{text!r} must start with '/' and hold no spaces, '?' or '#'")
    return text


def to_route(value: object) -> str:
    text = to_path(value)
    if text.startswith(RESERVED_ROUTE_PREFIX) or text in RESERVED_ROUTES:
        raise InvalidValue(f"{text!r} is reserved for the controller ({RESERVED_ROUTE_PREFIX}*)")
    return text


def to_ip(value: object) -> str:
    """An IP address, not a hostname: Envoy takes no hostnames in EDS endpoints
    or listener addresses (a hostname there would be NACKed)."""
    text = to_text(value)
    if not is_ip(text):
        raise InvalidValue(
            f"{text!r} must be an IPv4 or IPv6 address (Envoy resolves no names here)"
        )
    return text


def to_host(value: object) -> str:
    """A backend's address: an IP literal, or a DNS name the controller resolves
    (xds_server/dns/) before EDS gets the records' addresses. Names are compared
    and probed in lower case; a trailing dot (absolute name) is not taken, as in
    a URL's host it changes what a virtual host sees."""
    text = to_text(value)
    if is_ip(text):
        return text
    name = text.lower()
    problem = host_name_problem(name)
    if problem is not None:
        raise InvalidValue(f"{text!r} is neither an IP address nor a DNS name: {problem}")
    return name


def host_name_problem(name: str) -> str | None:
    """Why `name` is not an RFC 1123 host name (letters, digits and inner hyphens
    per label, labels of 1-63 characters, 253 in all), or None."""
    if not name:
        return "it is empty"
    if name.endswith(".") and name.strip("."):
        # An absolute name: the name is also the Host header, the SNI and the
        # certificate name, where "x.example." and "x.example" differ.
        return f"a trailing dot is not accepted; write {name.rstrip('.')!r}"
    if len(name) > MAX_HOST_NAME:
        return f"longer than {MAX_HOST_NAME} characters"
    underscored = next((label for label in name.split(".") if "_" in label), None)
    if underscored is not None:
        # DNS itself carries '_' (SRV and DKIM labels), host names do not: TLS
        # libraries and Envoy's SNI checks refuse it.
        return (
            f"label {underscored!r} holds '_', which a host name may not (RFC 1123: "
            "letters, digits and inner hyphens only); use a hyphen"
        )
    for label in name.split("."):
        if not HOST_LABEL_PATTERN.fullmatch(label):
            return (
                f"label {label!r} must be 1-63 letters, digits or hyphens, "
                "not starting or ending with a hyphen"
            )
    if name.rsplit(".", 1)[-1].isdigit():
        return "its last label is all digits (an IPv4 address has four numbers)"
    return None


def to_name_server(value: object) -> str:
    """A DNS server the controller asks: `ip` (port 53) or `ip:port` ([v6]:port)."""
    text = to_text(value)
    if is_ip(text):
        return text
    try:
        to_ip_socket_address(text)
    except InvalidValue:
        raise InvalidValue(
            f"{text!r} must be an IP address, or ip:port (IPv6 as [::1]:53)"
        ) from None
    return text


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


HTTP_PORT, HTTPS_PORT = 80, 443


def probe_host(backend: Backend) -> str:
    """The Host an HTTP health check of `backend` sends, as its clients name it: its
    address (an IPv6 literal in brackets), with the port unless it is the scheme's
    default. The controller's probes (health/probe.py) and Envoy's (translate/hds.py)
    send the same, so a virtual host behind a name answers both alike."""
    default = HTTP_PORT if backend.tls is None else HTTPS_PORT
    host = f"[{backend.address}]" if ":" in backend.address else backend.address
    return host if backend.port == default else f"{host}:{backend.port}"


def to_ip_socket_address(value: object) -> SocketAddress:
    """ip:port, for every address of the config: Envoy binds its listener and admin
    there, and reaches the controller's xDS and admin addresses through STATIC
    clusters, which take no names ("malformed IP address: localhost")."""
    text = to_text(value)
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()):
        raise InvalidValue(f"{text!r} must be host:port (IPv6 as [::1]:port)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if ":" not in host or not is_ip(host):
            raise InvalidValue(f"{text!r}: only IPv6 addresses go in brackets")
    elif ":" in host:
        raise InvalidValue(f"{text!r}: write an IPv6 host in brackets, as [::1]:port")
    return SocketAddress(to_ip(host), integer_between(1, 65535)(int(port)))


def optional_text(check: Callable[[str], str]) -> Convert:
    def convert(value: object) -> str | None:
        # Empty means unset, so `ROUTER_ADMIN_TOKEN=` can switch a file's value off.
        return None if value is None or value == "" else check(to_text(value))

    return convert


def to_redis_url(text: str) -> str:
    if not text.startswith(REDIS_SCHEMES):
        raise InvalidValue(f"must start with one of {', '.join(REDIS_SCHEMES)}")
    return text


def shown(value: object) -> str:
    """A value as the file spells it: null, true/false, then Python's repr and type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (boolean)"
    return f"{value!r} ({type(value).__name__})"


# --- environment text -> YAML-like value --------------------------------------------


def int_from_text(text: str) -> object:
    try:
        return int(text.strip())
    except ValueError:
        raise InvalidValue(f"must be an integer, got {text!r}") from None


def number_from_text(text: str) -> object:
    try:
        return float(text.strip())
    except ValueError:
        raise InvalidValue(f"must be a number, got {text!r}") from None


def flag_from_text(text: str) -> object:
    flag = FLAGS.get(text.strip().lower())
    if flag is None:
        raise InvalidValue(f"must be one of true/false/yes/no/1/0, got {text!r}")
    return flag


def str_from_text(text: str) -> object:
    return text.strip()
