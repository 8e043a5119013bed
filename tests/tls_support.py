"""Certificates for the tests: a CA made by the test (trustme), the controller's
server certificate for an IP, and client certificates naming node ids by DNS
SAN or URI SAN, written to PEM files.

trustme issues DNS, IP and e-mail names only; a URI SAN (SPIFFE style) is
signed here with the trustme CA's own key through `cryptography`.
"""

from __future__ import annotations

import datetime
import hashlib
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from xds_server.model.certificates import EdgeCertificate
from xds_server.pemfiles import TlsFiles


@dataclass(frozen=True)
class ClientFiles:
    cert_file: Path
    key_file: Path
    ca_file: Path  # the CA of the controller's certificate


class Pki:
    """One CA and the files it issued, under `directory`."""

    def __init__(self, directory: Path, name: str = "ca") -> None:
        self.directory = directory
        self.ca = trustme.CA(organization_name=f"xds-server tests {name}")
        self.ca_file = directory / f"{name}.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self._issued = 0

    def server_files(self, ip: str = "127.0.0.1", *, clients: bool = True) -> TlsFiles:
        """The controller's certificate for `ip`; with `clients`, client
        certificates of this CA are required."""
        cert, key = self._write(self.ca.issue_cert(ip), "server")
        return TlsFiles(cert, key, self.ca_file if clients else None)

    def backend_files(self, *names: str) -> tuple[Path, Path]:
        """A backend's certificate (chain) and key for `names` (DNS names or IPs)."""
        return self._write(self.ca.issue_cert(*names), "backend")

    def client_files(self, *dns_names: str, uris: tuple[str, ...] = ()) -> ClientFiles:
        if uris:
            cert_pem, key_pem = self._issue_with_uris(dns_names, uris)
            cert, key = self._paths("client")
            cert.write_bytes(cert_pem)
            key.write_bytes(key_pem)
        else:
            cert, key = self._write(self.ca.issue_cert(*dns_names), "client")
        return ClientFiles(cert, key, self.ca_file)

    def _paths(self, kind: str) -> tuple[Path, Path]:
        self._issued += 1
        stem = self.directory / f"{kind}-{self._issued}"
        return stem.with_suffix(".crt"), stem.with_suffix(".key")

    def _write(self, issued: trustme.LeafCert, kind: str) -> tuple[Path, Path]:
        cert, key = self._paths(kind)
        cert.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        issued.private_key_pem.write_to_path(str(key))
        return cert, key

    def _issue_with_uris(
        self, dns_names: tuple[str, ...], uris: tuple[str, ...]
    ) -> tuple[bytes, bytes]:
        ca_key = serialization.load_pem_private_key(self.ca.private_key_pem.bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(self.ca.cert_pem.bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        names += [x509.UniformResourceIdentifier(u) for u in uris]
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tests")]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem


def edge_certificate(
    ca: trustme.CA, name: str = "127.0.0.1", client_ca: bytes | None = None
) -> EdgeCertificate:
    """A listener certificate for `name` by content, as router.tls's files give it."""
    issued = ca.issue_cert(name)
    chain = b"".join(blob.bytes() for blob in issued.cert_chain_pems)
    return EdgeCertificate(chain, issued.private_key_pem.bytes(), client_ca)


def replace_pair(files: TlsFiles, certificate: EdgeCertificate) -> None:
    """Write a new certificate and key over `files`' paths, each by rename (as
    cert-manager and certbot do): a reader sees the old or the new file, never
    a torn one, though for a moment the new certificate beside the old key."""
    for path, data in (
        (files.cert_file, certificate.cert_chain),
        (files.key_file, certificate.private_key),
    ):
        staged = path.with_name(path.name + ".new")
        staged.write_bytes(data)
        staged.replace(path)


def leaf_fingerprint(pem_chain: bytes) -> str:
    """SHA-256 of the chain's first certificate (DER), as ssl's getpeercert(True) gives it."""
    first = pem_chain.split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n"
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(first.decode())).hexdigest()
