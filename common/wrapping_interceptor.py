"""A server interceptor that wraps each method's handler once and reuses the wrapper on every call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc


class WrappingInterceptor(grpc.ServerInterceptor):
    """Subclasses say how to wrap one method's handler (``_wrap``); wrappers are cached per method.

    The interceptor runs on every call, so building the wrapper each time would cost a closure per call;
    the cache is keyed on the method and checked against the original handler in case it changes.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Any, Any]] = {}  # method -> (original handler, wrapped)

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: Any, method: str) -> Any:
        raise NotImplementedError
