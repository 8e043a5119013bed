"""PEM certificate, key and CA files: read together, checked by OpenSSL, stamped.

One reader for both TLS edges of the controller: the xDS port's own
certificate (xds/tls.py) and the certificate Envoy's listener presents, which
the controller serves by SDS (pipeline/certificates.py). A set of files is
usable when each file reads, the certificate chain is PEM and matches its
private key, and the CA file (if any) holds a PEM certificate; otherwise
`TlsFilesUnusable` names every file at fault, each with its own problem (the
certificate and key are checked as a pair once each loads on its own). The
stamp (inode, size, mtime of each file) is what a watcher compares to notice a
change without reading.
"""

from __future__ import annotations

import os
import re
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
    """The files' contents once they form a usable set; raises TlsFilesUnusable
    naming every file at fault (a missing certificate does not hide a CA file
    without a certificate)."""
    missing = [(key, f"{path}: no such file") for key, path in files.paths().items()
               if not path.is_file()]  # fmt: skip
    problems = list(missing)
    stamped: Stamp = ()
    if not missing:
        # Before the reads: a change made while they run shows at the next poll.
        try:
            stamped = stamp(files)
        except OSError as error:
            problems.append(("cert_file", f"{files.cert_file}: {error}"))
    texts: dict[str, bytes] = {}
    for key, path in files.paths().items():
        if any(key == at for at, _ in missing):
            continue
        try:
            texts[key] = path.read_bytes()
        except OSError as error:
            problems.append((key, f"{path}: {error.strerror or error}"))
    problems += _content_problems(texts, files)
    if problems:
        order = list(files.paths())
        ordered = sorted(problems, key=lambda p: order.index(p[0]))
        raise TlsFilesUnusable(*ordered[0], more=tuple(ordered[1:]))
    return PemSet(stamped, texts["cert_file"], texts["key_file"], texts.get("client_ca_file"))


def _content_problems(texts: dict[str, bytes], files: TlsFiles) -> list[tuple[str, str]]:
    """What is wrong with each file read, then, when both load on their own,
    with the certificate and key as a pair."""
    paths = files.paths()
    checks = {
        "cert_file": certificate_problem,
        "key_file": private_key_problem,
        "client_ca_file": ca_problem,
    }
    problems = [
        (key, f"{paths[key]}: {problem}")
        for key, text in texts.items()
        if (problem := checks[key](text)) is not None
    ]
    on_their_own = not any(key in ("cert_file", "key_file") for key, _ in problems)
    if "cert_file" in texts and "key_file" in texts and on_their_own:
        try:
            check_pem_set(texts, files)
        except TlsFilesUnusable as error:
            problems += error.problems
    return problems


_PRIVATE_KEY = re.compile(rb"-----BEGIN (?:RSA |EC |DSA )?PRIVATE KEY-----")
_ENCRYPTED_KEY = re.compile(rb"-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type: 4,ENCRYPTED")


def certificate_problem(text: bytes) -> str | None:
    """None when `text` is PEM holding at least one certificate OpenSSL parses."""
    if not text.strip():
        return "empty, not a PEM certificate"
    if b"-----BEGIN CERTIFICATE-----" not in text:
        return "holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=text.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError, ValueError) as error:
        return f"not a readable PEM certificate ({error})"
    return None


def ca_problem(text: bytes) -> str | None:
    """None when `text` holds a PEM CA certificate (an empty file trusts nobody)."""
    problem = certificate_problem(text)
    return None if problem is None else f"no PEM CA certificate: {problem}"


def private_key_problem(text: bytes) -> str | None:
    """None when `text` looks like an unencrypted PEM private key; whether it is
    the certificate's is the pair check's to say (check_pem_set)."""
    if not text.strip():
        return "empty, not a PEM private key"
    if _ENCRYPTED_KEY.search(text):
        return "an encrypted private key: Envoy and the controller read keys without a passphrase"
    if not _PRIVATE_KEY.search(text):
        return "holds no PEM private key (-----BEGIN PRIVATE KEY-----)"
    return None


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


def _load_chain(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """ssl loads a chain from paths only: the bytes go through private temporary files
    (mode 0600, removed at once), never through a path another process could swap."""
    with tempfile.TemporaryDirectory(prefix="xds-server-pem-") as directory:
        cert_path, key_path = Path(directory, "cert.pem"), Path(directory, "key.pem")
        cert_path.write_bytes(cert)
        key_path.touch(mode=0o600)
        key_path.write_bytes(key)
        context.load_cert_chain(cert_path, key_path)
