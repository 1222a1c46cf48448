"""The ``ModelRunner`` interface and the input/output handling every backend shares.

A backend only loads the model, describes its signature and runs arrays that already
fit that signature (``_run``). Validation, conversion and (de)quantization live here,
precomputed per tensor at load time so the per-call path is a few attribute reads,
one shape comparison per static dimension and the unavoidable numpy work.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from edgefleet.agent.runtime.errors import (
    EmptyBatchError,
    InputDtypeError,
    InputShapeError,
    MissingInputError,
    NonFiniteInputError,
    UnknownInputError,
)
from edgefleet.agent.runtime.quant import QuantParams
from edgefleet.agent.runtime.signature import (
    Framework,
    RunnerOptions,
    Signature,
    TensorSpec,
)

_F32 = np.dtype(np.float32)
_NUMERIC_KINDS = "biuf"
_FINITE_PROBE = 2.0**-100


def _shape_text(shape: Sequence[object]) -> str:
    dims = ["?" if d is None else str(d) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


class _InputPlan:
    """Everything needed to check and convert one input, computed once at load time."""

    __slots__ = (
        "check_finite",
        "dtype",
        "name",
        "probe",
        "quant",
        "rank",
        "shape_text",
        "static",
        "target_kind",
    )

    def __init__(self, spec: TensorSpec, reject_non_finite: bool) -> None:
        self.name = spec.name
        self.dtype = spec.dtype
        self.rank = spec.rank
        self.static = tuple((axis, d) for axis, d in enumerate(spec.shape) if isinstance(d, int))
        self.shape_text = _shape_text(spec.shape)
        self.quant = (
            QuantParams(spec.quantization, spec.dtype, spec.rank)
            if spec.quantization is not None
            else None
        )
        self.target_kind = spec.dtype.kind
        self.probe = np.zeros(0, dtype=_F32)
        self.check_finite = reject_non_finite and (
            self.quant is not None or self.target_kind == "f"
        )

    def prepare(self, value: object, raw: bool) -> np.ndarray:
        """Validate one input and convert it to what the runtime takes.

        Raises:
            InputShapeError, EmptyBatchError, InputDtypeError, NonFiniteInputError.
        """
        array = value if type(value) is np.ndarray else self._to_array(value)
        shape = array.shape
        if len(shape) != self.rank:
            raise InputShapeError(
                self.name,
                f"rank {self.rank} shape {self.shape_text}",
                f"rank {len(shape)} shape {_shape_text(shape)}",
            )
        if array.size == 0:
            if shape[0] == 0:
                raise EmptyBatchError(
                    self.name, f"at least one sample, shape {self.shape_text}",
                    f"shape {_shape_text(shape)}",
                )
            raise InputShapeError(
                self.name, f"shape {self.shape_text}", f"shape {_shape_text(shape)}",
                "zero-sized dimension",
            )
        for axis, size in self.static:
            if shape[axis] != size:
                raise InputShapeError(
                    self.name, f"shape {self.shape_text}", f"shape {_shape_text(shape)}",
                    f"dimension {axis} must be {size}",
                )
        dtype = array.dtype
        quant = self.quant
        if quant is not None:
            if raw:
                if dtype != self.dtype:
                    raise InputDtypeError(
                        self.name, f"dtype {self.dtype} (raw quantized input)", f"dtype {dtype}",
                        "raw=True passes integers as-is; pass real values with raw=False",
                    )
                return array
            if dtype.kind not in _NUMERIC_KINDS:
                raise InputDtypeError(self.name, "real numbers (quantized input)", f"dtype {dtype}")
            if dtype is not _F32:
                array = array.astype(_F32)
            if self.check_finite:
                if not self._all_finite(array):
                    self._check_finite(array)
                return quant.quantize(array)
            # Allowed non-finite values: NaN becomes the zero point, +-inf saturates.
            with np.errstate(over="ignore", invalid="ignore"):
                return quant.quantize(np.nan_to_num(array, nan=0.0))
        if dtype is not self.dtype and dtype != self.dtype:
            array = self._convert(array)
        if self.check_finite and not self._all_finite(array):
            self._check_finite(array)
        return array

    def _to_array(self, value: object) -> np.ndarray:
        try:
            array = np.asarray(value)
        except (ValueError, TypeError) as exc:
            raise InputShapeError(
                self.name, f"an array of shape {self.shape_text}", f"{type(value).__name__}",
                f"not convertible to an array: {exc}",
            ) from exc
        if array.dtype.kind == "O":
            raise InputDtypeError(
                self.name, f"dtype {self.dtype}", "Python objects", "ragged or non-numeric data"
            )
        return array

    def _convert(self, array: np.ndarray) -> np.ndarray:
        got = array.dtype
        target = self.dtype
        kind = self.target_kind
        ok = False
        if kind == "f":
            # ints and bools become floats; floats only within their kind (f64 -> f32).
            ok = got.kind in "biu" or (got.kind == "f" and np.can_cast(got, target, "same_kind"))
        elif kind in "iu":
            if got.kind in "biu":
                ok = np.can_cast(got, target, "safe") or self._ints_fit(array)
        elif kind == "b":
            ok = got.kind == "b"
        else:  # strings and other exotic inputs go to the runtime unchanged
            return array
        if not ok:
            raise InputDtypeError(
                self.name, f"dtype {target}", f"dtype {got}", "no safe conversion"
            )
        return array.astype(target)

    def _ints_fit(self, array: np.ndarray) -> bool:
        info = np.iinfo(self.dtype)
        return bool(array.min() >= info.min and array.max() <= info.max)

    def _all_finite(self, array: np.ndarray) -> bool:
        """True when no element is NaN or infinite: one BLAS dot product, no temporary.

        ``x @ w`` with every weight ``2**-100`` is finite exactly when ``x`` is: finite
        values shrink far below overflow, inf stays inf and NaN stays NaN, all without
        raising floating-point flags (so no RuntimeWarning). It costs a fraction of
        ``np.isfinite(x).all()``. A False answer is re-checked by ``_check_finite``.
        Only an input holding both +inf and -inf raises a flag (``inf - inf``): numpy
        may then warn once, and the input is refused as it should be.
        """
        flat = array.reshape(-1)
        if flat.dtype.itemsize < 4:  # float16 cannot hold the probe weight
            return bool(np.isfinite(flat).all())
        probe = self.probe
        if probe.shape[0] != flat.shape[0] or probe.dtype != flat.dtype:
            probe = np.full(flat.shape[0], _FINITE_PROBE, dtype=flat.dtype)
            self.probe = probe  # one per plan; threads only ever read a complete array
        try:
            return math.isfinite(flat @ probe)
        except (ArithmeticError, RuntimeWarning):  # +inf and -inf together, warnings as errors
            return False

    def _check_finite(self, array: np.ndarray) -> None:
        finite = np.isfinite(array)
        if not finite.all():
            bad = int(finite.size - np.count_nonzero(finite))
            raise NonFiniteInputError(
                self.name, "finite values", f"{bad} NaN/inf value(s)",
                "set RunnerOptions(reject_non_finite=False) to allow them",
            )


class _OutputPlan:
    __slots__ = ("dequant", "name")

    def __init__(self, spec: TensorSpec) -> None:
        self.name = spec.name
        self.dequant = (
            QuantParams(spec.quantization, spec.dtype, spec.rank)
            if spec.quantization is not None
            else None
        )


class ModelRunner(ABC):
    """A loaded model that turns inputs into outputs. Get one from ``load_model``.

    ``predict`` is safe to call from several threads; backends serialize where their
    runtime requires it. Use as a context manager, or call ``close``, to free the model.
    """

    framework: Framework

    def __init__(
        self, path: Path, signature: Signature, options: RunnerOptions, size_bytes: int
    ) -> None:
        self.path = path
        self.signature = signature
        self.options = options
        self.size_bytes = size_bytes
        self._inputs = tuple(_InputPlan(s, options.reject_non_finite) for s in signature.inputs)
        self._input_names = tuple(p.name for p in self._inputs)
        self._outputs = tuple(_OutputPlan(s) for s in signature.outputs)
        self._output_names = tuple(p.name for p in self._outputs)
        self._dequant_outputs = any(p.dequant is not None for p in self._outputs)

    # -- public API ---------------------------------------------------------------------
    def predict(
        self, inputs: Mapping[str, ArrayLike] | ArrayLike, *, raw: bool = False
    ) -> dict[str, np.ndarray]:
        """Run the model once.

        Args:
            inputs: a mapping from input name to array (lists are accepted), or a single
                array for a model with exactly one input.
            raw: pass integer arrays to quantized inputs as-is (exact dtype required) and
                return quantized outputs as integers; otherwise inputs are real values
                and quantized outputs are dequantized to float32.

        Returns:
            Output name -> array, in the model's output order.

        Raises:
            MissingInputError, UnknownInputError, InputShapeError, InputDtypeError,
            NonFiniteInputError, EmptyBatchError: the input does not fit the signature.
            InferenceError: the runtime failed, or the runner is closed.
        """
        plans = self._inputs
        if type(inputs) is dict or isinstance(inputs, Mapping):
            if len(inputs) != len(plans):
                self._diagnose_names(inputs)
            try:
                values = [inputs[p.name] for p in plans]
            except KeyError:
                self._diagnose_names(inputs)
                raise  # pragma: no cover - _diagnose_names always raises here
            arrays = [p.prepare(v, raw) for p, v in zip(plans, values, strict=True)]
        elif len(plans) == 1:
            arrays = [plans[0].prepare(inputs, raw)]
        else:
            raise MissingInputError(
                self._input_names[0],
                f"a mapping of the {len(plans)} inputs {list(self._input_names)}",
                f"a single {type(inputs).__name__}",
            )
        outputs = self._run(arrays)
        if raw or not self._dequant_outputs:
            return dict(zip(self._output_names, outputs, strict=True))
        return {
            p.name: out if p.dequant is None else p.dequant.dequantize(out)
            for p, out in zip(self._outputs, outputs, strict=True)
        }

    @abstractmethod
    def operators(self) -> list[str]:
        """Operator types used by the model's graph, each once, in order of first use."""

    @abstractmethod
    def close(self) -> None:
        """Free the runtime's resources; ``predict`` afterwards raises InferenceError."""

    def __enter__(self) -> ModelRunner:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.framework.value} {self.path}>"

    # -- backend hook -------------------------------------------------------------------
    @abstractmethod
    def _run(self, arrays: list[np.ndarray]) -> Sequence[np.ndarray]:
        """Run validated arrays (in input order); return outputs in output order.

        Raises:
            InferenceError: the runtime failed.
        """

    # -- helpers ------------------------------------------------------------------------
    def _diagnose_names(self, inputs: Mapping[str, Any]) -> None:
        expected = list(self._input_names)
        for key in inputs:
            if key not in self._input_names:
                raise UnknownInputError(str(key), f"one of {expected}", repr(key))
        for name in self._input_names:
            if name not in inputs:
                raise MissingInputError(name, f"inputs {expected}", f"{sorted(map(str, inputs))}")
