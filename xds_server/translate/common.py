"""Small builders shared by the per-type translator modules."""

from __future__ import annotations

from envoy.config.core.v3 import address_pb2, config_source_pb2
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message

from xds_server.model.intent import SocketAddress


def duration(seconds: float) -> duration_pb2.Duration:
    whole = int(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=round((seconds - whole) * 1e9))


def socket_address(host: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=host, port_value=port)
    )


def address_of(address: SocketAddress) -> address_pb2.Address:
    return socket_address(address.host, address.port)


def ads_config_source() -> config_source_pb2.ConfigSource:
    """Every dynamic reference points back at the ADS stream it came from."""
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.V3,
    )


def packed(message: Message) -> any_pb2.Any:
    wrapped = any_pb2.Any()
    # Deterministic: a Struct (the access log's JSON format) is a map, whose
    # order otherwise follows the hash seed, and a version names bytes
    # (docs/xds-protocol.md rule 27: replicas must agree).
    wrapped.Pack(message, deterministic=True)
    return wrapped
