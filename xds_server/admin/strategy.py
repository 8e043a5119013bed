"""Admin routes: strategy (to be filled in)."""

from __future__ import annotations

from xds_server.admin.api import RouteSet

routes = RouteSet("strategy")
