"""PEM certificate, key and CA files: read together, checked by OpenSSL, stamped.

One reader for both TLS edges of the controller: the xDS port's own
certificate (xds/tls.py) and the certificate Envoy's listener presents, which
the controller serves by SDS (pipeline/certificates.py). A set of files is
usable when each file reads, the certificate chain is PEM and matches its
private key, and the CA file (if any) holds a PEM certificate; otherwise
`TlsFilesUnusable` names the file at fault. The stamp (inode, size, mtime of
each file) is what a watcher compares to notice a change without reading.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from xds_server.errors import XdsServerError

Stamp = tuple[tuple[int, int, int], ...]


class TlsFilesUnusable(XdsServerError):
    """A certificate, key or CA file cannot be used; `key` names which
    (cert_file, key_file, client_ca_file). `problems` lists every file at fault
    when several are (missing files), the first being (`key`, message)."""

    def __init__(self, key: str, message: str, more: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__("; ".join((message, *(m for _, m in more))))
        self.key = key
        self.problems = ((key, message), *more)


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
class PemSet:
    """The files' contents as read at `stamp`; the key stays out of reprs (logs)."""

    stamp: Stamp
    cert: bytes = field(repr=False)
    key: bytes = field(repr=False)
    client_ca: bytes | None = field(repr=False, default=None)


def stamp(files: TlsFiles) -> Stamp:
    """Raises OSError when a file is gone."""
    stats = [os.stat(path) for path in files.paths().values()]
    return tuple((s.st_ino, s.st_size, s.st_mtime_ns) for s in stats)


def read_pem_set(files: TlsFiles) -> PemSet:
    """The files' contents once they form a usable set; raises TlsFilesUnusable."""
    missing = [(key, f"{path}: no such file") for key, path in files.paths().items()
               if not path.is_file()]  # fmt: skip
    if missing:
        raise TlsFilesUnusable(*missing[0], more=tuple(missing[1:]))
    try:
        stamped = stamp(files)
    except OSError as error:
        raise TlsFilesUnusable("cert_file", f"{files.cert_file}: {error}") from error
    texts = {key: _read(key, path) for key, path in files.paths().items()}
    check_pem_set(texts, files)
    return PemSet(stamped, texts["cert_file"], texts["key_file"], texts.get("client_ca_file"))


def _read(key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise TlsFilesUnusable(key, f"{path}: {error.strerror or error}") from error


def check_pem_set(texts: dict[str, bytes], files: TlsFiles) -> None:
    """OpenSSL's own verdict (the stdlib's ssl module) on the very bytes read, so a
    pair caught half-written (a new certificate, the old key) is refused here
    rather than by a failing handshake later."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        _load_chain(context, texts["cert_file"], texts["key_file"])
    except (ssl.SSLError, OSError) as error:
        raise TlsFilesUnusable(
            "cert_file",
            f"{files.cert_file} with {files.key_file}: not a PEM certificate chain "
            f"and its private key ({error})",
        ) from error
    if "client_ca_file" in texts:
        try:
            context.load_verify_locations(cadata=texts["client_ca_file"].decode("ascii"))
        except (ssl.SSLError, UnicodeDecodeError, ValueError) as error:
            raise TlsFilesUnusable(
                "client_ca_file", f"{files.client_ca_file}: no PEM CA certificate ({error})"
            ) from error


def _load_chain(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """ssl loads a chain from paths only: the bytes go through private temporary files
    (mode 0600, removed at once), never through a path another process could swap."""
    with tempfile.TemporaryDirectory(prefix="xds-server-pem-") as directory:
        cert_path, key_path = Path(directory, "cert.pem"), Path(directory, "key.pem")
        cert_path.write_bytes(cert)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key)
        context.load_cert_chain(cert_path, key_path)
