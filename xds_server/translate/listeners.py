"""Intent -> the one HTTP Listener (LDS) on the router address."""

from __future__ import annotations

import functools

from envoy.config.core.v3 import protocol_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from xds_server.model.intent import Intent, SocketAddress
from xds_server.resources import LISTENER_NAME, ROUTE_CONFIG_NAME
from xds_server.translate.common import address_of, ads_config_source, packed
from xds_server.translate.memo import Memo
from xds_server.translate.openai import http_filter as front_door_filter

HCM_FILTER = "envoy.filters.network.http_connection_manager"
ROUTER_FILTER = "envoy.filters.http.router"
# Each Envoy worker thread keeps its own round-robin position. Without this the
# kernel hands sequential connections (one curl after another) to any of the
# workers, and round robin does not alternate; exact balance gives a new
# connection to the worker with the fewest open ones, so sequential clients
# share one worker and one rotation, and concurrent clients still spread over
# all workers (README, "Round robin across workers"; bench/README.md measures
# that it costs no throughput).
# https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/intro/threading_model
EXACT_BALANCE = listener_pb2.Listener.ConnectionBalanceConfig(
    exact_balance=listener_pb2.Listener.ConnectionBalanceConfig.ExactBalance()
)


def listeners(
    intent: Intent, memo: Memo[listener_pb2.Listener]
) -> dict[str, listener_pb2.Listener]:
    build = functools.partial(router_listener, intent.listen)
    return {LISTENER_NAME: memo.get(LISTENER_NAME, (intent.listen,), build)}


def router_listener(listen: SocketAddress) -> listener_pb2.Listener:
    return listener_pb2.Listener(
        name=LISTENER_NAME,
        address=address_of(listen),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name=HCM_FILTER, typed_config=packed(http_connection_manager())
                    )
                ]
            )
        ],
        connection_balance_config=EXACT_BALANCE,
    )


def http_connection_manager() -> hcm_pb2.HttpConnectionManager:
    return hcm_pb2.HttpConnectionManager(
        stat_prefix=LISTENER_NAME,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        rds=hcm_pb2.Rds(config_source=ads_config_source(), route_config_name=ROUTE_CONFIG_NAME),
        http_filters=[
            # Off unless a front door route turns it on (translate/openai.py).
            front_door_filter(),
            hcm_pb2.HttpFilter(name=ROUTER_FILTER, typed_config=packed(router_pb2.Router())),
        ],
        # Without this, HTTP/1.0 clients such as the spec's `ab` get 426 Upgrade
        # Required (docs/envoy-notes.md, "Traps").
        http_protocol_options=protocol_pb2.Http1ProtocolOptions(accept_http_10=True),
    )
