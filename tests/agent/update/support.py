"""Test helpers for the updater: real bundles of real ONNX models, and fault-injection fakes
for the parts another module owns (the TUF verifier) or that talk to the server (reporter).

``DirVerifier`` stands in for the TUF verifier: it serves whatever bundle the test
"assigns" from a plain directory, downloads it resumably in chunks (``.part`` file, then
rename, like tuf.ngclient) and checks length and sha256 like TUF would. Its knobs inject
faults: a failing download, tampered bytes, a delay per chunk (for the crash test).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.agent.runtime.signature import Signature, TensorSpec
from edgefleet.agent.update.bundle import Manifest, make_manifest, write_bundle
from edgefleet.agent.update.state import Assignment

SIZES = (8, 16, 3)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_bundle(
    root: Path,
    version: str,
    *,
    seed: int = 0,
    kind: str = "good",
    budget_ms: float = 10_000.0,
    sizes: tuple[int, ...] = SIZES,
) -> Path:
    """A bundle ``root/<version>.tar`` of an MLP; ``kind`` picks a warm-up fault:

    good | nan (NaN outputs) | shape (declared output shape differs) | slow (budget far
    below any real latency) | corrupt (truncated model file, valid manifest).
    """
    from edgefleet.tools.modelgen import onnx_models  # onnx is heavy: keep the child lean

    root.mkdir(parents=True, exist_ok=True)
    model = root / f"{version}.onnx"
    weights = None
    if kind == "nan":
        w = np.full((sizes[0], sizes[-1]), np.nan, dtype=np.float32)
        weights = [(w, np.zeros(sizes[-1], dtype=np.float32))]
    spec = onnx_models.mlp(model, sizes=sizes, seed=seed, weights=weights)
    sample = spec.random_inputs(2, seed=seed)
    if kind == "slow":
        budget_ms = 1e-6
    manifest = make_manifest(
        model, name="mlp", version=version, sample_input=sample, latency_budget_ms=budget_ms,
        metrics={"accuracy": 0.9}, lineage={"parent_version": None, "code_version": "test"},
        reference_profile={"placeholder": True},
    )
    if kind == "shape":
        out = manifest.signature.outputs[0]
        wrong = TensorSpec(out.name, (None, sizes[-1] + 1), out.dtype)
        manifest = dataclasses.replace(
            manifest, signature=Signature(manifest.signature.inputs, (wrong,))
        )
    if kind == "corrupt":
        data = model.read_bytes()
        model.write_bytes(data[: len(data) // 2])
        manifest = dataclasses.replace(
            manifest, model_sha256=sha256(model), model_size=model.stat().st_size
        )
    return write_bundle(root / f"{version}.tar", model, manifest)


def assignment_for(bundle: Path) -> Assignment:
    return Assignment(
        name=bundle.name, length=bundle.stat().st_size, hashes={"sha256": sha256(bundle)}
    )


class VerificationError(Exception):
    """What the fake verifier raises for a download that does not match the signed target."""


class DirVerifier:
    """The TUF verifier's stand-in: assignments and bundles from a plain directory."""

    def __init__(self, server_dir: Path, chunk: int = 4096, delay_s: float = 0.0) -> None:
        self.server_dir = Path(server_dir)
        self.server_dir.mkdir(parents=True, exist_ok=True)
        self.chunk = chunk
        self.delay_s = delay_s
        self.fail_download = False
        self.tamper = False
        self.check_hashes = True  # False: a broken verifier that returns unchecked bytes
        self.downloaded_bytes = 0

    @property
    def _assignment_file(self) -> Path:
        return self.server_dir / "assignment.json"

    def assign(self, bundle: Path | None) -> Assignment | None:
        if bundle is None:
            self._assignment_file.unlink(missing_ok=True)
            return None
        assignment = assignment_for(bundle)
        data = {"path": str(bundle), **assignment.to_dict()}
        self._assignment_file.write_text(json.dumps(data))
        return assignment

    def check(self) -> Assignment | None:
        try:
            data = json.loads(self._assignment_file.read_text())
        except FileNotFoundError:
            return None
        return Assignment.from_dict(data)

    def download(self, assignment: Assignment, dest_dir: Path, resume: bool = True) -> Path:
        data = json.loads(self._assignment_file.read_text())
        source = Path(data["path"])
        final = dest_dir / assignment.name
        if final.exists():
            return final
        if self.fail_download:
            raise ConnectionError("server unreachable")
        part = dest_dir / (assignment.name + ".part")
        offset = part.stat().st_size if resume and part.exists() else 0
        with open(source, "rb") as src, open(part, "ab" if offset else "wb") as out:
            src.seek(offset)
            while chunk := src.read(self.chunk):
                if self.tamper:
                    chunk = bytes(b ^ 0xFF for b in chunk)
                out.write(chunk)
                out.flush()
                self.downloaded_bytes += len(chunk)
                if self.delay_s:
                    time.sleep(self.delay_s)
        signed = assignment.hashes["sha256"]
        if self.check_hashes and (
            part.stat().st_size != assignment.length or sha256(part) != signed
        ):
            part.unlink()
            raise VerificationError(f"{assignment.name}: downloaded bytes do not match")
        part.rename(final)
        return final


class ListReporter:
    """Collects events in memory (thread-safe)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def report(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.events.append(dict(event))

    def transitions(self) -> list[tuple[str, str]]:
        return [(e["from"], e["to"]) for e in self.events if e["type"] == "update_state"]


def manifest_of(bundle: Path) -> Manifest:
    from edgefleet.agent.update.bundle import read_manifest

    return read_manifest(bundle)
