"""router.tls's files: checked before the first publish (a ConfigError naming the
file), then watched; a half-written pair is never published, an untouched
content never republished, and no log line holds the key."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import pytest

from tests.factories import local_settings
from tests.tls_support import Pki, edge_certificate, replace_pair
from xds_server.app import edge_certificates
from xds_server.errors import ConfigError
from xds_server.model.schema import EdgeTlsConfig
from xds_server.pemfiles import TlsFiles
from xds_server.pipeline.certificates import CertificateWatcher


def _nothing() -> None:
    pass


def test_a_half_written_pair_is_not_published_until_it_matches(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The new certificate beside the old key does not load: `current` stays the
    old pair and the warning names the files, not their content; once the key
    follows, the new pair becomes current."""
    pki = Pki(tmp_path)
    files = pki.server_files(clients=False)
    watcher = CertificateWatcher(files, _nothing)
    old = watcher.current
    new = edge_certificate(pki.ca)
    files.cert_file.write_bytes(new.cert_chain)  # the key is not written yet
    with caplog.at_level(logging.INFO):
        assert watcher.poll() is False
    assert watcher.current == old
    assert "not published" in caplog.text and str(files.cert_file) in caplog.text
    files.key_file.write_bytes(new.private_key)
    with caplog.at_level(logging.INFO):
        assert watcher.poll() is True
    assert watcher.current == new
    for secret in (old.private_key, new.private_key):
        assert secret.split(b"\n")[1].decode() not in caplog.text
    assert "BEGIN" not in repr(new)  # a log line that prints the value shows no PEM


def test_files_touched_without_a_change_publish_nothing(tmp_path: Path) -> None:
    """A new modification time with the same bytes is no new certificate."""
    files = Pki(tmp_path).server_files(clients=False)
    watcher = CertificateWatcher(files, _nothing)
    stat = files.cert_file.stat()
    os.utime(files.cert_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert watcher.poll() is False


def test_a_replaced_pair_is_published_once(tmp_path: Path) -> None:
    """Replaced by rename (new inode), the pair becomes current on the next look,
    and looking again finds nothing new."""
    pki = Pki(tmp_path)
    files = pki.server_files(clients=False)
    watcher = CertificateWatcher(files, _nothing)
    new = edge_certificate(pki.ca)
    replace_pair(files, new)
    assert watcher.poll() is True and watcher.current == new
    assert watcher.poll() is False


def _problems(tls: TlsFiles) -> list[str]:
    ca = None if tls.client_ca_file is None else str(tls.client_ca_file)
    config = EdgeTlsConfig(
        cert_file=str(tls.cert_file), key_file=str(tls.key_file), client_ca_file=ca
    )
    settings = dataclasses.replace(local_settings(), tls=config)
    with pytest.raises(ConfigError) as error:
        edge_certificates(settings, _nothing)
    return [str(p) for p in error.value.problems]


def test_unusable_files_are_config_errors_at_their_field(tmp_path: Path) -> None:
    """A missing key file, a certificate that is not PEM, a key of another
    certificate and a CA file without a certificate: each a problem at
    router.tls.<file>, naming the file; two missing files, two problems."""
    pki = Pki(tmp_path)
    good = pki.server_files(clients=True)
    other = pki.server_files(clients=False)
    gone = tmp_path / "gone.key"
    assert _problems(dataclasses.replace(good, key_file=gone)) == [
        f"router.tls.key_file: {gone}: no such file"
    ]
    gone_ca = tmp_path / "gone-ca.pem"
    assert _problems(dataclasses.replace(good, key_file=gone, client_ca_file=gone_ca)) == [
        f"router.tls.key_file: {gone}: no such file",
        f"router.tls.client_ca_file: {gone_ca}: no such file",
    ]
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    [problem] = _problems(dataclasses.replace(good, cert_file=not_pem))
    # The certificate on its own: the pair is checked once each file loads.
    assert problem == f"router.tls.cert_file: {not_pem}: holds no PEM certificate " + (
        "(-----BEGIN CERTIFICATE-----)"
    )
    [problem] = _problems(dataclasses.replace(good, key_file=other.key_file))
    assert problem.startswith(f"router.tls.cert_file: {good.cert_file} with {other.key_file}")
    assert "its private key" in problem
    [problem] = _problems(dataclasses.replace(good, client_ca_file=not_pem))
    assert problem.startswith(f"router.tls.client_ca_file: {not_pem}: no PEM CA certificate")
