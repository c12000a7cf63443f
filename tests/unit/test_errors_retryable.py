"""Retryability is a property of the error: errors about the request fail a job at once, others retry."""

from __future__ import annotations

import pytest

from common import errors


@pytest.mark.parametrize("cls", [errors.InvalidArgument, errors.BadImage, errors.NotFound, errors.PermissionDenied,
                                 errors.FailedPrecondition])
def test_errors_about_the_request_are_not_retryable(cls: type[errors.ZdmError]) -> None:
    assert cls("x").retryable is False


@pytest.mark.parametrize("cls", [errors.ZdmError, errors.Unavailable, errors.DeadlineExceeded, errors.ResourceExhausted])
def test_transient_errors_are_retryable(cls: type[errors.ZdmError]) -> None:
    assert cls("x").retryable is True


def test_error_classes_are_found_by_name_across_a_process_boundary() -> None:
    assert errors.error_class("BadImage") is errors.BadImage
    assert errors.error_class("Unavailable") is errors.Unavailable
    assert errors.error_class("RuntimeError") is None
    assert errors.error_class("NoSuchError") is None
