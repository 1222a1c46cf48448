"""The runtime's exception hierarchy.

Split by whose fault it is: ``ModelLoadError`` (the file), ``InputError`` and its
subclasses (the caller's input), ``InferenceError`` (the runtime failed on valid input).
Everything derives from ``RuntimeFault`` so callers can catch the package's errors in
one place without catching unrelated exceptions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class RuntimeFault(Exception):
    """Base class of every error raised by ``edgefleet.agent.runtime``."""


class ModelLoadError(RuntimeFault):
    """A model file could not be loaded: missing, empty, corrupt, truncated, unsupported.

    Attributes:
        path: the file that was being loaded.
        reason: a one-line, human-readable explanation.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot load model {self.path}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.reason))


class InputError(RuntimeFault, ValueError):
    """The caller's input does not fit the model's signature.

    Attributes:
        tensor: name of the input tensor concerned.
        expected: what the model accepts (text).
        got: what was passed (text).
    """

    def __init__(self, tensor: str, expected: str, got: str, detail: str = "") -> None:
        self.tensor = tensor
        self.expected = expected
        self.got = got
        self.detail = detail
        message = f"input {tensor!r}: expected {expected}, got {got}"
        if detail:
            message = f"{message} ({detail})"
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.tensor, self.expected, self.got, self.detail))


class InputShapeError(InputError):
    """Wrong rank, or a static dimension that does not match."""


class InputDtypeError(InputError):
    """A dtype that cannot be converted safely to the tensor's dtype."""


class MissingInputError(InputError):
    """A model input was not supplied."""


class UnknownInputError(InputError):
    """A name was supplied that is not an input of the model."""


class NonFiniteInputError(InputError):
    """NaN or infinity in an input while ``reject_non_finite`` is on."""


class EmptyBatchError(InputError):
    """An input with a zero-sized leading (batch) dimension."""


class InferenceError(RuntimeFault):
    """The runtime failed while running input that passed validation.

    Attributes:
        path: the model file of the runner that failed.
        reason: the runtime's message.
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"inference failed for model {self.path}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.reason))


__all__ = [
    "EmptyBatchError",
    "InferenceError",
    "InputDtypeError",
    "InputError",
    "InputShapeError",
    "MissingInputError",
    "ModelLoadError",
    "NonFiniteInputError",
    "RuntimeFault",
    "UnknownInputError",
]
