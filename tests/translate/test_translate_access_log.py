"""router.access_log in the listener: the JSON line's fields, stdout, a file or
none, on the plaintext and the TLS listener alike; the request id always in the
response; Envoy itself takes a file it can open and refuses one it cannot."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import trustme
from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import json_format

from tests.factories import intent_of
from tests.tls_support import edge_certificate
from xds_server.model.access_log import AccessLog, AccessLogSink
from xds_server.model.certificates import EdgeCertificate
from xds_server.model.intent import Intent, SocketAddress
from xds_server.proxy.envoy_process import EnvoyFailed, validate_bootstrap
from xds_server.proxy.static_config import static_bootstrap
from xds_server.resources import LISTENER, LISTENER_NAME
from xds_server.translate import translate
from xds_server.translate.memo import Memory

OFF = AccessLog(AccessLogSink.OFF)


def with_log(log: AccessLog) -> Intent:
    return dataclasses.replace(intent_of(2), access_log=log)


def hcm_of(
    intent: Intent, certificate: EdgeCertificate | None = None
) -> hcm_pb2.HttpConnectionManager:
    listener = translate(intent, certificate=certificate)[LISTENER][LISTENER_NAME]
    assert isinstance(listener, listener_pb2.Listener)
    [chain] = listener.filter_chains
    hcm = hcm_pb2.HttpConnectionManager()
    assert chain.filters[0].typed_config.Unpack(hcm)
    return hcm


def json_fields(log: accesslog_pb2.AccessLog, config: stream_pb2.StdoutAccessLog) -> dict[str, str]:
    assert log.typed_config.Unpack(config)
    return json_format.MessageToDict(config.log_format.json_format)


def test_by_default_each_request_is_one_json_line_on_stdout() -> None:
    """The spec's fields, each from the Envoy operator that holds it; the backend
    is the endpoint's hostname (the backend's name), the service its cluster."""
    hcm = hcm_of(intent_of(2))
    [log] = hcm.access_log
    assert log.name == "envoy.access_loggers.stdout"
    fields = json_fields(log, stream_pb2.StdoutAccessLog())
    assert {
        key: fields[key]
        for key in (
            "start_time",
            "method",
            "path",
            "status",
            "response_flags",
            "duration_ms",
            "upstream_service_time_ms",
            "backend",
            "service",
            "bytes_received",
            "bytes_sent",
            "request_id",
        )
    } == {
        "start_time": "%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%",
        "method": "%REQ(:METHOD)%",
        "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
        "status": "%RESPONSE_CODE%",
        "response_flags": "%RESPONSE_FLAGS%",
        "duration_ms": "%DURATION%",
        "upstream_service_time_ms": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
        "backend": "%UPSTREAM_HOST_NAME%",
        "service": "%UPSTREAM_CLUSTER%",
        "bytes_received": "%BYTES_RECEIVED%",
        "bytes_sent": "%BYTES_SENT%",
        "request_id": "%REQ(X-REQUEST-ID)%",
    }
    assert hcm.always_set_request_id_in_response is True


def test_a_file_path_writes_the_same_lines_to_that_file() -> None:
    [log] = hcm_of(with_log(AccessLog(AccessLogSink.FILE, "/var/log/envoy/access.log"))).access_log
    assert log.name == "envoy.access_loggers.file"
    config = file_pb2.FileAccessLog()
    assert log.typed_config.Unpack(config)
    assert config.path == "/var/log/envoy/access.log"
    stdout = json_fields(hcm_of(intent_of(2)).access_log[0], stream_pb2.StdoutAccessLog())
    assert json_format.MessageToDict(config.log_format.json_format) == stdout


def test_off_logs_nothing_and_still_hands_the_client_its_request_id() -> None:
    hcm = hcm_of(with_log(OFF))
    assert list(hcm.access_log) == []
    assert hcm.always_set_request_id_in_response is True


def test_the_tls_listener_logs_alike(tmp_path: Path) -> None:
    """TLS at the edge is the same listener with a transport socket: the same log."""
    certificate = edge_certificate(trustme.CA())
    assert hcm_of(intent_of(2), certificate) == hcm_of(intent_of(2))
    [log] = hcm_of(with_log(AccessLog(AccessLogSink.FILE, "/x/a.log")), certificate).access_log
    assert log.name == "envoy.access_loggers.file"


def test_an_access_log_change_rebuilds_only_the_listener() -> None:
    memory = Memory()
    first = translate(intent_of(2), memory=memory)
    same = translate(with_log(AccessLog()), memory=memory)
    assert same[LISTENER][LISTENER_NAME] is first[LISTENER][LISTENER_NAME]
    off = translate(with_log(OFF), memory=memory)
    assert off[LISTENER][LISTENER_NAME] != first[LISTENER][LISTENER_NAME]
    assert all(off[t] == first[t] for t in first if t != LISTENER)


@pytest.mark.envoy
async def test_envoy_opens_the_file_and_refuses_a_listener_whose_file_it_cannot(
    tmp_path: Path,
) -> None:
    """Why settings/access_log.py checks the directory: Envoy 1.40 creates the file
    when it takes the listener, and rejects the configuration when it cannot."""
    good = tmp_path / "access.log"
    intent = with_log(AccessLog(AccessLogSink.FILE, str(good)))
    await validate_bootstrap(static_bootstrap(translate(intent), SocketAddress("127.0.0.1", 0)))
    assert good.exists()
    missing = str(tmp_path / "missing" / "access.log")
    intent = with_log(AccessLog(AccessLogSink.FILE, missing))
    with pytest.raises(EnvoyFailed, match="unable to open file"):
        await validate_bootstrap(static_bootstrap(translate(intent), SocketAddress("127.0.0.1", 0)))
