"""The package's public surface stays honest: sorted, importable, documented."""

from __future__ import annotations

import inspect

import stepstream


def test_all_is_sorted_and_importable() -> None:
    names = [name for name in stepstream.__all__ if name != "__version__"]
    assert names == sorted(names)
    for name in stepstream.__all__:
        assert hasattr(stepstream, name), name


def test_public_classes_and_functions_are_documented() -> None:
    for name in stepstream.__all__:
        value = getattr(stepstream, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            own = value.__dict__.get("__doc__") if inspect.isclass(value) else value.__doc__
            assert own and own.strip(), f"stepstream.{name} has no docstring of its own"


def test_errors_derive_from_one_base() -> None:
    for name in ("ValidationError", "CursorUnavailable", "RunNotFound", "NoWaiters", "StepFailed"):
        assert issubclass(getattr(stepstream, name), stepstream.StepstreamError)
    # Raised by user code to steer retries: plain exceptions, seen by the engine.
    assert not issubclass(stepstream.NonRetryableError, stepstream.StepstreamError)
