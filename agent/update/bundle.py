"""The release bundle: a tar file holding one model file and its ``edgefleet.json`` manifest.

A bundle is flat: exactly two regular files, ``edgefleet.json`` and the model file the
manifest names (``model.onnx`` or ``model.tflite``). Reading refuses anything else (links,
directories, device files, ``..`` or absolute names, duplicates, extra members) and caps
the manifest and model sizes before a byte is extracted, so a hostile bundle can neither
write outside the destination nor fill the disk.

``Manifest`` validation is pure (``Manifest.from_dict``); ``write_bundle``,
``read_manifest`` and ``extract_bundle`` do the file I/O.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from edgefleet.agent.runtime.signature import Framework, Signature
from edgefleet.agent.update.state import UpdateError

MANIFEST_NAME = "edgefleet.json"
MANIFEST_FORMAT = 1
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_MODEL_BYTES = 512 * 1024 * 1024
_MODEL_FILES = {Framework.ONNX: "model.onnx", Framework.TFLITE: "model.tflite"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1024 * 1024


class BundleError(UpdateError):
    """A bundle or manifest is malformed, unsafe or too large."""


@dataclass(frozen=True)
class SampleTensor:
    """One input of the manifest's sample, stored as JSON numbers."""

    dtype: str
    shape: tuple[int, ...]
    data: tuple[Any, ...]

    @classmethod
    def from_array(cls, array: np.ndarray) -> SampleTensor:
        return cls(str(array.dtype), tuple(array.shape), tuple(array.reshape(-1).tolist()))

    def to_array(self) -> np.ndarray:
        return np.asarray(self.data, dtype=np.dtype(self.dtype)).reshape(self.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape), "data": list(self.data)}


@dataclass(frozen=True)
class Manifest:
    """What ``edgefleet.json`` says about the model next to it.

    Attributes:
        name, version: the release's identity.
        framework: decides the model file name (``model.onnx`` / ``model.tflite``).
        model_sha256, model_size: digest and length of the model file (checked on read).
        signature: the model's inputs and outputs (declared shapes are smoke-tested).
        sample_input: input name -> sample, run at warm-up before the model goes live.
        latency_budget_ms: the sample's median latency must not exceed this at warm-up.
        reference_profile: drift reference (placeholder: any JSON object, or None).
        metrics: evaluation metrics, name -> number.
        lineage: parent version, data digest, training run, code version (strings or None).
        preprocessing: free-form JSON object describing input preprocessing.
    """

    name: str
    version: str
    framework: Framework
    model_sha256: str
    model_size: int
    signature: Signature
    sample_input: Mapping[str, SampleTensor]
    latency_budget_ms: float
    reference_profile: Mapping[str, Any] | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    lineage: Mapping[str, str | None] = field(default_factory=dict)
    preprocessing: Mapping[str, Any] = field(default_factory=dict)

    @property
    def model_file(self) -> str:
        return _MODEL_FILES[self.framework]

    def sample_arrays(self) -> dict[str, np.ndarray]:
        return {name: t.to_array() for name, t in self.sample_input.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "name": self.name,
            "version": self.version,
            "framework": self.framework.value,
            "model_file": self.model_file,
            "model_sha256": self.model_sha256,
            "model_size": self.model_size,
            "signature": self.signature.to_dict(),
            "sample_input": {k: v.to_dict() for k, v in self.sample_input.items()},
            "latency_budget_ms": self.latency_budget_ms,
            "reference_profile": self.reference_profile,
            "metrics": dict(self.metrics),
            "lineage": dict(self.lineage),
            "preprocessing": dict(self.preprocessing),
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Validate and parse a manifest object.

        Raises:
            BundleError: a field is missing, of the wrong type or inconsistent.
        """
        try:
            return _parse_manifest(data)
        except BundleError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BundleError(f"invalid manifest: {type(exc).__name__}: {exc}") from exc

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        """Raises: BundleError on invalid JSON or an invalid manifest."""
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise BundleError(f"{MANIFEST_NAME} is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise BundleError(f"invalid manifest: {message}")


def _parse_manifest(data: Any) -> Manifest:
    _require(isinstance(data, dict), "not a JSON object")
    _require(data.get("format") == MANIFEST_FORMAT, f"unknown format {data.get('format')!r}")
    name, version = data["name"], data["version"]
    _require(isinstance(name, str) and bool(_NAME_RE.match(name)), f"bad name {name!r}")
    _require(isinstance(version, str) and bool(_NAME_RE.match(version)), "bad version")
    framework = Framework(data["framework"])
    _require(data.get("model_file") == _MODEL_FILES[framework], "model_file must be "
             f"{_MODEL_FILES[framework]!r} for {framework.value}")
    digest, size = data["model_sha256"], data["model_size"]
    _require(isinstance(digest, str) and bool(_SHA256_RE.match(digest)), "bad model_sha256")
    _require(isinstance(size, int) and not isinstance(size, bool) and size > 0, "bad model_size")
    signature = Signature.from_dict(data["signature"])
    _require(bool(signature.inputs) and bool(signature.outputs), "empty signature")
    budget = data["latency_budget_ms"]
    _require(isinstance(budget, int | float) and not isinstance(budget, bool)
             and math.isfinite(budget) and budget > 0, "latency_budget_ms must be > 0")
    sample = _parse_sample(data["sample_input"], signature)
    metrics = data.get("metrics") or {}
    _require(isinstance(metrics, dict), "metrics must be an object")
    for key, value in metrics.items():
        _require(isinstance(value, int | float) and not isinstance(value, bool),
                 f"metric {key!r} must be a number")
    lineage = data.get("lineage") or {}
    _require(isinstance(lineage, dict) and all(v is None or isinstance(v, str)
                                               for v in lineage.values()),
             "lineage must map names to strings or null")
    profile = data.get("reference_profile")
    _require(profile is None or isinstance(profile, dict), "reference_profile must be an object")
    pre = data.get("preprocessing") or {}
    _require(isinstance(pre, dict), "preprocessing must be an object")
    return Manifest(
        name=name, version=version, framework=framework, model_sha256=digest,
        model_size=size, signature=signature, sample_input=sample,
        latency_budget_ms=float(budget), reference_profile=profile,
        metrics={str(k): float(v) for k, v in metrics.items()},
        lineage={str(k): v for k, v in lineage.items()}, preprocessing=pre,
    )


def _parse_sample(raw: Any, signature: Signature) -> dict[str, SampleTensor]:
    _require(isinstance(raw, dict), "sample_input must be an object")
    _require(set(raw) == set(signature.input_names),
             f"sample_input must have exactly the inputs {list(signature.input_names)}")
    out: dict[str, SampleTensor] = {}
    for spec in signature.inputs:
        item = raw[spec.name]
        shape = tuple(int(d) for d in item["shape"])
        tensor = SampleTensor(str(np.dtype(item["dtype"])), shape, tuple(item["data"]))
        _require(len(shape) == spec.rank, f"sample {spec.name!r} has rank {len(shape)}")
        _require(all(not isinstance(d, int) or d == s for d, s in zip(spec.shape, shape,
                                                                      strict=True)),
                 f"sample {spec.name!r} shape {shape} does not fit {spec.shape}")
        _require(len(tensor.data) == math.prod(shape) and math.prod(shape) > 0,
                 f"sample {spec.name!r} holds {len(tensor.data)} values for shape {shape}")
        tensor.to_array()  # the values must convert to the dtype
        out[spec.name] = tensor
    return out


# -- building ---------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def make_manifest(
    model_path: str | os.PathLike[str],
    *,
    name: str,
    version: str,
    sample_input: Mapping[str, np.ndarray],
    latency_budget_ms: float,
    metrics: Mapping[str, float] | None = None,
    lineage: Mapping[str, str | None] | None = None,
    reference_profile: Mapping[str, Any] | None = None,
    preprocessing: Mapping[str, Any] | None = None,
    signature: Signature | None = None,
) -> Manifest:
    """Describe a model file; its framework and (unless given) signature come from loading it.

    Raises:
        BundleError: the resulting manifest is invalid (e.g. a sample that does not fit).
        ModelLoadError: the model cannot be loaded (only when ``signature`` is None).
    """
    from edgefleet.agent.runtime import load_model
    from edgefleet.agent.runtime.detect import NotAModel, detect_framework

    path = Path(model_path)
    try:
        framework = detect_framework(path.read_bytes())
    except NotAModel as exc:
        raise BundleError(f"{path} is not a model: {exc}") from exc
    if signature is None:
        with load_model(path) as runner:
            signature = runner.signature
    manifest = Manifest(
        name=name, version=version, framework=framework, model_sha256=file_sha256(path),
        model_size=path.stat().st_size, signature=signature,
        sample_input={k: SampleTensor.from_array(np.asarray(v)) for k, v in sample_input.items()},
        latency_budget_ms=float(latency_budget_ms), reference_profile=reference_profile,
        metrics=dict(metrics or {}), lineage=dict(lineage or {}),
        preprocessing=dict(preprocessing or {}),
    )
    return Manifest.from_dict(manifest.to_dict())  # one validation path for both directions


def write_bundle(dest: str | os.PathLike[str], model_path: str | os.PathLike[str],
                 manifest: Manifest) -> Path:
    """Write a bundle (uncompressed tar, deterministic member metadata) to ``dest``.

    Raises:
        BundleError: the model file does not match the manifest's digest or size.
    """
    dest, model = Path(dest), Path(model_path)
    if model.stat().st_size != manifest.model_size or file_sha256(model) != manifest.model_sha256:
        raise BundleError(f"{model} does not match the manifest's model_sha256/model_size")
    raw = manifest.to_json()
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_member(MANIFEST_NAME, len(raw)), io.BytesIO(raw))
        with open(model, "rb") as f:
            tar.addfile(_member(manifest.model_file, manifest.model_size), f)
    return dest


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0
    return info


# -- reading ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BundleLimits:
    """Caps applied before anything is extracted."""

    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES
    max_manifest_bytes: int = MAX_MANIFEST_BYTES


def _open(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:")  # uncompressed only: sizes in headers are real sizes
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(f"{path} is not a readable bundle (tar): {exc}") from exc


def _members(tar: tarfile.TarFile, limits: BundleLimits) -> dict[str, tarfile.TarInfo]:
    members: dict[str, tarfile.TarInfo] = {}
    try:
        infos = tar.getmembers()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"corrupt bundle: {exc}") from exc
    for info in infos:
        name = info.name
        if name in members:
            raise BundleError(f"duplicate member {name!r} in bundle")
        if "/" in name or "\\" in name or name in ("", ".", "..") or name.startswith("."):
            raise BundleError(f"unsafe member name {name!r} in bundle (must be a plain name)")
        if not info.isreg():
            raise BundleError(f"member {name!r} is not a regular file")
        members[name] = info
    manifest = members.get(MANIFEST_NAME)
    if manifest is None:
        raise BundleError(f"bundle has no {MANIFEST_NAME}")
    if manifest.size > limits.max_manifest_bytes:
        raise BundleError(f"{MANIFEST_NAME} is {manifest.size} bytes, over the cap of "
                          f"{limits.max_manifest_bytes}")
    return members


def _read_member(tar: tarfile.TarFile, info: tarfile.TarInfo) -> IO[bytes]:
    f = tar.extractfile(info)
    if f is None:  # pragma: no cover - regular files always have a stream
        raise BundleError(f"cannot read member {info.name!r}")
    return f


def read_manifest(path: str | os.PathLike[str], limits: BundleLimits | None = None) -> Manifest:
    """Check a bundle's layout and return its validated manifest (nothing is extracted).

    Raises:
        BundleError: unreadable or unsafe bundle, invalid manifest, wrong member set,
            model over the size cap or of another size than the manifest says.
    """
    limits = limits or BundleLimits()
    with _open(Path(path)) as tar:
        manifest, _ = _check(tar, limits)
    return manifest


def _check(tar: tarfile.TarFile, limits: BundleLimits) -> tuple[Manifest, tarfile.TarInfo]:
    members = _members(tar, limits)
    try:
        manifest = Manifest.from_json(_read_member(tar, members[MANIFEST_NAME]).read())
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"corrupt bundle: {exc}") from exc
    expected = {MANIFEST_NAME, manifest.model_file}
    if set(members) != expected:
        raise BundleError(f"bundle must hold exactly {sorted(expected)}, has {sorted(members)}")
    model = members[manifest.model_file]
    if model.size > limits.max_model_bytes:
        raise BundleError(f"model is {model.size} bytes, over the cap of {limits.max_model_bytes}")
    if model.size != manifest.model_size:
        raise BundleError(f"model is {model.size} bytes, the manifest says {manifest.model_size}")
    return manifest, model


def extract_bundle(path: str | os.PathLike[str], dest_dir: str | os.PathLike[str],
                   limits: BundleLimits | None = None) -> Manifest:
    """Extract a bundle's two files into the existing, empty ``dest_dir``, fsynced.

    The model's sha256 is checked while it is copied; nothing outside ``dest_dir`` is
    written whatever the bundle holds.

    Raises:
        BundleError: see ``read_manifest``; also a model whose digest does not match.
    """
    limits = limits or BundleLimits()
    dest = Path(dest_dir)
    with _open(Path(path)) as tar:
        manifest, model = _check(tar, limits)
        digest = hashlib.sha256()
        try:
            src = _read_member(tar, model)
            with open(dest / manifest.model_file, "xb") as out:
                remaining = model.size
                while remaining > 0:
                    chunk = src.read(min(_CHUNK, remaining))
                    if not chunk:
                        raise BundleError("bundle ends inside the model file")
                    digest.update(chunk)
                    out.write(chunk)
                    remaining -= len(chunk)
                out.flush()
                os.fsync(out.fileno())
        except (tarfile.TarError, EOFError) as exc:
            raise BundleError(f"corrupt bundle: {exc}") from exc
    if digest.hexdigest() != manifest.model_sha256:
        raise BundleError("model file digest does not match the manifest's model_sha256")
    raw = manifest.to_json()
    with open(dest / MANIFEST_NAME, "xb") as out:
        out.write(raw)
        out.flush()
        os.fsync(out.fileno())
    return manifest
