"""`edgefleet model bench`: fields and shapes of the result (no timing assertions)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgefleet.agent.runtime import Framework, load_model
from edgefleet.tools.bench import BenchOptions, bench_model, random_inputs
from edgefleet.tools.cli import cli
from edgefleet.tools.errors import ToolInputError
from edgefleet.tools.modelgen import onnx_models
from edgefleet.tools.modelgen.spec import ModelSpec

FIELDS = {"path", "framework", "batch", "threads", "warmup", "iterations", "input_shapes",
          "p50_ms", "p95_ms", "p99_ms", "mean_ms", "min_ms", "max_ms", "total_s",
          "throughput_per_s"}


def test_fixed_iterations_with_progress(small_onnx: ModelSpec) -> None:
    seen: list[float] = []
    result = bench_model(small_onnx.path, BenchOptions(iterations=50, warmup=5, batch=4),
                         progress=seen.append)
    assert result.iterations == 50 and result.warmup == 5
    assert result.framework is Framework.ONNX
    assert result.input_shapes == {"input": (4, 8)}
    lat = result.latency
    assert 0 < lat.min_ms <= lat.p50_ms <= lat.p95_ms <= lat.p99_ms <= lat.max_ms
    assert result.throughput_per_s > 0
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)
    assert set(result.to_dict()) == FIELDS


def test_duration_mode_on_tflite(int8_tflite: ModelSpec) -> None:
    seen: list[float] = []
    result = bench_model(int8_tflite.path, BenchOptions(duration_s=0.2, warmup=2, threads=1),
                         progress=seen.append)
    assert result.framework is Framework.TFLITE
    assert result.iterations >= 1 and result.threads == 1
    assert seen[-1] == 1.0


def test_random_inputs_fit_every_kind(tmp_path: Path, int8_tflite: ModelSpec) -> None:
    spec = onnx_models.int_input_model(tmp_path / "ids.onnx", index_dtype=np.int32,
                                       dynamic_batch=False)
    with load_model(spec.path) as runner:
        inputs = random_inputs(runner.signature, batch=8)
        assert inputs["token_ids"].shape == (1, 6)  # static batch dimension stays
        assert inputs["token_ids"].dtype == np.int32
        runner.predict(inputs)
    with load_model(int8_tflite.path) as runner:
        inputs = random_inputs(runner.signature, batch=3)
        assert inputs["input"].shape == (3, 8) and inputs["input"].dtype == np.float32
        runner.predict(inputs)


def test_options_are_checked() -> None:
    for bad in ({"iterations": 0}, {"warmup": -1}, {"batch": 0}, {"threads": 0},
                {"duration_s": 0.0}):
        with pytest.raises(ToolInputError):
            BenchOptions(**bad)


def test_cli_text(small_onnx: ModelSpec) -> None:
    result = CliRunner().invoke(cli, ["model", "bench", str(small_onnx.path),
                                      "--iterations", "30", "--warmup", "3"])
    assert result.exit_code == 0, result.output
    for word in ("latency:", "p50", "p95", "p99", "throughput:", "samples/s"):
        assert word in result.output


def test_cli_json(small_tflite: ModelSpec) -> None:
    result = CliRunner(mix_stderr=False).invoke(cli, [
        "model", "bench", str(small_tflite.path), "--iterations", "20", "--batch", "2",
        "--threads", "1", "--json",
    ])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == FIELDS
    assert data["iterations"] == 20 and data["batch"] == 2 and data["threads"] == 1
    assert data["input_shapes"] == {"input": [2, 8]}
    assert "benchmarking" in result.stderr  # the progress bar goes to stderr


def test_cli_bad_model(tmp_path: Path) -> None:
    path = tmp_path / "junk.tflite"
    path.write_bytes(b"\x00" * 64)
    result = CliRunner().invoke(cli, ["model", "bench", str(path)])
    assert result.exit_code == 1
    assert "Error: cannot load model" in result.output
