"""TLS for the xDS port from PEM files, picked up again when the files change.

Promises: the files are checked before the port opens (a certificate that
does not match its key, an unreadable file, a CA file with no certificate:
TlsFilesUnusable, naming the file); with a client CA every client must
present a certificate that CA signed (gRPC refuses the handshake otherwise);
and a certificate replaced on disk is served to the next connection without a
restart. gRPC asks `ReloadingCredentials` before every handshake; a change is
seen by the files' size and modification time, and a set of files that does
not load (caught half-written, say) is logged and the previous one kept.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc

from xds_server.errors import XdsServerError

log = logging.getLogger("xds_server.xds")


class TlsFilesUnusable(XdsServerError):
    """A certificate, key or CA file cannot be used; `key` names which
    (cert_file, key_file, client_ca_file)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class TlsFiles:
    cert_file: Path
    key_file: Path
    client_ca_file: Path | None = None  # None: no client certificates asked for

    def paths(self) -> dict[str, Path]:
        named = {"cert_file": self.cert_file, "key_file": self.key_file}
        if self.client_ca_file is not None:
            named["client_ca_file"] = self.client_ca_file
        return named


@dataclass(frozen=True)
class _Loaded:
    stamp: tuple[tuple[int, int, int], ...]
    configuration: grpc.ServerCertificateConfiguration


class ReloadingCredentials:
    """Server credentials that re-read the files when they change."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._lock = threading.Lock()  # gRPC calls the fetcher from its own threads
        self._loaded = _load(files)
        self._served = self._loaded

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._loaded.configuration,
            self._fetch,
            require_client_authentication=self.files.client_ca_file is not None,
        )

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's question before each handshake: a new configuration, or None to
        keep the current one."""
        with self._lock:
            try:
                if _stamp(self.files) == self._served.stamp:
                    return None
                loaded = _load(self.files)
            except (TlsFilesUnusable, OSError) as error:
                log.warning("xDS TLS files not reloaded, the previous ones stay: %s", error)
                return None
            self._served = loaded
            log.info("xDS TLS files reloaded (%s)", self.files.cert_file)
            return loaded.configuration


def _stamp(files: TlsFiles) -> tuple[tuple[int, int, int], ...]:
    stats = [os.stat(path) for path in files.paths().values()]
    return tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in stats)


def _load(files: TlsFiles) -> _Loaded:
    stamp = _stamp_or_raise(files)
    texts = {key: _read(key, path) for key, path in files.paths().items()}
    _check(files, texts)
    configuration = grpc.ssl_server_certificate_configuration(
        [(texts["key_file"], texts["cert_file"])],
        root_certificates=texts.get("client_ca_file"),
    )
    return _Loaded(stamp, configuration)


def _stamp_or_raise(files: TlsFiles) -> tuple[tuple[int, int, int], ...]:
    for key, path in files.paths().items():
        if not path.is_file():
            raise TlsFilesUnusable(key, f"{path}: no such file")
    return _stamp(files)


def _read(key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise TlsFilesUnusable(key, f"{path}: {error.strerror or error}") from error


def _check(files: TlsFiles, texts: dict[str, bytes]) -> None:
    """OpenSSL's own verdict (the stdlib's ssl module): gRPC would only fail the
    handshakes later, with a log line."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(files.cert_file, files.key_file)
    except (ssl.SSLError, OSError) as error:
        raise TlsFilesUnusable(
            "cert_file",
            f"{files.cert_file} with {files.key_file}: not a PEM certificate chain "
            f"and its private key ({error})",
        ) from error
    if files.client_ca_file is not None:
        try:
            context.load_verify_locations(cadata=texts["client_ca_file"].decode("ascii"))
        except (ssl.SSLError, UnicodeDecodeError, ValueError) as error:
            raise TlsFilesUnusable(
                "client_ca_file", f"{files.client_ca_file}: no PEM CA certificate ({error})"
            ) from error
