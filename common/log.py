"""Logging configured once per process, with request / job ids carried in contextvars."""

from __future__ import annotations

import contextvars
import logging
import os

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
job_id: contextvars.ContextVar[str] = contextvars.ContextVar("job_id", default="-")

_configured = False


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        record.job_id = job_id.get()
        return True


def setup_logging(service: str, level: str | None = None) -> None:
    """Configure the root logger once: one line per record, service name and context ids included."""
    global _configured
    if _configured:
        return
    handler = logging.StreamHandler()
    handler.addFilter(_ContextFilter())
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s %(levelname)-5s {service} [req=%(request_id)s job=%(job_id)s] %(name)s: %(message)s"
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("ZDM_LOG_LEVEL", "INFO")).upper())
    _configured = True
