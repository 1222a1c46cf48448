"""Affine (de)quantization of model inputs and outputs, precomputed per tensor.

``real = (q - zero_point) * scale``; quantizing rounds half to even and clips to the
integer dtype's range, so out-of-range inputs saturate instead of wrapping around.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgefleet.agent.runtime.signature import Quantization

_F32 = np.dtype(np.float32)


class QuantParams:
    """The arrays needed to (de)quantize one tensor, built once at load time.

    Per-channel parameters are reshaped to broadcast along their axis for a tensor of
    the given rank, so the per-call work is one divide, round, add, clip and cast.
    """

    __slots__ = ("dtype", "hi", "lo", "scale", "zero_point")

    def __init__(self, quantization: Quantization, dtype: np.dtype[Any], rank: int) -> None:
        """Raises:
        ValueError: the dtype is not an integer type, or a per-channel axis is out of
            range for the tensor's rank.
        """
        if dtype.kind not in "iu":
            raise ValueError(f"quantized tensors must be integer, not {dtype}")
        info = np.iinfo(dtype)
        self.dtype = dtype
        self.lo = float(info.min)
        self.hi = float(info.max)
        scale = np.asarray(quantization.scales, dtype=_F32)
        zero = np.asarray(quantization.zero_points, dtype=_F32)
        if quantization.per_channel:
            axis = quantization.axis if quantization.axis is not None else 0
            if axis < 0:
                axis += rank
            if not 0 <= axis < rank:
                raise ValueError(
                    f"quantization axis {quantization.axis} out of range for rank {rank}"
                )
            shape = [1] * rank
            shape[axis] = scale.size
            scale = scale.reshape(shape)
            zero = zero.reshape(shape)
            self.scale: np.ndarray | np.float32 = scale
            self.zero_point: np.ndarray | np.float32 = zero
        else:
            self.scale = np.float32(scale[0])
            self.zero_point = np.float32(zero[0])

    def quantize(self, values: np.ndarray) -> np.ndarray:
        """Real values -> integers of ``self.dtype`` (round half to even, saturate)."""
        scaled = np.asarray(values, dtype=_F32) / self.scale
        np.rint(scaled, out=scaled)
        scaled += self.zero_point
        # minimum/maximum rather than np.clip: same result, a fraction of the call cost.
        np.minimum(scaled, self.hi, out=scaled)
        np.maximum(scaled, self.lo, out=scaled)
        return scaled.astype(self.dtype)

    def dequantize(self, values: np.ndarray) -> np.ndarray:
        """Integers -> float32 real values."""
        real = values.astype(_F32)
        real -= self.zero_point
        real *= self.scale
        return real


def quantize(values: np.ndarray, quantization: Quantization, dtype: np.dtype[Any]) -> np.ndarray:
    """Quantize ``values`` with ``quantization`` into ``dtype`` (convenience for tools).

    Raises:
        ValueError: ``dtype`` is not an integer type or the axis does not fit.
    """
    array = np.asarray(values, dtype=_F32)
    return QuantParams(quantization, np.dtype(dtype), array.ndim).quantize(array)


def dequantize(values: np.ndarray, quantization: Quantization) -> np.ndarray:
    """Dequantize integer ``values`` to float32 with ``quantization``.

    Raises:
        ValueError: ``values`` is not an integer array or the axis does not fit.
    """
    array = np.asarray(values)
    return QuantParams(quantization, array.dtype, array.ndim).dequantize(array)
