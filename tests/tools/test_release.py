"""`edgefleet release build` / build_release on real ONNX and TFLite models."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgefleet.agent import agent_version
from edgefleet.agent.drift import ReferenceProfile
from edgefleet.agent.runtime import Framework, load_model
from edgefleet.agent.update.bundle import MANIFEST_NAME, extract_bundle, read_manifest
from edgefleet.tools.cli import cli
from edgefleet.tools.errors import ToolInputError
from edgefleet.tools.modelgen.digits import DigitsArtifacts
from edgefleet.tools.modelgen.spec import ModelSpec
from edgefleet.tools.release import ReleaseOptions, build_release, bundle_filename


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _save(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


def _check_extracts_and_runs(bundle: Path, dest: Path) -> None:
    dest.mkdir()
    manifest = extract_bundle(bundle, dest)
    assert sorted(p.name for p in dest.iterdir()) == sorted([MANIFEST_NAME, manifest.model_file])
    with load_model(dest / manifest.model_file) as runner:
        out = runner.predict(manifest.sample_arrays())
    assert list(out) == list(manifest.signature.output_names)
    assert all(np.isfinite(v).all() for v in out.values())


def test_onnx_digits_bundle_has_every_manifest_field(digits: DigitsArtifacts,
                                                     tmp_path: Path) -> None:
    report = build_release(
        digits.float_model, tmp_path, name="digits", version="1.1.0",
        reference=digits.calibration, eval_x=digits.eval_x, eval_y=digits.eval_y,
        parent="1.0.0", training_run="run-7",
    )
    assert report.path == tmp_path / "digits-1.1.0.tar" == tmp_path / bundle_filename(
        "digits", "1.1.0")
    assert report.bundle_sha256 == _sha256(report.path)
    m = read_manifest(report.path)
    assert (m.name, m.version, m.framework) == ("digits", "1.1.0", Framework.ONNX)
    assert m.model_sha256 == _sha256(digits.float_model)
    assert m.signature.input_names == ("input",)
    assert m.sample_input["input"].shape == (4, 64)
    calib = np.load(digits.calibration)
    np.testing.assert_array_equal(m.sample_arrays()["input"], calib[:4])
    assert m.latency_budget_ms >= 50.0
    assert m.metrics["accuracy"] == pytest.approx(digits.mlp_accuracy, abs=0.01)
    assert m.metrics["eval_samples"] == 450
    profile = ReferenceProfile.from_dict(m.reference_profile)
    assert [c.name for c in profile.features][:2] == ["input[0]", "input[1]"]
    assert len(profile.features) == 64
    assert [c.name for c in profile.outputs] == ["label"] + [
        f"probabilities[{i}]" for i in range(10)]
    assert int(profile.features[0].stats.counts.sum()) + profile.features[0].stats.nonfinite \
        == len(calib)
    files = {"reference": digits.calibration, "eval": digits.eval_x, "labels": digits.eval_y}
    lines = "".join(f"{role}={_sha256(p)}\n" for role, p in files.items())
    assert m.lineage == {
        "parent_version": "1.0.0", "training_run": "run-7", "federated_round": None,
        "code_version": agent_version(),
        "data_digest": hashlib.sha256(lines.encode()).hexdigest(),
        "reference_sha256": _sha256(digits.calibration),
        "eval_sha256": _sha256(digits.eval_x), "labels_sha256": _sha256(digits.eval_y),
    }
    _check_extracts_and_runs(report.path, tmp_path / "x")


def test_tflite_bundle_without_data_uses_random_sample(small_tflite: ModelSpec,
                                                       tmp_path: Path) -> None:
    report = build_release(small_tflite.path, tmp_path, name="mlp", version="2",
                           options=ReleaseOptions(latency_budget_ms=123.0))
    m = read_manifest(report.path)
    assert m.framework is Framework.TFLITE and m.model_file == "model.tflite"
    assert m.reference_profile is None and m.metrics == {}
    assert m.latency_budget_ms == 123.0
    assert m.sample_input["input"].shape == (1, 8)
    assert m.lineage["data_digest"] is None and m.lineage["parent_version"] is None
    assert any("no drift profile" in n for n in report.notes)
    _check_extracts_and_runs(report.path, tmp_path / "x")


def test_tflite_reference_without_labels_records_output_statistics(
        small_tflite: ModelSpec, tmp_path: Path) -> None:
    x = small_tflite.random_float_inputs(40, 3)["input"]
    ref = _save(tmp_path / "ref.npy", x)
    m = build_release(small_tflite.path, tmp_path, name="mlp", version="3",
                      reference=ref).manifest
    with load_model(small_tflite.path) as runner:
        probs = runner.predict(x)["probabilities"].astype(np.float64)
    assert m.metrics["probabilities.mean"] == pytest.approx(probs.mean(), rel=1e-6)
    assert m.metrics["probabilities.std"] == pytest.approx(probs.std(), rel=1e-6)
    assert m.lineage["data_digest"] == _sha256(ref)
    profile = ReferenceProfile.from_dict(m.reference_profile)
    assert len(profile.features) == 8 and len(profile.outputs) == 3


def test_quantized_model_records_the_measured_change_against_its_baseline(
        int8_tflite: ModelSpec, small_tflite: ModelSpec, tmp_path: Path) -> None:
    x = small_tflite.random_float_inputs(200, 5)["input"]
    with load_model(small_tflite.path) as runner:
        labels = runner.predict(x)["probabilities"].argmax(axis=1)
    with load_model(int8_tflite.path) as runner:
        quant_acc = float((runner.predict(x)["probabilities"].argmax(axis=1) == labels).mean())
    ev, y = _save(tmp_path / "x.npy", x), _save(tmp_path / "y.npy", labels)
    report = build_release(int8_tflite.path, tmp_path, name="mlp-int8", version="1",
                           eval_x=ev, eval_y=y, baseline=small_tflite.path)
    metrics = report.manifest.metrics
    assert report.quantized
    assert metrics["baseline_accuracy"] == 1.0  # the labels are the float model's own
    assert metrics["accuracy"] == pytest.approx(quant_acc)
    assert metrics["accuracy_change_points"] == pytest.approx((quant_acc - 1.0) * 100)
    assert 0.0 < metrics["probabilities.max_abs_error"] < 0.5


@pytest.mark.parametrize("case", ["labels_length", "labels_without_eval", "missing_model",
                                  "not_a_model", "reference_width", "bad_name", "exists",
                                  "wrong_file_name", "missing_baseline"])
def test_bad_inputs_give_clear_errors(case: str, small_onnx: ModelSpec, tmp_path: Path) -> None:
    x = small_onnx.random_float_inputs(20, 1)["input"]
    ev, y = _save(tmp_path / "x.npy", x), _save(tmp_path / "y.npy", np.zeros(19, np.int64))
    kwargs: dict[str, object] = {"name": "m", "version": "1"}
    model, out = small_onnx.path, tmp_path
    expected = {
        "labels_length": "19 labels for 20 evaluation samples",
        "labels_without_eval": "labels need evaluation inputs",
        "missing_model": "no such model file",
        "not_a_model": "not a TFLite flatbuffer or an ONNX protobuf",
        "reference_width": "has shape (20, 5)",
        "bad_name": "invalid name 'a/b'",
        "exists": "exists already",
        "wrong_file_name": "must be named m-1.tar",
        "missing_baseline": "no such baseline model file",
    }[case]
    if case == "labels_length":
        kwargs |= {"eval_x": ev, "eval_y": y}
    elif case == "labels_without_eval":
        kwargs |= {"eval_y": y}
    elif case == "missing_model":
        model = tmp_path / "nope.onnx"
    elif case == "not_a_model":
        model = ev
    elif case == "reference_width":
        kwargs |= {"reference": _save(tmp_path / "r.npy", x[:, :5])}
    elif case == "bad_name":
        kwargs |= {"name": "a/b"}
    elif case == "exists":
        (tmp_path / "m-1.tar").write_bytes(b"old")
    elif case == "wrong_file_name":
        out = tmp_path / "other.tar"
    else:
        kwargs |= {"eval_x": ev, "baseline": tmp_path / "float.onnx"}
    with pytest.raises(ToolInputError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        build_release(model, out, **kwargs)
    assert not (tmp_path / "m-1.tar").exists() or case == "exists"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_build_prints_the_bundle_path(digits: DigitsArtifacts, tmp_path: Path) -> None:
    result = CliRunner(mix_stderr=False).invoke(cli, [
        "release", "build", str(digits.float_model), "--name", "digits", "--version", "5",
        "--reference", str(digits.calibration), "--eval", str(digits.eval_x),
        "--labels", str(digits.eval_y), "--parent", "4", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == str(tmp_path / "digits-5.tar")
    assert "accuracy=" in result.stderr
    manifest = json.loads(read_manifest(tmp_path / "digits-5.tar").to_json())
    assert manifest["lineage"]["parent_version"] == "4"


def test_cli_build_errors_are_one_line(small_onnx: ModelSpec, tmp_path: Path) -> None:
    y = _save(tmp_path / "y.npy", np.zeros(3, np.int64))
    result = CliRunner().invoke(cli, ["release", "build", str(small_onnx.path), "--name", "m",
                                      "--version", "1", "--labels", str(y)])
    assert result.exit_code == 2 and "--labels needs --eval" in result.output
    result = CliRunner().invoke(cli, ["release", "build", str(tmp_path / "missing.onnx"),
                                      "--name", "m", "--version", "1", "-o", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {tmp_path / 'missing.onnx'}: no such model file"
