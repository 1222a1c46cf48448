"""RegistryService against a real SQLite store and real ONNX files."""

from __future__ import annotations

import hashlib
import io
import sqlite3
from pathlib import Path

import pytest
from onnxruntime.quantization import QuantType, quantize_dynamic

from edgefleet.fleet_server.audit import SYSTEM, Actor, ActorKind, AuditLog
from edgefleet.fleet_server.registry.artifacts import ArtifactStore
from edgefleet.fleet_server.registry.errors import (
    ApprovalForbiddenError,
    ApprovalRequiredError,
    InvalidArtifactError,
    InvalidMetadataError,
    InvalidTransitionError,
    VersionExistsError,
)
from edgefleet.fleet_server.registry.metadata import UploadMetadata
from edgefleet.fleet_server.registry.service import RegistryService
from edgefleet.fleet_server.registry.stages import Stage
from edgefleet.fleet_server.storage import Store
from edgefleet.tools.modelgen import tflite_models

from .conftest import ALICE, BOB, ROOT, VIEWER, make_onnx


def upload(svc: RegistryService, path: Path, version: str = "1.0", **meta: object):
    with path.open("rb") as f:
        return svc.upload("churn", version, f, UploadMetadata.from_dict(meta), ALICE)


def test_upload_records_digest_framework_signature(svc: RegistryService, onnx_file: Path):
    rec = upload(svc, onnx_file, metrics={"accuracy": 0.9})
    assert rec["digest"] == "sha256:" + hashlib.sha256(onnx_file.read_bytes()).hexdigest()
    assert rec["size_bytes"] == onnx_file.stat().st_size
    assert rec["framework"] == "onnx"
    assert rec["quantization"] == "none"
    assert rec["stage"] == "draft"
    assert rec["signature"]["inputs"] == [
        {"name": "x", "dtype": "float32", "shape": ["N", 4], "quantization": None}
    ]
    assert rec["signature"]["outputs"][0]["name"] == "y"
    assert svc.artifact_path("churn", "1.0").read_bytes() == onnx_file.read_bytes()


def test_reupload_same_version_refused_and_rows_immutable(
    svc: RegistryService, onnx_file: Path, db_store
):
    upload(svc, onnx_file)
    with pytest.raises(VersionExistsError):
        upload(svc, onnx_file)
    with pytest.raises(sqlite3.IntegrityError, match="immutable"):
        db_store.db.execute("UPDATE registry_versions SET digest = 'x'")


def test_garbage_and_empty_uploads_refused(svc: RegistryService, tmp_path: Path):
    with pytest.raises(InvalidArtifactError):
        svc.upload("churn", "1", io.BytesIO(b"not a model at all"), UploadMetadata(), ALICE)
    with pytest.raises(InvalidArtifactError):
        svc.upload("churn", "1", io.BytesIO(b""), UploadMetadata(), ALICE)
    fake_tflite = b"\x00\x00\x00\x00TFL3" + b"\x00" * 64
    with pytest.raises(InvalidArtifactError):
        svc.upload("churn", "1", io.BytesIO(fake_tflite), UploadMetadata(), ALICE)
    assert svc.list_models()[1] == 0
    assert not list((tmp_path / "artifacts" / "sha256").iterdir())


def test_bad_names_and_unknown_parent_refused(svc: RegistryService, onnx_file: Path):
    with onnx_file.open("rb") as f, pytest.raises(InvalidMetadataError):
        svc.upload("../etc", "1", f, UploadMetadata(), ALICE)
    with pytest.raises(InvalidMetadataError):
        upload(svc, onnx_file, parent="0.9")
    with pytest.raises(InvalidMetadataError):
        UploadMetadata.from_dict({"bogus": 1})


def test_stage_transitions_follow_table(svc: RegistryService, onnx_file: Path):
    upload(svc, onnx_file)
    with pytest.raises(InvalidTransitionError):
        svc.transition("churn", "1.0", Stage.PRODUCTION, ROOT)
    svc.transition("churn", "1.0", Stage.STAGING, ALICE)
    with pytest.raises(ApprovalRequiredError):
        svc.transition("churn", "1.0", Stage.PRODUCTION, ROOT)
    svc.approve("churn", "1.0", "eval looks good", BOB)
    rec = svc.transition("churn", "1.0", Stage.PRODUCTION, ALICE)
    assert rec["stage"] == "production"
    assert rec["approved_by_name"] == "bob" and rec["approval_reason"] == "eval looks good"
    svc.transition("churn", "1.0", Stage.ARCHIVED, ALICE)
    with pytest.raises(InvalidTransitionError):
        svc.transition("churn", "1.0", Stage.STAGING, ALICE)


def test_approval_rules(svc: RegistryService, onnx_file: Path):
    upload(svc, onnx_file)
    with pytest.raises(InvalidTransitionError):  # only staging versions can be approved
        svc.approve("churn", "1.0", "ok", BOB)
    svc.transition("churn", "1.0", Stage.STAGING, ALICE)
    with pytest.raises(ApprovalForbiddenError):  # four eyes for operators
        svc.approve("churn", "1.0", "mine", ALICE)
    with pytest.raises(ApprovalForbiddenError):
        svc.approve("churn", "1.0", "ok", VIEWER)
    with pytest.raises(ApprovalForbiddenError):  # system jobs and devices have no role
        svc.approve("churn", "1.0", "ok", SYSTEM)
    with pytest.raises(InvalidMetadataError):
        svc.approve("churn", "1.0", "  ", ROOT)
    svc.approve("churn", "1.0", "admin override", ROOT)
    with pytest.raises(InvalidTransitionError):
        svc.approve("churn", "1.0", "again", BOB)
    # demoting to draft clears the approval
    rec = svc.transition("churn", "1.0", Stage.DRAFT, ALICE)
    assert rec["approved_at"] is None


def test_every_change_is_audited(svc: RegistryService, onnx_file: Path, audit: AuditLog):
    upload(svc, onnx_file)
    svc.transition("churn", "1.0", Stage.STAGING, ALICE, reason="ready")
    svc.approve("churn", "1.0", "ok", BOB)
    svc.transition("churn", "1.0", Stage.PRODUCTION, ALICE)
    entries, _ = audit.list(target_type="model_version")
    actions = [e["action"] for e in reversed(entries)]
    assert actions == ["model.version.upload", "model.version.stage",
                       "model.version.approve", "model.version.stage"]
    last = entries[0]
    assert last["actor"]["name"] == "alice"
    assert last["before"]["stage"] == "staging" and last["after"]["stage"] == "production"
    assert entries[1]["after"]["approved_by"] == "user:u-bob"


def test_compare_reports_metric_deltas_size_and_signature(svc: RegistryService, tmp_path: Path):
    upload(svc, make_onnx(tmp_path / "a.onnx"), "1.0", metrics={"accuracy": 0.80, "f1": 0.7})
    upload(svc, make_onnx(tmp_path / "b.onnx", seed=1), "1.1",
           metrics={"accuracy": 0.85, "latency_ms": 3})
    upload(svc, make_onnx(tmp_path / "c.onnx", n_features=5, input_name="z"), "2.0")
    same = svc.compare(("churn", "1.0"), ("churn", "1.1"))
    assert same["metrics"]["accuracy"]["delta"] == pytest.approx(0.05)
    assert same["metrics"]["f1"] == {"a": 0.7, "b": None, "delta": None}
    assert same["signature"] == {"compatible": True, "problems": []}
    assert same["size_bytes"]["delta"] == 0 and not same["same_artifact"]
    other = svc.compare(("churn", "1.0"), ("churn", "2.0"))
    assert not other["signature"]["compatible"]
    assert any("'x' missing" in p for p in other["signature"]["problems"])


def test_lineage_graph(svc: RegistryService, tmp_path: Path):
    upload(svc, make_onnx(tmp_path / "a.onnx"), "1.0", data_digest="sha256:d1",
           code_version="abc123")
    upload(svc, make_onnx(tmp_path / "b.onnx", seed=1), "1.1", parent="1.0",
           federated_round="run7/r3")
    with (tmp_path / "b.onnx").open("rb") as f:
        svc.upload("churn-int8", "1.1", f, UploadMetadata(parent="churn@1.1"), ALICE)
    upload(svc, make_onnx(tmp_path / "c.onnx", seed=2), "9.9")  # unrelated
    graph = svc.lineage("churn", "1.1")
    ids = {n["id"] for n in graph["nodes"]}
    assert {"version:churn@1.0", "version:churn@1.1", "version:churn-int8@1.1",
            "data:sha256:d1", "code:abc123", "federated_round:run7/r3"} == ids
    edges = {(e["from"], e["to"], e["relation"]) for e in graph["edges"]}
    assert ("version:churn@1.0", "version:churn@1.1", "parent_of") in edges
    assert ("version:churn@1.1", "version:churn-int8@1.1", "parent_of") in edges
    assert ("federated_round:run7/r3", "version:churn@1.1", "produced_by") in edges
    focus = [n for n in graph["nodes"] if n.get("focus")]
    assert [n["id"] for n in focus] == ["version:churn@1.1"]


def test_same_bytes_stored_once(svc: RegistryService, onnx_file: Path, tmp_path: Path):
    upload(svc, onnx_file, "1.0")
    upload(svc, onnx_file, "1.0.1")
    assert len(list((tmp_path / "artifacts" / "sha256").iterdir())) == 1
    versions, total = svc.list_versions("churn")
    assert total == 2 and [v["version"] for v in versions] == ["1.0.1", "1.0"]


@pytest.mark.parametrize(("quantize", "expected"), [(None, "none"), ("float16", "float16"),
                                                    ("int8", "int8"), ("uint8", "int8")])
def test_tflite_models_read_with_the_agent_runtime(
    svc: RegistryService, tmp_path: Path, quantize: str | None, expected: str
):
    path = tmp_path / "m.tflite"
    tflite_models.mlp(path, sizes=(4, 8, 2), quantize=quantize)
    with path.open("rb") as f:
        rec = svc.upload("edge", "1", f, UploadMetadata(), ALICE)
    assert rec["framework"] == "tflite"
    assert rec["quantization"] == expected
    (inp,) = rec["signature"]["inputs"]
    assert inp["name"] == "input" and inp["shape"][1] == 4
    io_dtype = {"int8": "int8", "uint8": "uint8"}.get(quantize or "", "float32")
    assert inp["dtype"] == io_dtype
    assert (inp["quantization"] is not None) == (quantize in ("int8", "uint8"))


def test_onnx_quantization_is_read_from_the_graph(svc: RegistryService, tmp_path: Path):
    src = make_onnx(tmp_path / "f.onnx", n_features=16, n_out=8)
    dst = tmp_path / "q.onnx"
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    with dst.open("rb") as f:
        rec = svc.upload("churn", "1.0-int8", f, UploadMetadata(parent=None), ALICE)
    assert rec["quantization"] == "dynamic-int8"
    cmp = svc.compare(("churn", "1.0-int8"), ("churn", "1.0-int8"))
    assert cmp["same_artifact"] and cmp["signature"]["compatible"]


# -- review regressions ------------------------------------------------------------------


def test_admins_may_not_approve_their_own_upload(svc: RegistryService, onnx_file: Path):
    """C4: four eyes applied to operators only; an admin could approve their own upload."""
    with onnx_file.open("rb") as f:
        svc.upload("churn", "1.0", f, UploadMetadata(), ROOT)
    svc.transition("churn", "1.0", Stage.STAGING, ROOT)
    with pytest.raises(ApprovalForbiddenError):
        svc.approve("churn", "1.0", "mine", ROOT)
    other_admin = Actor(ActorKind.USER, "u-root2", "root2", "admin")
    assert svc.approve("churn", "1.0", "second pair of eyes", other_admin)["approved_at"]


def test_self_approval_when_a_second_person_is_not_required(
        db_store: Store, audit: AuditLog, tmp_path: Path, onnx_file: Path):
    solo = RegistryService(db_store, audit, ArtifactStore(tmp_path / "solo"),
                           approval_requires_second_person=False)
    for actor, version in ((ALICE, "1.0"), (ROOT, "2.0")):
        with onnx_file.open("rb") as f:
            solo.upload("churn", version, f, UploadMetadata(), actor)
        solo.transition("churn", version, Stage.STAGING, actor)
        assert solo.approve("churn", version, "solo team", actor)["approved_at"]
    with onnx_file.open("rb") as f:
        solo.upload("churn", "3.0", f, UploadMetadata(), ALICE)
    solo.transition("churn", "3.0", Stage.STAGING, ALICE)
    with pytest.raises(ApprovalForbiddenError):  # viewers still never approve
        solo.approve("churn", "3.0", "ok", VIEWER)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_metrics_are_refused(value: float):
    """C3: NaN/Infinity metrics were stored and later served as invalid JSON."""
    with pytest.raises(InvalidMetadataError):
        UploadMetadata.from_dict({"metrics": {"accuracy": value}})
    with pytest.raises(InvalidMetadataError):
        UploadMetadata.from_dict({"reference_profile": {"mean": [1.0, value]}})
