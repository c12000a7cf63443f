"""'Model published' announcements over Redis pub/sub; consumers also poll the registry as a fallback."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import redis

log = logging.getLogger(__name__)


def channel(prefix: str) -> str:
    return f"{prefix}:events:models"


def announce(client: redis.Redis, prefix: str, name: str, version: int) -> None:
    client.publish(channel(prefix), json.dumps({"name": name, "version": version}))


def listen(client: redis.Redis, prefix: str, on_event: Callable[[str, int], None],
           stop: Callable[[], bool]) -> None:
    """Blocking loop: call on_event(name, version) for each announcement until stop() is true."""
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel(prefix))
    try:
        while not stop():
            message = pubsub.get_message(timeout=0.5)
            if not message:
                continue
            try:
                event = json.loads(message["data"])
                on_event(str(event["name"]), int(event["version"]))
            except (ValueError, KeyError, TypeError):
                log.warning("ignoring malformed model event %r", message.get("data"))
    finally:
        pubsub.close()
