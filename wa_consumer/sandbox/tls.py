"""The sandbox's TLS: a local CA made at start and a server certificate it signed.

Meta serves the Cloud API over HTTPS only, so a sandbox that answers like Meta costs the
client a TLS handshake per connection and encryption per request. A daemon trusts the CA
through ``WA_GRAPH_CA_FILE`` (both transports load it on top of the system's roots).

Two certificates, not one: rustls (the ``pyreqwest`` transport) refuses a self-signed
certificate that is its own CA as an end-entity certificate, so the CA (``CA:TRUE``, signs
certificates) and the server's (``CA:FALSE``, ``serverAuth``, names ``localhost`` and
``127.0.0.1``) are distinct. Keys are ECDSA P-256, like the certificates graph.facebook.com
presents; both are valid for two days, which is all a sandbox run needs.

The server offers HTTP/2 and HTTP/1.1 by ALPN (``h2`` first, as Meta does); HTTP/2 is served
by ``sandbox/http2.py``, HTTP/1.1 by aiohttp.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_FILE = "sandbox-ca.pem"
CERT_FILE = "sandbox-server.pem"
KEY_FILE = "sandbox-server.key"
VALID_FOR = datetime.timedelta(days=2)
NAMES = ("localhost",)
ADDRESSES = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class SandboxTls:
    """The files of one sandbox's TLS: the CA to trust, the server's certificate and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self, *, http2: bool = True) -> ssl.SSLContext:
        """A server context with the certificate; by ALPN ``h2`` (if ``http2``), ``http/1.1``."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        context.set_alpn_protocols(["h2", "http/1.1"] if http2 else ["http/1.1"])
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "wa-consumer sandbox"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_tls(where: Path) -> SandboxTls:
    """A new CA and a server certificate it signed, written to ``where`` (made if missing).

    The keys are written owner-only; the CA's private key is not written at all (nothing else
    is ever signed with it).
    """
    where.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + VALID_FOR

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("wa-consumer sandbox CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = [x509.DNSName(name) for name in NAMES]
    alt_names += [x509.IPAddress(ipaddress.ip_address(address)) for address in ADDRESSES]
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    ca_file, cert_file, key_file = where / CA_FILE, where / CERT_FILE, where / KEY_FILE
    ca_file.write_bytes(ca_cert.public_bytes(pem))
    cert_file.write_bytes(server_cert.public_bytes(pem))
    key_file.touch(mode=0o600)
    key_file.chmod(0o600)
    key_file.write_bytes(
        server_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return SandboxTls(ca_file, cert_file, key_file)
