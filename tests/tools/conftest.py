"""Fixtures for the model-tool tests: digits models trained once, small generated models."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from edgefleet.tools.modelgen import onnx_models, tflite_models
from edgefleet.tools.modelgen.digits import DigitsArtifacts, build_digits_models
from edgefleet.tools.modelgen.spec import ModelSpec

EDGEFLEET = Path(sys.executable).parent / "edgefleet"


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DigitsArtifacts:
    """The digits MLP and logistic regression as ONNX, with eval and calibration data."""
    return build_digits_models(tmp_path_factory.mktemp("digits"), seed=0)


@pytest.fixture(scope="session")
def small_onnx(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    return onnx_models.mlp(tmp_path_factory.mktemp("onnx") / "mlp.onnx", sizes=(8, 16, 3), seed=1)


@pytest.fixture(scope="session")
def small_tflite(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    return tflite_models.mlp(
        tmp_path_factory.mktemp("tflite") / "mlp.tflite", sizes=(8, 16, 3), seed=1
    )


@pytest.fixture(scope="session")
def int8_tflite(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    return tflite_models.mlp(
        tmp_path_factory.mktemp("tflite8") / "mlp_int8.tflite", sizes=(8, 16, 3), seed=1,
        quantize="int8",
    )


@pytest.fixture(scope="session")
def multi_onnx(tmp_path_factory: pytest.TempPathFactory) -> ModelSpec:
    return onnx_models.multi_io(tmp_path_factory.mktemp("multi") / "multi.onnx")


def sample(spec: ModelSpec, batch: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """Float inputs for ``spec`` (real values for quantized models)."""
    return spec.random_float_inputs(batch, seed)
