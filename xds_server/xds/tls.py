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
import threading
from dataclasses import dataclass

import grpc

from xds_server.pemfiles import Stamp, TlsFiles, TlsFilesUnusable, read_pem_set, stamp

__all__ = ["ReloadingCredentials", "TlsFiles", "TlsFilesUnusable"]

log = logging.getLogger("xds_server.xds")


@dataclass(frozen=True)
class _Loaded:
    stamp: Stamp
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
                if stamp(self.files) == self._served.stamp:
                    return None
                loaded = _load(self.files)
            except (TlsFilesUnusable, OSError) as error:
                log.warning("xDS TLS files not reloaded, the previous ones stay: %s", error)
                return None
            self._served = loaded
            log.info("xDS TLS files reloaded (%s)", self.files.cert_file)
            return loaded.configuration


def _load(files: TlsFiles) -> _Loaded:
    pems = read_pem_set(files)
    configuration = grpc.ssl_server_certificate_configuration(
        [(pems.key, pems.cert)], root_certificates=pems.client_ca
    )
    return _Loaded(pems.stamp, configuration)
