"""The effective `router:` values: defaults, then the file, then `ROUTER_*` variables.

Every key of the `router:` section can be overridden by `ROUTER_<KEY>`; the
environment beats the file. Unknown `ROUTER_*` variables are ignored, so other
tools may share the prefix; a known variable with a bad value is a problem at
`env:ROUTER_<KEY>`. A key whose winning value is bad has no effective value:
the rules across fields (settings/rules.py) skip it rather than check a
default the operator did not choose.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import ValidationError

from xds_server.errors import InvalidValue, Problem
from xds_server.model.fields import rule_of
from xds_server.model.schema import RouterConfig
from xds_server.model.validation import Loc
from xds_server.model.values import str_from_text

ENV_PREFIX = "ROUTER_"


@dataclass(frozen=True)
class Router:
    values: RouterConfig  # the winning valid values, defaults for the rest
    unknown: frozenset[str]  # keys whose winning value is bad
    problems: tuple[Problem, ...]  # of the environment; the file's are the document's
    from_env: frozenset[str] = frozenset()  # keys whose value came from ROUTER_<KEY>

    def loc_of(self, key: str) -> Loc:
        """Where `key`'s value came from, for a problem about it: the variable that
        set it (`env:ROUTER_<KEY>`), or its place in the file (`router.<key>`)."""
        return (env_name(key),) if key in self.from_env else ("router", key)


def env_name(key: str) -> str:
    return f"env:{ENV_PREFIX}{key.upper()}"


def effective_router(section: object, environ: Mapping[str, str]) -> Router:
    winners: dict[str, object] = {}
    unknown: set[str] = set()
    problems: list[Problem] = []
    if isinstance(section, dict):
        for key, raw in section.items():
            if key in RouterConfig.model_fields:
                _take(winners, unknown, key, raw)  # the file's problems are reported elsewhere
    from_env = {key for key in RouterConfig.model_fields if ENV_PREFIX + key.upper() in environ}
    for key in sorted(from_env, key=list(RouterConfig.model_fields).index):
        message = _take_text(winners, unknown, key, environ[ENV_PREFIX + key.upper()])
        if message is not None:
            problems.append(Problem(env_name(key), message))
    values = RouterConfig.model_validate(winners)
    return Router(values, frozenset(unknown), tuple(problems), frozenset(from_env))


def _take_text(winners: dict[str, object], unknown: set[str], key: str, text: str) -> str | None:
    rule = rule_of(RouterConfig.model_fields[key].metadata)
    try:
        raw = (str_from_text if rule is None else rule.from_text)(text)
    except InvalidValue as invalid:
        winners.pop(key, None)
        unknown.add(key)
        return str(invalid)
    return _take(winners, unknown, key, raw)


def _take(winners: dict[str, object], unknown: set[str], key: str, raw: object) -> str | None:
    """Let `raw` win for `key`; the message when it is bad."""
    try:
        RouterConfig.model_validate({key: raw})
    except ValidationError as error:
        winners.pop(key, None)
        unknown.add(key)
        return str(error.errors()[0]["msg"])
    winners[key] = raw
    unknown.discard(key)
    return None
