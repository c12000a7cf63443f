"""The transport floor: a bare Python gRPC server whose only handler waits, then answers.

``python bench/grpc_echo.py PORT`` serves ``/zdm.bench.Echo/Hold`` until killed: the request is an
8-byte little-endian float (seconds to wait) followed by any payload; the reply is 200 bytes (about a
Verdict). The classifier benchmark calls it like the classifier (same process layout, same payload,
the in-process pipeline's time as the wait), so ``client time - wait`` is what a Python gRPC service
pays on this machine before any code of ours runs.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path

import grpc

METHOD = "/zdm.bench.Echo/Hold"
_REPLY = b"v" * 200


def _hold(request: bytes, context: grpc.ServicerContext) -> bytes:
    (seconds,) = struct.unpack_from("<d", request)
    time.sleep(seconds)
    return _REPLY


def serve(port: int, threads: int = 16) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(threads))
    handler = grpc.method_handlers_generic_handler("zdm.bench.Echo", {"Hold": grpc.unary_unary_rpc_method_handler(_hold)})
    server.add_generic_rpc_handlers([handler])
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


class EchoFloor:
    """The echo server in a subprocess and one client channel to it."""

    def __init__(self, port: int) -> None:
        self._proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), str(port)])
        self._channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(self._channel).result(timeout=60)
        self._call = self._channel.unary_unary(METHOD)

    def overheads_ms(self, payloads: list[bytes], hold_ms: float, calls: int) -> list[float]:
        """Client-side time minus the wait, per call, for ``calls`` calls (after a short warm-up)."""
        header = struct.pack("<d", hold_ms / 1000)
        requests = [header + p for p in payloads]
        for r in requests[:10]:
            self._call(r, timeout=30)
        out = []
        for i in range(calls):
            start = time.perf_counter()
            self._call(requests[i % len(requests)], timeout=30)
            out.append((time.perf_counter() - start) * 1000 - hold_ms)
        return out

    def close(self) -> None:
        self._channel.close()
        self._proc.kill()
        self._proc.wait()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
