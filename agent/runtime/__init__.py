"""Run ONNX and TFLite models behind one ``ModelRunner`` interface.

``load_model`` picks the backend from the file's bytes (checked against its extension),
so callers never name a runtime. Every failure to load is a ``ModelLoadError`` naming the
file and the reason; bad inputs are typed ``InputError`` subclasses (see ``errors``).
"""

from __future__ import annotations

import os
from pathlib import Path

from edgefleet.agent.runtime.base import ModelRunner
from edgefleet.agent.runtime.detect import NotAModel, detect_framework, framework_for_extension
from edgefleet.agent.runtime.errors import ModelLoadError
from edgefleet.agent.runtime.signature import (
    Framework,
    Quantization,
    RunnerOptions,
    Signature,
    TensorSpec,
)

__all__ = [
    "Framework",
    "ModelRunner",
    "Quantization",
    "RunnerOptions",
    "Signature",
    "TensorSpec",
    "load_model",
]


def load_model(path: str | os.PathLike[str], options: RunnerOptions | None = None) -> ModelRunner:
    """Load a model file with the runtime its content calls for.

    Args:
        path: an ``.onnx`` or ``.tflite`` file (the content decides; a known extension
            that contradicts the content is refused).
        options: threads and input checks; defaults to ``RunnerOptions()``.

    Raises:
        ModelLoadError: the file is missing, unreadable, not a model, truncated, of an
            unsupported format, or the runtime refuses it. Never anything else.
    """
    file = Path(path)
    options = options if options is not None else RunnerOptions()
    try:
        data = file.read_bytes()
    except IsADirectoryError:
        raise ModelLoadError(file, "is a directory, not a model file") from None
    except FileNotFoundError:
        raise ModelLoadError(file, "no such file") from None
    except OSError as exc:
        raise ModelLoadError(file, f"cannot read it: {exc.strerror or exc}") from exc
    try:
        framework = detect_framework(data)
    except NotAModel as exc:
        raise ModelLoadError(file, str(exc)) from None
    announced = framework_for_extension(file.suffix)
    if announced is not None and announced is not framework:
        raise ModelLoadError(
            file,
            f"the extension {file.suffix!r} says {announced.value} "
            f"but the content is {framework.value}",
        )
    if framework is Framework.ONNX:
        from edgefleet.agent.runtime.onnx_backend import OnnxRunner

        return OnnxRunner(file, options, len(data))
    # Backends import their runtime lazily: a device may have only one of them.
    from edgefleet.agent.runtime.tflite_backend import TFLiteRunner

    return TFLiteRunner(file, options, len(data), data)
