"""A throwaway PKI for TLS tests (scripts/make_certs.py does the issuing): a CA, a server certificate for
127.0.0.1 / localhost that may also act as a client, a client certificate, and a stranger's from another CA."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scripts.make_certs import Pair, issue, make_ca, write


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: Pair
    client: Pair
    stranger: Pair  # a client certificate from another CA


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca = make_ca("zdm test CA", days=1)
    ca_path = write(folder, "ca", ca).cert
    return Pki(
        ca=ca_path,
        server=write(folder, "server", issue(ca, "zdm-server", hosts=["localhost", "127.0.0.1"], days=1)),
        client=write(folder, "client", issue(ca, "line-3", server=False, days=1)),
        stranger=write(folder, "stranger", issue(make_ca("someone else's CA", days=1), "intruder", server=False,
                                                 days=1)),
    )
