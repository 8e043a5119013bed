"""Sample backends that answer like the spec's services (qdrant, embedding, LLMs).

They exist so the demo and the end-to-end tests route real HTTP through a real
Envoy, and so resilience tests can make one backend fail on purpose
(`POST /_control/fault`).
"""

from xds_server.samples.backend import KINDS, make_app

__all__ = ["KINDS", "make_app"]
