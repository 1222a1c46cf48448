"""The model tools' exception hierarchy (quantize, inspect, bench).

Split by whose fault it is: :class:`ToolInputError` means the caller gave something
unusable (a missing file, a calibration array of the wrong shape); :class:`AccuracyGateError`
means the tool worked but the result failed the caller's quality gate;
:class:`QuantizationError` means the quantizer itself failed on a valid model. Errors of
the agent runtime (``edgefleet.agent.runtime.errors``) pass through unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgefleet.tools.quantize import QuantizeReport


class ToolError(Exception):
    """Base of every error raised by ``edgefleet.tools`` model tools."""


class ToolInputError(ToolError):
    """A file or array given to a tool is missing, unreadable or of the wrong form."""


class QuantizationError(ToolError):
    """onnxruntime's quantizer failed on the model."""


class AccuracyGateError(ToolError):
    """The quantized model lost more accuracy than allowed; nothing was written.

    Attributes:
        report: the :class:`edgefleet.tools.quantize.QuantizeReport` with the figures.
    """

    def __init__(self, message: str, report: QuantizeReport) -> None:
        super().__init__(message)
        self.report = report
