"""Domain errors. Each class knows its gRPC status code; one interceptor maps them (see grpc_server)."""

from __future__ import annotations

import grpc


class ZdmError(Exception):
    """Base of every error a service reports to its caller on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    # Whether trying the same work again may succeed; False for errors about the request itself.
    retryable: bool = True

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(ZdmError):
    """The request itself is wrong: bad image, bad mask, bad hyperparameter, unknown layer."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    retryable = False


class BadImage(InvalidArgument):
    """An image that cannot be decoded or breaks the size limits."""


class NotFound(ZdmError):
    """A named thing (model, version, alias, job, dataset) does not exist."""

    code = grpc.StatusCode.NOT_FOUND
    retryable = False


class Unavailable(ZdmError):
    """The service cannot answer yet, e.g. no model is loaded."""

    code = grpc.StatusCode.UNAVAILABLE


class FailedPrecondition(ZdmError):
    """The request conflicts with the current state (job conflict, reused idempotency key)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    retryable = False


class DeadlineExceeded(ZdmError):
    """The caller's deadline passed before the work was done."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class PermissionDenied(ZdmError):
    """A path outside the configured data roots."""

    code = grpc.StatusCode.PERMISSION_DENIED
    retryable = False


class ResourceExhausted(ZdmError):
    """A limit was hit (queue full, too many pixels in a batch)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Cancelled(ZdmError):
    """The work was cancelled (a cancelled job, a cancelled call)."""

    code = grpc.StatusCode.CANCELLED


def error_class(name: str) -> type[ZdmError] | None:
    """The domain error class of this module called `name` (errors crossing a process boundary by name)."""
    pending: list[type[ZdmError]] = [ZdmError]
    while pending:
        cls = pending.pop()
        if cls.__name__ == name and cls.__module__ == __name__:
            return cls
        pending.extend(cls.__subclasses__())
    return None
