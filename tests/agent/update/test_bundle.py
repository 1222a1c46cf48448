"""The bundle format: writing, reading, validation and safe extraction."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.agent.runtime import load_model
from edgefleet.agent.update.bundle import (
    MANIFEST_NAME,
    BundleError,
    BundleLimits,
    Manifest,
    extract_bundle,
    make_manifest,
    read_manifest,
)
from edgefleet.tools.modelgen import onnx_models
from tests.agent.update.support import build_bundle


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bundle(tmp_path_factory.mktemp("bundles"), "1.0.0", seed=1)


def _members(bundle: Path) -> dict[str, bytes]:
    with tarfile.open(bundle) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            tar.addfile(info, None if data is None else io.BytesIO(data))
    return path


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def test_round_trip(good: Path, tmp_path: Path) -> None:
    manifest = read_manifest(good)
    assert (manifest.name, manifest.version, manifest.framework.value) == ("mlp", "1.0.0", "onnx")
    assert manifest.metrics == {"accuracy": 0.9}
    assert manifest.lineage["code_version"] == "test"
    assert manifest.reference_profile == {"placeholder": True}
    assert set(_members(good)) == {MANIFEST_NAME, "model.onnx"}
    out = tmp_path / "out"
    out.mkdir()
    assert extract_bundle(good, out) == manifest
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME, "model.onnx"]
    with load_model(out / "model.onnx") as runner:
        result = runner.predict(manifest.sample_arrays())
    assert result["probabilities"].shape == (2, 3)
    # the manifest survives JSON exactly, sample values included
    again = Manifest.from_json(manifest.to_json())
    assert again == manifest
    assert np.array_equal(again.sample_arrays()["input"], manifest.sample_arrays()["input"])


def _rebuild(good: Path, path: Path, edit: Any = None, extra: list[Any] | None = None) -> Path:
    members = _members(good)
    manifest = json.loads(members[MANIFEST_NAME])
    if edit is not None:
        edit(manifest)
    entries = [_file(MANIFEST_NAME, json.dumps(manifest).encode()),
               _file("model.onnx", members["model.onnx"])]
    return _tar(path, entries + (extra or []))


def _evil_members() -> dict[str, tuple[tarfile.TarInfo, bytes | None]]:
    sym = tarfile.TarInfo("link")
    sym.type, sym.linkname = tarfile.SYMTYPE, "/etc/passwd"
    hard = tarfile.TarInfo("hard")
    hard.type, hard.linkname = tarfile.LNKTYPE, "model.onnx"
    folder = tarfile.TarInfo("dir")
    folder.type = tarfile.DIRTYPE
    fifo = tarfile.TarInfo("fifo")
    fifo.type = tarfile.FIFOTYPE
    return {
        "traversal": _file("../evil", b"x"),
        "absolute": _file("/tmp/evil", b"x"),
        "nested": _file("a/b", b"x"),
        "hidden": _file(".hidden", b"x"),
        "symlink": (sym, None),
        "hardlink": (hard, None),
        "directory": (folder, None),
        "fifo": (fifo, None),
        "extra": _file("README", b"x"),
        "duplicate": _file("model.onnx", b"x"),
    }


@pytest.mark.parametrize("kind", sorted(_evil_members()))
def test_unsafe_or_unexpected_members_are_refused(good: Path, tmp_path: Path, kind: str) -> None:
    bundle = _rebuild(good, tmp_path / "evil.tar", extra=[_evil_members()[kind]])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(BundleError):
        extract_bundle(bundle, out)
    assert list(out.iterdir()) == []
    assert not (tmp_path / "evil").exists()


def _set(key: str, value: Any) -> Any:
    return lambda m: m.__setitem__(key, value)


BAD_MANIFESTS = {
    "no name": lambda m: m.pop("name"),
    "bad name": _set("name", "../x"),
    "bad framework": _set("framework", "pytorch"),
    "wrong model file": _set("model_file", "model.tflite"),
    "bad digest": _set("model_sha256", "xyz"),
    "size mismatch": _set("model_size", 5),
    "zero budget": _set("latency_budget_ms", 0),
    "nan budget": _set("latency_budget_ms", float("nan")),
    "sample missing input": _set("sample_input", {}),
    "sample wrong shape": lambda m: m["sample_input"]["input"].__setitem__("shape", [2, 7]),
    "sample wrong count": lambda m: m["sample_input"]["input"].__setitem__("data", [1.0]),
    "metric not a number": _set("metrics", {"acc": "high"}),
    "lineage not strings": _set("lineage", {"parent": 3}),
    "unknown format": _set("format", 2),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_invalid_manifests_are_refused(good: Path, tmp_path: Path, case: str) -> None:
    bundle = _rebuild(good, tmp_path / "bad.tar", edit=BAD_MANIFESTS[case])
    with pytest.raises(BundleError, match=r"manifest|model"):
        read_manifest(bundle)


def test_tampered_model_bytes_are_caught_while_extracting(good: Path, tmp_path: Path) -> None:
    members = _members(good)
    model = bytearray(members["model.onnx"])
    model[-5] ^= 0xFF  # same size, different content
    bundle = _tar(tmp_path / "t.tar", [_file(MANIFEST_NAME, members[MANIFEST_NAME]),
                                      _file("model.onnx", bytes(model))])
    read_manifest(bundle)  # layout is fine ...
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(BundleError, match="digest"):
        extract_bundle(bundle, out)  # ... content is not


def test_size_caps(good: Path) -> None:
    size = read_manifest(good).model_size
    with pytest.raises(BundleError, match="cap"):
        read_manifest(good, BundleLimits(max_model_bytes=size - 1))
    with pytest.raises(BundleError, match="cap"):
        read_manifest(good, BundleLimits(max_manifest_bytes=100))


@pytest.mark.parametrize("content", [b"", b"not a tar at all" * 100])
def test_not_a_bundle(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.tar"
    path.write_bytes(content)
    with pytest.raises(BundleError):
        read_manifest(path)


def test_truncated_bundle(good: Path, tmp_path: Path) -> None:
    path = tmp_path / "cut.tar"
    data = good.read_bytes().rstrip(b"\0")  # cut inside the last member's data
    path.write_bytes(data[:-10])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(BundleError):
        extract_bundle(path, out)


def test_compressed_tar_is_refused(good: Path, tmp_path: Path) -> None:
    members = _members(good)
    path = tmp_path / "b.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info, _ = _file(name, data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(BundleError):
        read_manifest(path)


def test_make_manifest_refuses_a_sample_that_does_not_fit(tmp_path: Path) -> None:
    spec = onnx_models.mlp(tmp_path / "m.onnx", sizes=(8, 16, 3))
    with pytest.raises(BundleError, match="sample"):
        make_manifest(spec.path, name="m", version="1", latency_budget_ms=5,
                      sample_input={"input": np.zeros((1, 7), np.float32)})
    with pytest.raises(BundleError, match="not a model"):
        (tmp_path / "junk.onnx").write_bytes(b"\x00" * 40)
        make_manifest(tmp_path / "junk.onnx", name="m", version="1", latency_budget_ms=5,
                      sample_input={"input": np.zeros((1, 8), np.float32)})
