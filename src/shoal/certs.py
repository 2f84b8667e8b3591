"""`shoal certs`: a cluster's certificate authority and the certificates of its nodes.

    shoal certs --dir tls master daemon0 daemon1 ...

makes (or reuses) tls/ca.crt + tls/ca.key, then NAME.crt + NAME.key for each name, signed by
that CA, valid for localhost, 127.0.0.1, ::1 and every --host given. Keys are ECDSA P-256;
private keys are written 0600. An existing certificate is kept unless --force.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shoal.errors import InvalidArgument

CA_DAYS = 3650
_CA_USAGE = x509.KeyUsage(
    digital_signature=True, content_commitment=False, key_encipherment=False,
    data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
    encipher_only=False, decipher_only=False,
)  # fmt: skip
NODE_DAYS = 825


def _write(path: Path, data: bytes, private: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "shoal"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def ensure_ca(
    d: Path, cluster: str = "shoal cluster"
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    crt, key = d / "ca.crt", d / "ca.key"
    if crt.exists() and key.exists():
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
        k = serialization.load_pem_private_key(key.read_bytes(), password=None)
        if not isinstance(k, ec.EllipticCurvePrivateKey):
            raise InvalidArgument(f"{key} is not an EC key made by shoal certs")
        return cert, k
    d.mkdir(parents=True, exist_ok=True)
    k = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"{cluster} CA"))
        .issuer_name(_name(f"{cluster} CA"))
        .public_key(k.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .sign(k, hashes.SHA256())
    )
    _write(key, _key_pem(k), private=True)
    _write(crt, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return cert, k


def issue(d: Path, name: str, hosts: list[str], force: bool = False) -> tuple[Path, Path]:
    """NAME.crt and NAME.key in `d`, signed by the CA there (made if missing)."""
    if not name or "/" in name or name.startswith("."):
        raise InvalidArgument(f"a certificate name is a plain word, not {name!r}")
    crt, keyfile = d / f"{name}.crt", d / f"{name}.key"
    if crt.exists() and keyfile.exists() and not force:
        return crt, keyfile
    ca, ca_key = ensure_ca(d)
    k = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    alt: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.DNSName(name)]
    for h in ["127.0.0.1", "::1", *hosts]:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            alt.append(x509.DNSName(h))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca.subject)
        .public_key(k.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=NODE_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(keyfile, _key_pem(k), private=True)
    _write(crt, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return crt, keyfile
