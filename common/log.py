"""Logging configured once per process, with request / job ids carried in contextvars.

Two formats: ``text`` (one readable line per record) and ``json`` (one JSON object per line, for log
shippers: time, level, service, logger, message, request / job ids, the trace and span ids when a span
is active, and the traceback of an exception).
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import time

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
job_id: contextvars.ContextVar[str] = contextvars.ContextVar("job_id", default="-")

FORMATS = ("text", "json")

_configured = False


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        record.job_id = job_id.get()
        return True


def _trace_ids() -> tuple[str, str] | None:
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "job_id"):
            value = getattr(record, key, "-")
            if value != "-":
                entry[key] = value
        ids = _trace_ids()
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def formatter(service: str, fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter(service)
    if fmt != "text":
        raise ValueError(f"log format must be one of {FORMATS}, got {fmt!r}")
    return logging.Formatter(
        f"%(asctime)s %(levelname)-5s {service} [req=%(request_id)s job=%(job_id)s] %(name)s: %(message)s")


def setup_logging(service: str, level: str | None = None, fmt: str | None = None) -> None:
    """Configure the root logger once: service name and context ids on every record; ``fmt`` text | json."""
    global _configured
    if _configured:
        return
    handler = logging.StreamHandler()
    handler.addFilter(_ContextFilter())
    handler.setFormatter(formatter(service, (fmt or os.environ.get("ZDM_LOG_FORMAT", "text")).lower()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("ZDM_LOG_LEVEL", "INFO")).upper())
    _configured = True
