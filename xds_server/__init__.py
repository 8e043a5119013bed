"""xds-server: a Python xDS management server that drives Envoy as a request router."""

__version__ = "0.1.0"
