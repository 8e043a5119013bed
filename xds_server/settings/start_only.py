"""The settings a reload cannot apply: read once, when the controller starts.

A reload (settings/reload.py) stores the file's new intent; the DNS resolver,
the listener's certificate files (their contents are watched, their paths are
not), the xDS port's TLS, the health-check timing, the addresses the
controller listens on and the other process knobs keep their start values. A
reload that changes one says so, naming the key (never the value: a Redis URL
or a token may be a secret), so an operator is not left wondering why nothing
changed. `restart` is the remedy the warning gives.
"""

from __future__ import annotations

from xds_server.settings import Settings

# Settings field -> the router key that sets it, in the order of router_config.yaml.
START_ONLY_KEYS = {
    "health_check_interval_s": "router.health_check_interval",
    "health_check_timeout_s": "router.health_check_timeout",
    "health_check_healthy_threshold": "router.health_check_healthy_threshold",
    "health_check_unhealthy_threshold": "router.health_check_unhealthy_threshold",
    "health_check_jitter": "router.health_check_jitter",
    "dns_servers": "router.dns_servers",
    "dns_refresh_interval_s": "router.dns_refresh_interval",
    "health_prober_lease": "router.health_prober_lease",
    # The HDS servicer, the assignment and Envoy's bootstrap (hds_config) are built at start.
    "health_checker": "router.health_checker",
    "health_checkers_per_backend": "router.health_checkers_per_backend",
    "worker_threads": "router.worker_threads",
    "metrics_enabled": "router.metrics_enabled",
    "envoy_admin_address": "router.envoy_admin_address",
    "xds_address": "router.xds_address",
    "redis_url": "router.redis_url",
    "admin_token": "router.admin_token",
    "xds_tls": "router.xds_tls",
    "tls": "router.tls",
    "envoy_admin_allowlist": "router.envoy_admin_allowlist",
}


def start_only_changes(running: Settings, loaded: Settings) -> list[str]:
    """The router keys whose value in `loaded` differs from the one the process
    started with (`running`), which a reload leaves as it is."""
    changed = [
        key
        for attribute, key in START_ONLY_KEYS.items()
        if getattr(running, attribute) != getattr(loaded, attribute)
    ]
    # The admin API keeps listening where it started; the intent carries its address.
    if running.intent.admin != loaded.intent.admin:
        changed.append("router.admin_address")
    return changed
