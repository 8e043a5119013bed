from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from xds_server.app import Controller

CONTROLLER: web.AppKey[Controller] = web.AppKey("controller")


def controller_of(request: web.Request) -> Controller:
    return request.app[CONTROLLER]
