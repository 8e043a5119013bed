"""router.tls's files, read and checked when the settings load.

So `xds-server validate` and a config reload refuse what `xds-server run`
would: a missing or unreadable file, a certificate or key that is not PEM, a
key that does not match the certificate, a CA file without a certificate,
each at `router.tls.<file>` (or `env:ROUTER_TLS.<file>`). Nothing read here is
kept: the controller reads the files again at start and watches them
(pipeline/certificates.py), since they may change after the settings loaded.
"""

from __future__ import annotations

from pathlib import Path

from xds_server.model.validation import Located
from xds_server.pemfiles import TlsFiles, TlsFilesUnusable, read_pem_set
from xds_server.settings.environment import Router


def edge_tls_problems(router: Router) -> list[Located]:
    tls = router.values.tls
    if tls is None or "tls" in router.unknown:
        return []
    ca = None if tls.client_ca_file is None else Path(tls.client_ca_file)
    try:
        read_pem_set(TlsFiles(Path(tls.cert_file), Path(tls.key_file), ca))
    except TlsFilesUnusable as error:
        at = router.loc_of("tls")
        return [Located((*at, key), message) for key, message in error.problems]
    return []
