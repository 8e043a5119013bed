"""router.tls's files -> the listener's certificate, watched for rotation.

Promises: the files are checked before the first publish (unusable files are
a TlsFilesUnusable naming the file; the app turns it into a ConfigError at
`router.tls.<file>`); afterwards they are polled (every `interval_s`, by
inode, size and modification time, then by content), and a set that changed
and is usable again becomes `current` and calls `on_change` (the publisher
then publishes new Secrets, nothing else: translate/secrets.py). A set caught
half-written (the new certificate beside the old key) does not load, so
nothing is published until the pair matches; that is logged once per state
of the files, never with their content.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from xds_server.model.certificates import EdgeCertificate
from xds_server.pemfiles import PemSet, Stamp, TlsFiles, TlsFilesUnusable, read_pem_set, stamp

log = logging.getLogger("xds_server.certificates")

POLL_INTERVAL_S = 1.0


class CertificateWatcher:
    def __init__(
        self,
        files: TlsFiles,
        on_change: Callable[[], None],
        interval_s: float = POLL_INTERVAL_S,
    ) -> None:
        self.files = files
        self._on_change = on_change
        self._interval_s = interval_s
        pems = read_pem_set(files)  # raises TlsFilesUnusable: no listener without it
        self.current = certificate_of(pems)
        self._seen: Stamp = pems.stamp  # the files' state last looked at, usable or not

    def poll(self) -> bool:
        """Look at the files once; True when a new certificate became current
        (the caller then calls `on_change`)."""
        try:
            now = stamp(self.files)
        except OSError as error:  # a file renamed away mid-rotation: look again later
            log.debug("edge TLS files not readable now: %s", error)
            return False
        if now == self._seen:
            return False
        self._seen = now
        try:
            loaded = certificate_of(read_pem_set(self.files))
        except TlsFilesUnusable as error:
            log.warning("edge TLS files not published, the previous certificate stays: %s", error)
            return False
        if loaded == self.current:
            return False
        self.current = loaded
        log.info("edge TLS certificate changed (%s): publishing it", self.files.cert_file)
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            # Reading files off the event loop; the publisher is told on it.
            if await asyncio.to_thread(self.poll):
                self._on_change()


def certificate_of(pems: PemSet) -> EdgeCertificate:
    return EdgeCertificate(pems.cert, pems.key, pems.client_ca)
