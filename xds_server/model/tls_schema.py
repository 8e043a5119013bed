"""A backend's `tls` in the config file: `true`, `false` or the mapping
(model/upstream_tls.py has what each key means to Envoy and the probes; the
files are read when the settings load, settings/backend_tls.py)."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from xds_server.errors import InvalidValue
from xds_server.model.fields import Flag, Rule, invalid_value
from xds_server.model.shape import OptionalPemFile, Shape
from xds_server.model.upstream_tls import UpstreamTls
from xds_server.model.values import host_name_problem, is_ip, shown, to_text

# A DNS name as a certificate's SAN carries it: letters, digits, '-' in labels of up
# to 63, dots between, 253 in all (RFC 1123); no IP literal, no wildcard.
_HOST_NAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def _optional_host_name(value: object) -> str | None:
    if value is None:
        return None
    text = to_text(value)
    if not _HOST_NAME.fullmatch(text) or text.replace(".", "").isdigit():
        # Why, for a name that is almost one (a trailing dot, an '_'); an IP
        # address needs no reason.
        problem = None if is_ip(text) else host_name_problem(text.lower())
        reason = f": {problem}" if problem is not None else ""
        raise InvalidValue(f"must be a DNS host name (the certificate's SAN), got {text!r}{reason}")
    return text


OptionalHostName = Annotated[
    str | None,
    Rule(
        _optional_host_name,
        {"anyOf": [{"type": "string", "pattern": f"^{_HOST_NAME.pattern}$"}, {"type": "null"}]},
    ),
]


class BackendTlsConfig(Shape):
    """A backend's `tls` mapping (`tls: true` is this with every default). The
    files are read and checked when the settings load (settings/backend_tls.py)."""

    ca_file: OptionalPemFile = Field(
        default=None,
        description="PEM CA certificates the backend's certificate must chain to; "
        "default: the system's CAs. Read by the controller and sent to Envoy inline",
    )
    sni: OptionalHostName = Field(
        default=None,
        description="the name sent as SNI and required among the certificate's DNS SANs; "
        "default: the backend's address, so an IP address needs it",
    )
    client_cert_file: OptionalPemFile = Field(
        default=None,
        description="PEM client certificate (chain) presented to the backend, with "
        "client_key_file; Envoy reads it by this path, so it must exist on Envoy's host too",
    )
    client_key_file: OptionalPemFile = Field(
        default=None,
        description="PEM private key of client_cert_file; never sent over xDS: Envoy "
        "reads it by this path",
    )
    insecure_skip_verify: Flag = Field(
        default=False,
        description="accept any certificate (no CA or name check); logged as a warning "
        "at every load. The only way to skip verification",
    )

    def to_upstream_tls(self) -> UpstreamTls:
        return UpstreamTls(**dict(self))


def tls_shorthand(value: object) -> object:
    """`tls: true` is the mapping with every default; `false` (or null) is no TLS.
    Anything but a boolean or a mapping is refused here, before pydantic would
    read "yes" or 1 as true."""
    if value is True:
        return {}
    if value is False or value is None:
        return None
    if not isinstance(value, dict):
        raise invalid_value(f"must be true, false or a mapping, got {shown(value)}")
    return value


def _tls_json_schema(schema: dict[str, Any]) -> None:
    """true, false or the mapping (pydantic sees only the mapping or null)."""
    options = [o for o in schema.pop("anyOf", []) if o.get("type") != "null"]
    schema["anyOf"] = [{"type": "boolean"}, *options]
    schema["default"] = False
    schema["description"] = (
        "TLS to this backend: true (the system's CAs, SNI = the address's host name) "
        "or a mapping; default: plaintext"
    )


BackendTls = Annotated[
    BackendTlsConfig | None,
    BeforeValidator(tls_shorthand),
    Field(json_schema_extra=_tls_json_schema),
]
