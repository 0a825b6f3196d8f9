"""TLS for a GrainCluster: a CA and the executor's certificate, made by the operator (pure).

``issue`` makes a fresh CA and a server certificate for the executor's Service names
(``NAME-executor``, ``.NS``, ``.NS.svc``, ``.NS.svc.cluster.local``, and
``spec.executor.externalHost`` when set), both ECDSA P-256, valid ``VALIDITY``. The CA's
private key is thrown away once the certificate is signed: nobody (the operator included)
can mint another certificate this CA vouches for, and no Secret holds a key that could. When
the certificate must be renewed (``renewal_reason``: expiring within ``RENEW_BEFORE``, names
changed, or unreadable) a new CA and certificate are issued together; the client Secrets get
the new ``ca.crt`` and the pods roll (their templates carry a digest of the certificate).

The Secret ``NAME-tls`` (type kubernetes.io/tls: ``ca.crt``, ``tls.crt``, ``tls.key``) is
mounted by the executor (certificate and key) and the workers (``ca.crt`` only). Clients
verify the name ``NAME-executor.NS.svc`` whatever address they dial (a port-forward on
127.0.0.1, a node port), so no IP address is in the certificate.
"""

from __future__ import annotations

import base64
import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from grain_operator.names import Owner, metadata, secret_labels

VALIDITY = datetime.timedelta(days=730)
RENEW_BEFORE = datetime.timedelta(days=30)
CA_KEY, CERT_KEY, PRIVATE_KEY = "ca.crt", "tls.crt", "tls.key"


@dataclass(frozen=True)
class Issued:
    """PEM texts of a CA certificate, a server certificate and its key."""

    ca_pem: str
    cert_pem: str
    key_pem: str


def dns_names(owner: Owner, external_host: str | None = None) -> list[str]:
    """The names the executor's certificate must carry."""
    svc = owner.executor_name
    names = [svc, f"{svc}.{owner.namespace}", owner.service_host, f"{owner.service_host}.cluster.local"]
    if external_host and external_host not in names and not _is_ip(external_host):
        names.append(external_host)
    return names


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def issue(owner: Owner, names: list[str], now: datetime.datetime | None = None) -> Issued:
    """A new CA and a server certificate for ``names``, signed by it; the CA key is dropped."""
    now = now or _now()
    start, end = now - datetime.timedelta(minutes=5), now + VALIDITY
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Grain"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"Grain CA of {owner.namespace}/{owner.name}"),
    ])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, owner.service_host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return Issued(
        ca_pem=ca_cert.public_bytes(pem).decode(),
        cert_pem=cert.public_bytes(pem).decode(),
        key_pem=key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode(),
    )


def renewal_reason(issued: Issued | None, names: list[str], now: datetime.datetime | None = None) -> str | None:
    """Why these certificates must be issued again (None while they are good)."""
    if issued is None:
        return "no certificate yet"
    try:
        ca = x509.load_pem_x509_certificate(issued.ca_pem.encode())
        cert = x509.load_pem_x509_certificate(issued.cert_pem.encode())
        key = serialization.load_pem_private_key(issued.key_pem.encode(), password=None)
    except ValueError as exc:
        return f"unreadable certificate ({exc})"
    if cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != \
            key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        return "the key does not match the certificate"
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        return f"the certificate is not signed by ca.crt ({type(exc).__name__})"
    missing = sorted(set(names) - set(certificate_names(cert)))
    if missing:
        return f"the certificate does not name {', '.join(missing)}"
    expires = min(cert.not_valid_after_utc, ca.not_valid_after_utc)
    if expires - (now or _now()) < RENEW_BEFORE:
        return f"the certificate expires on {expires:%Y-%m-%d}"
    return None


def certificate_names(cert: x509.Certificate) -> list[str]:
    """The DNS names of a certificate's subjectAltName."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return list(san.get_values_for_type(x509.DNSName))


def named_secret_names_problem(cert_pem: str, owner: Owner) -> str | None:
    """For a certificate the admin provides: it must name the executor Service's DNS name."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError as exc:
        return f"tls.crt is not a PEM certificate ({exc})"
    if owner.service_host not in certificate_names(cert):
        return f"its certificate does not name {owner.service_host}"
    return None


def from_secret(data: dict[str, str | None]) -> Issued | None:
    """The PEM texts of a TLS Secret's decoded keys; None when one is missing."""
    ca, cert, key = data.get(CA_KEY), data.get(CERT_KEY), data.get(PRIVATE_KEY)
    if not (ca and cert and key):
        return None
    return Issued(ca, cert, key)


def secret(owner: Owner, issued: Issued) -> dict[str, object]:
    """``NAME-tls``, of type kubernetes.io/tls, plus ``ca.crt``."""
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return {
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {**metadata(owner, owner.tls_name, "tls"), "labels": secret_labels(owner, "tls")},
        "data": {CA_KEY: b64(issued.ca_pem), CERT_KEY: b64(issued.cert_pem), PRIVATE_KEY: b64(issued.key_pem)},
    }
