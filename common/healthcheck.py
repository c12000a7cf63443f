"""A tiny gRPC health probe for container healthchecks: ``python -m common.healthcheck HOST:PORT [SERVICE]``.

Asks ``grpc.health.v1.Health/Check`` for SERVICE (default ``""``, the whole server) and exits 0 only
when the answer is SERVING. Anything else exits 1 and says why on stderr: NOT_SERVING, an unknown
service (NOT_FOUND), a refused connection, a timeout, or a malformed command line. Docker reserves
exit code 2 for healthchecks, so usage errors exit 1 too.

With ``ZDM_TLS_CA`` set it speaks TLS, verifying the server with that CA, and presents
``ZDM_TLS_CERT`` / ``ZDM_TLS_KEY`` when set (mutual TLS: inside a container these are the service's own
certificate, which then needs the clientAuth usage too; scripts/make_certs.py issues such). ``--any-status``
accepts any answer (a liveness probe: the server answers, whether or not a model is loaded yet).

It imports only grpcio and grpcio-health-checking (no torch), so a probe costs a fraction of a second.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
EXIT_SERVING = 0
EXIT_UNHEALTHY = 1


def _channel(target: str) -> grpc.Channel:
    def pem(name: str) -> bytes | None:
        value = os.environ.get(name, "")
        return Path(value).read_bytes() if value else None

    ca = pem("ZDM_TLS_CA")
    if ca is None:
        return grpc.insecure_channel(target)
    return grpc.secure_channel(target, grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=pem("ZDM_TLS_KEY"), certificate_chain=pem("ZDM_TLS_CERT")))


def check(target: str, service: str = "", timeout: float = 3.0, *, any_status: bool = False) -> tuple[bool, str]:
    """Return (serving, message) for one Health/Check call against ``target`` (``host:port``).

    With ``any_status`` every answer counts as healthy (NOT_SERVING included; NOT_FOUND and errors do not).
    """
    with _channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            name = code.name if code is not None else "UNKNOWN"
            return False, f"{target} {service or '<server>'}: {name}: {exc.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == SERVING or any_status, f"{target} {service or '<server>'}: {status}"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_UNHEALTHY, f"{self.prog}: error: {message}\n")


def _target(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="python -m common.healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("target", type=_target, help="HOST:PORT of the gRPC server, e.g. 127.0.0.1:50052")
    parser.add_argument("service", nargs="?", default="",
                        help="service name to check, e.g. zdm.v1.Classifier (default: the whole server)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer (default 3)")
    parser.add_argument("--any-status", action="store_true",
                        help="healthy on any answer, NOT_SERVING included (liveness rather than readiness)")
    args = parser.parse_args(argv)
    serving, message = check(args.target, args.service, args.timeout, any_status=args.any_status)
    print(message, file=sys.stdout if serving else sys.stderr)
    return EXIT_SERVING if serving else EXIT_UNHEALTHY


if __name__ == "__main__":
    sys.exit(main())
