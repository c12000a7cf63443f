"""A private CA and certificates for TLS / mutual TLS between zdm services and clients (docs/security.md).

``python scripts/make_certs.py secrets/`` writes PEM files:

- ``ca.crt`` (trust anchor: ZDM_TLS_CA everywhere) and ``ca.key`` (keep offline: it issues more);
- ``<service>.crt`` / ``.key`` for trainer, classifier and explainer: SANs the service name, ``localhost``
  and ``127.0.0.1`` (plus ``--host`` names), usable as server AND client certificate (the container's own
  health probe presents it under mutual TLS);
- ``client.crt`` / ``.key``: a client certificate (``--client NAME`` for more).

With ``--compose`` it also writes what docker-compose.yml mounts: ``tokens.yaml`` (one token per role,
printed once: only their hashes are stored), ``redis_password`` and ``redis.conf`` (``requirepass``), with
keys readable by the containers' user (compose bind-mounts secrets with the host's permissions).

For production use your organisation's CA (or cert-manager in Kubernetes); this is for trying TLS out, for
compose on one machine, and for the tests. Needs the ``cryptography`` package (dev extra).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # `python scripts/make_certs.py` from a checkout

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID  # noqa: E402

SERVICES = ("trainer", "classifier", "explainer")
CertKey = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(builder: x509.CertificateBuilder, days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(
        now + datetime.timedelta(days=days))


def make_ca(common_name: str, days: int = 365) -> CertKey:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, encipher_only=False, decipher_only=False),
                              critical=True))
    return _validity(builder, days).sign(key, hashes.SHA256()), key


def issue(ca: CertKey, common_name: str, *, hosts: list[str] = (), server: bool = True, client: bool = True,
          days: int = 365) -> CertKey:
    """A leaf certificate signed by ``ca``; ``hosts`` (DNS names or IP addresses) become its SANs."""
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    usages = [u for u, on in ((ExtendedKeyUsageOID.SERVER_AUTH, server), (ExtendedKeyUsageOID.CLIENT_AUTH, client)) if on]
    builder = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
    if hosts:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return _validity(builder, days).sign(ca_key, hashes.SHA256()), key


def write(folder: Path, stem: str, pair: CertKey, *, key_mode: int = 0o600) -> Pair:
    cert, key = pair
    cert_path, key_path = folder / f"{stem}.crt", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=key_mode)
    key_path.chmod(key_mode)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return Pair(cert_path, key_path)


def write_compose_secrets(folder: Path) -> dict[str, str]:
    """tokens.yaml (a token per role), redis_password and redis.conf; returns name -> token (shown once)."""
    import json
    import secrets

    from common.auth import ROLES, token_sha256

    tokens = {role: secrets.token_urlsafe(32) for role in ROLES}
    entries = [{"name": f"compose-{role}", "roles": [role], "sha256": token_sha256(t)} for role, t in tokens.items()]
    (folder / "tokens.yaml").write_text(json.dumps({"tokens": entries}, indent=2) + "\n", encoding="utf-8")
    password = secrets.token_urlsafe(32)
    (folder / "redis_password").write_text(password + "\n", encoding="utf-8")
    (folder / "redis.conf").write_text(f"requirepass {password}\n", encoding="utf-8")
    return {f"compose-{role}": t for role, t in tokens.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--host", action="append", default=[], help="extra SAN on the service certificates")
    parser.add_argument("--namespace", default="", help="Kubernetes namespace: adds <service>.<ns>.svc[.cluster.local]")
    parser.add_argument("--client", action="append", default=[], help="client certificate names (default: client)")
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--compose", action="store_true", help="also tokens.yaml and the Redis password files")
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    key_mode = 0o644 if args.compose else 0o600
    ca = make_ca("zdm private CA", args.days)
    ca_files = write(args.folder, "ca", ca)
    for service in SERVICES:
        in_cluster = [f"{service}.{args.namespace}.svc", f"{service}.{args.namespace}.svc.cluster.local"] \
            if args.namespace else []
        hosts = [service, *in_cluster, "localhost", "127.0.0.1", *args.host]
        write(args.folder, service, issue(ca, service, hosts=hosts,
                                         days=args.days), key_mode=key_mode)
    for name in args.client or ["client"]:
        write(args.folder, name, issue(ca, name, server=False, days=args.days), key_mode=key_mode)
    print(f"CA {ca_files.cert} (its key {ca_files.key}: keep it offline); certificates for {', '.join(SERVICES)} "
          f"and {', '.join(args.client or ['client'])} in {args.folder}")
    if args.compose:
        for name, token in write_compose_secrets(args.folder).items():
            print(f"token {name}: {token}")
        print("(only their SHA-256 is in tokens.yaml: keep the tokens now; ZDM_TOKEN=<token> for the SDK / CLI)")


if __name__ == "__main__":
    main()
