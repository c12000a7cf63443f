"""JSON log lines: one object per record with the context ids, the active trace and the traceback."""

from __future__ import annotations

import json
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider

from common import log as log_context
from common.log import formatter


def _record(message: str, *args: object, exc_info=None) -> logging.LogRecord:
    record = logging.LogRecord("zdm.test", logging.WARNING, __file__, 1, message, args, exc_info)
    log_context._ContextFilter().filter(record)
    return record


def test_json_lines_carry_ids_trace_and_exception() -> None:
    fmt = formatter("trainer", "json")
    token = log_context.job_id.set("job-7")
    try:
        tracer = TracerProvider().get_tracer("t")
        with tracer.start_as_current_span("s") as span:
            try:
                raise ValueError("broken")
            except ValueError:
                import sys

                line = fmt.format(_record("job %s: %d%%", "x", 50, exc_info=sys.exc_info()))
    finally:
        log_context.job_id.reset(token)
    entry = json.loads(line)
    assert entry["message"] == "job x: 50%" and entry["level"] == "WARNING" and entry["service"] == "trainer"
    assert entry["job_id"] == "job-7" and "request_id" not in entry  # unset ids are left out
    assert entry["trace_id"] == f"{span.get_span_context().trace_id:032x}"
    assert "ValueError: broken" in entry["exception"]
    assert entry["ts"].endswith("Z")


def test_text_stays_the_default_and_unknown_formats_fail() -> None:
    assert "req=-" in formatter("x", "text").format(_record("hello"))
    with pytest.raises(ValueError, match="log format"):
        formatter("x", "yaml")
