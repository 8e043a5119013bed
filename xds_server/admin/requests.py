"""What the admin API takes from a request, decoded strictly, before any handler acts.

Every refusal here is an ApiError (admin/errors.py answers it as JSON) and
comes before anything is changed:

- a header the API reads (Authorization, Origin, Host, Content-Type) that is
  not UTF-8: 400. aiohttp keeps such bytes as surrogate escapes, which would
  fail later, in the middle of a comparison (a 500);
- a mutating call without a token configured whose Origin is not the
  request's own host:port: 403 (`check_same_origin`, docs/security.md);
- a body not declared `application/json`: 415; a charset other than utf-8:
  400 (RFC 8259 section 8.1: JSON exchanged between systems is UTF-8);
- a body that does not decode: not UTF-8, nested deeper than MAX_DEPTH, a
  number of more than MAX_NUMBER_DIGITS digits, not JSON, not one JSON
  object, or a string holding a lone surrogate (\\ud800: no UTF-8 spells it,
  so the store, Redis and the protobuf encoder could not write it): 400.
  The limits are far beyond any real body; without them the decoder fails
  with what a handler would answer as a 500: Python's int() refuses more than
  4,300 digits (ValueError) and its JSON parser recurses once per nesting level
  (RecursionError near 1,000, which is caught as "too deep" too);
- a body larger than MAX_BODY_BYTES: 413 (aiohttp's client_max_size).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from aiohttp import web
from yarl import URL

from xds_server.admin.errors import ApiError, bad_request

JSON_TYPE = "application/json"
CHARSET = "utf-8"
MAX_BODY_BYTES = 1024**2  # aiohttp's default, made explicit; a real body is < 1 KiB
MAX_DEPTH = 64  # nesting of arrays and objects; a real body nests 1 deep
MAX_NUMBER_DIGITS = 100  # digits of one number literal (integer, fraction and exponent)
READ_HEADERS = ("Authorization", "Origin", "Host", "Content-Type")
MALFORMED = (
    f"a header that is not UTF-8, a charset other than {CHARSET}, or a body that does not "
    f"decode: not UTF-8, not JSON, not one object, nested deeper than {MAX_DEPTH}, a "
    f"number of more than {MAX_NUMBER_DIGITS} digits or a lone surrogate escape"
)
_DEFAULT_PORTS = {"http": 80, "https": 443}
_NOT_DIGITS = str.maketrans("", "", "+-.eE")  # what a JSON number holds besides digits


def forbidden(detail: str) -> ApiError:
    return ApiError(403, "forbidden", detail)


def unsupported_media_type(got: str) -> ApiError:
    detail = f"the body must be {JSON_TYPE} (charset {CHARSET}, or none), got {got}"
    return ApiError(415, "unsupported_media_type", detail)


# ---- headers ------------------------------------------------------------------------------


def header(request: web.Request, name: str) -> str | None:
    """The header's value, or 400 when its bytes are not UTF-8."""
    value = request.headers.get(name)
    if value is not None:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise bad_request(f"the {name} header is not valid UTF-8") from None
    return value


def check_headers(request: web.Request) -> None:
    for name in READ_HEADERS:
        header(request, name)


def check_same_origin(request: web.Request) -> None:
    """403 unless the Origin is absent or names the request's own host and port.

    A browser adds Origin to every cross-site POST, PUT, PATCH and DELETE, and a
    script cannot forge it; clients that are not browsers (curl, the CLI) send
    none. Same origin: the Origin's host and port equal the Host header's, a
    missing port being the Origin scheme's default. The scheme is not compared:
    behind a TLS-terminating proxy the page is https while this server is http."""
    origin = header(request, "Origin")
    if origin is None:
        return
    own = _authority(header(request, "Host") or "", origin)
    if own is None or _origin_authority(origin) != own:
        raise forbidden(
            f"cross-site change refused: Origin {origin!r} is not this API's own "
            f"({header(request, 'Host')!r}); without ROUTER_ADMIN_TOKEN only a same-origin "
            "page or a client that sends no Origin may change the router"
        )


def _origin_authority(origin: str) -> tuple[str, int] | None:
    """(host, port) of an http(s) origin; None for "null" (an opaque origin) or
    anything that is not an origin."""
    try:
        return _host_port(URL(origin))
    except ValueError:
        return None


def _authority(host: str, origin: str) -> tuple[str, int] | None:
    """(host, port) of a Host header, its port defaulting to the Origin scheme's."""
    scheme = origin.partition("://")[0].lower()
    try:
        return _host_port(URL(f"{scheme if scheme in _DEFAULT_PORTS else 'http'}://{host}"))
    except ValueError:
        return None


def _host_port(url: URL) -> tuple[str, int] | None:
    if url.scheme not in _DEFAULT_PORTS or not url.host or url.user is not None:
        return None
    if url.path not in ("", "/") or url.query_string or url.fragment:
        return None
    return url.host.lower(), url.port or _DEFAULT_PORTS[url.scheme]


def check_media_type(request: web.Request) -> None:
    """415 unless the body is declared application/json (a text/plain body is not
    parsed on a guess: that is the type a cross-site form or a `no-cors` fetch
    sends without asking the server first)."""
    if request.content_type != JSON_TYPE:
        got = header(request, "Content-Type")
        raise unsupported_media_type(repr(got) if got else "no Content-Type")


# ---- the body -----------------------------------------------------------------------------


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object (see the module docstring for each refusal).
    Its media type was checked before the token was (admin/__init__.py)."""
    charset = request.charset
    if charset is not None and charset.lower() != CHARSET:
        raise bad_request(f"charset {charset!r} is not accepted: a JSON body is {CHARSET}")
    raw = await request.read()  # 413 beyond client_max_size
    return decode_object(raw)


def decode_object(raw: bytes) -> dict[str, Any]:
    """`raw` as one JSON object, or 400 saying why not."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise bad_request(f"body is not valid UTF-8: {error}") from None
    too_deep = bad_request(f"body nests deeper than {MAX_DEPTH} levels of arrays and objects")
    try:
        body = json.loads(text, parse_int=_integer, parse_float=_float)
    except json.JSONDecodeError as error:
        raise bad_request(f"body is not valid JSON: {error}") from None
    except RecursionError:
        raise too_deep from None
    except _TooLong as error:
        raise bad_request(str(error)) from None
    if not isinstance(body, dict):
        raise bad_request("body must be a JSON object")
    # Each walk only when the text could need it: deeper nesting needs that many
    # brackets, a lone surrogate a \u escape (decoded UTF-8 holds none).
    if text.count("[") + text.count("{") > MAX_DEPTH and nests_deeper(body, MAX_DEPTH):
        raise too_deep
    if "\\u" in text:
        try:
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise bad_request("body holds a lone surrogate escape (\\ud800-\\udfff)") from None
    return body


def nests_deeper(value: object, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` deep in `value` (the value
    itself is level 1). Iterative: no recursion, so any parsed depth is measured."""
    pending: list[tuple[object, int]] = [(value, 1)]
    while pending:
        node, depth = pending.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        assert isinstance(children, Iterable)  # only arrays and objects are pending
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


class _TooLong(ValueError):
    pass


def _checked_length(literal: str) -> str:
    digits = len(literal.translate(_NOT_DIGITS))
    if digits > MAX_NUMBER_DIGITS:
        raise _TooLong(
            f"body holds a number of {digits} digits; at most {MAX_NUMBER_DIGITS} are accepted"
        )
    return literal


def _integer(literal: str) -> int:
    return int(_checked_length(literal))


def _float(literal: str) -> float:
    return float(_checked_length(literal))
