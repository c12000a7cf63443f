"""Server-side TLS credentials from the security settings (docs/security.md)."""

from __future__ import annotations

import grpc

from common.settings import SecuritySettings


def server_credentials(security: SecuritySettings) -> grpc.ServerCredentials:
    """TLS with the configured certificate; with a CA, client certificates signed by it are required."""
    assert security.tls_cert is not None and security.tls_key is not None
    ca = security.tls_ca.read_bytes() if security.tls_ca is not None else None
    return grpc.ssl_server_credentials([(security.tls_key.read_bytes(), security.tls_cert.read_bytes())],
                                       root_certificates=ca, require_client_auth=ca is not None)
