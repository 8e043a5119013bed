"""The pure translator: intent + health verdicts -> Envoy resources.

No I/O, no clock, no environment: equal inputs give equal resources on every
replica, which is what makes content-hash versions meaningful.
"""

from __future__ import annotations

from collections.abc import Mapping

from xds_server.model import Health, Intent
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resources
from xds_server.translate.clusters import clusters
from xds_server.translate.endpoints import load_assignments
from xds_server.translate.listeners import listeners
from xds_server.translate.routes import route_configurations


def translate(intent: Intent, health: Mapping[str, Health] | None = None) -> Resources:
    verdicts = health or {}
    return {
        CLUSTER: clusters(intent),
        ENDPOINT: load_assignments(intent, verdicts),
        LISTENER: listeners(intent),
        ROUTE: route_configurations(intent),
    }
