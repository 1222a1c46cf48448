"""The wheel installs into a clean venv and works there, without the source tree.

This is what a device operator does: ``pip install 'edgefleet[agent]'`` and then
``edgefleet agent predict`` on a model they bring.
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest

from edgefleet.tools.modelgen import onnx_models, tflite_models

ROOT = Path(__file__).resolve().parent.parent
GENERIC_NAMES = {"agent", "fleet_server", "federated", "tools", "tests", "docs", "benchmarks"}


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the wheel and install it with the [agent] extra into a brand-new venv."""
    work = tmp_path_factory.mktemp("wheel")
    dist = work / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
        check=True,
        cwd=work,
    )
    wheels = list(dist.glob("edgefleet-*.whl"))
    assert len(wheels) == 1, wheels
    env_dir = work / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    subprocess.run(
        [str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", f"{wheels[0]}[agent]"],
        check=True,
        cwd=work,
    )
    return env_dir


def test_wheel_installs_only_namespaced_packages(wheel_venv: Path) -> None:
    site = next((wheel_venv / "lib").glob("python3.*/site-packages"))
    top_level = {p.name for p in site.iterdir()}
    assert "edgefleet" in top_level
    assert not (GENERIC_NAMES & top_level), GENERIC_NAMES & top_level
    out = subprocess.run(
        [str(wheel_venv / "bin" / "edgefleet"), "--version"],
        check=True, capture_output=True, text=True, cwd=wheel_venv,
    )
    assert "0.1.0" in out.stdout


@pytest.mark.parametrize("kind", ["onnx", "tflite"])
def test_wheel_agent_predict(wheel_venv: Path, tmp_path: Path, kind: str) -> None:
    """`edgefleet agent predict` from the clean venv gives the numpy reference output."""
    if kind == "onnx":
        spec = onnx_models.mlp(tmp_path / "model.onnx", sizes=(8, 16, 3), seed=1)
    else:
        spec = tflite_models.mlp(tmp_path / "model.tflite", sizes=(8, 16, 3), seed=1)
    x = spec.random_float_inputs(batch=4, seed=0)[spec.input_names[0]]
    np.save(tmp_path / "x.npy", x)
    proc = subprocess.run(
        [str(wheel_venv / "bin" / "edgefleet"), "agent", "predict",
         "--model", str(spec.path), "--input", str(tmp_path / "x.npy")],
        capture_output=True, text=True, cwd=tmp_path, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    outputs = json.loads(proc.stdout)
    expected = spec.reference({spec.input_names[0]: x})
    assert set(outputs) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(np.asarray(outputs[name], dtype=np.float32), value,
                                   rtol=1e-4, atol=spec.atol)
