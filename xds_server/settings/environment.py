"""The effective `router:` values: defaults, then the file, then `ROUTER_*` variables.

Every key of the `router:` section can be overridden by `ROUTER_<KEY>`, and
every key of a nested section by `ROUTER_<SECTION>_<KEY>`
(`router.edge.max_connections`: `ROUTER_EDGE_MAX_CONNECTIONS`); the
environment beats the file. Unknown `ROUTER_*` variables are ignored, so other
tools may share the prefix; a known variable with a bad value is a problem at
`env:ROUTER_<KEY>`. A key whose winning value is bad has no effective value:
the rules across fields (settings/rules.py) skip it rather than check a
default the operator did not choose.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

from xds_server.errors import InvalidValue, Problem
from xds_server.model.fields import rule_of
from xds_server.model.schema import RouterConfig
from xds_server.model.validation import Loc, located
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
        set it (`env:ROUTER_<KEY>`), or its place in the file (`router.<key>`).
        A nested key is dotted: `edge.max_connections`."""
        return (env_name(key),) if key in self.from_env else ("router", *key.split("."))


def env_name(key: str) -> str:
    """`edge.max_connections` -> env:ROUTER_EDGE_MAX_CONNECTIONS."""
    return f"env:{ENV_PREFIX}{key.replace('.', '_').upper()}"


def variables(model: type[BaseModel] = RouterConfig, at: tuple[str, ...] = ()) -> list[str]:
    """Every `ROUTER_*` variable the router section reads, in field order."""
    nested = _nested_models(model)
    names: list[str] = []
    for key in model.model_fields:
        if key in nested:
            names += variables(nested[key], (*at, key))
        else:
            names.append(ENV_PREFIX + "_".join((*at, key)).upper())
    return names


def effective_router(section: object, environ: Mapping[str, str]) -> Router:
    found = _Winners(environ)
    found.take_section(RouterConfig, section, ())
    values = RouterConfig.model_validate(found.winners)
    return Router(
        values, frozenset(found.unknown), tuple(found.problems), frozenset(found.from_env)
    )


class _Winners:
    """The winning raw values of a section and of its nested sections (`edge:`):
    the file's, then `ROUTER_<KEY>` (`ROUTER_EDGE_<KEY>` for a nested key).
    Keys are dotted paths below `router` (`queue_size`, `edge.max_connections`)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.winners: dict[str, object] = {}
        self.unknown: set[str] = set()  # keys whose winning value is bad
        self.problems: list[Problem] = []
        self.from_env: set[str] = set()

    def take_section(self, model: type[BaseModel], section: object, at: tuple[str, ...]) -> None:
        winners = self._winners_at(at)
        nested = _nested_models(model)
        if isinstance(section, dict):
            for key, raw in section.items():
                if key in model.model_fields and key not in nested:
                    # the file's problems are reported elsewhere
                    self._take(model, winners, (*at, key), raw)
        for key in model.model_fields:
            if key in nested:
                inner = section.get(key) if isinstance(section, dict) else None
                self.take_section(nested[key], inner, (*at, key))
                continue
            path = ".".join((*at, key))
            variable = ENV_PREFIX + path.replace(".", "_").upper()
            if variable in self.environ:
                self.from_env.add(path)
                found = self._take_text(model, winners, (*at, key), self.environ[variable])
                self.problems += [Problem(env_name(path) + below, m) for below, m in found]

    def _winners_at(self, at: tuple[str, ...]) -> dict[str, object]:
        winners = self.winners
        for key in at:
            inner = winners.setdefault(key, {})
            assert isinstance(inner, dict)
            winners = inner
        return winners

    def _take_text(
        self, model: type[BaseModel], winners: dict[str, object], at: tuple[str, ...], text: str
    ) -> list[tuple[str, str]]:
        rule = rule_of(model.model_fields[at[-1]].metadata)
        try:
            raw = (str_from_text if rule is None else rule.from_text)(text)
        except InvalidValue as invalid:
            winners.pop(at[-1], None)
            self.unknown.add(".".join(at))
            return [("", str(invalid))]
        return [(below, _as_env_text(below, m)) for below, m in self._take(model, winners, at, raw)]

    def _take(
        self, model: type[BaseModel], winners: dict[str, object], at: tuple[str, ...], raw: object
    ) -> list[tuple[str, str]]:
        """Let `raw` win for the key at `at`; every problem when it is bad, each
        as (the path below the key, message): ("[1]", ...) for a list's second
        item, (".key_file", "required") in a mapping (ROUTER_TLS)."""
        key, path = at[-1], ".".join(at)
        try:
            model.model_validate({key: raw})
        except ValidationError as error:
            winners.pop(key, None)
            self.unknown.add(path)
            return [(_below(f.loc[1:]), f.message) for f in located(model, error)]
        winners[key] = raw
        self.unknown.discard(path)
        return []


def _below(loc: Loc) -> str:
    """The rest of a field path, after the key: `[1]`, `.key_file`."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)


def _as_env_text(below: str, message: str) -> str:
    """A variable holds text: a mapping (ROUTER_TLS, ROUTER_XDS_TLS) is JSON there."""
    if not below and message.startswith("must be a mapping"):
        return "must be a JSON object" + message.removeprefix("must be a mapping")
    return message


def _nested_models(model: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """The keys of `model` that are sections of their own (`edge:`)."""
    return {
        key: field.annotation
        for key, field in model.model_fields.items()
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
    }
