"""The update machine end to end on real bundles, real slots and real onnxruntime models."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edgefleet.agent.runtime import ModelRunner, RunnerOptions, load_model
from edgefleet.agent.update.machine import (
    BundleMismatch,
    RollbackFailed,
    UpdateMachine,
    WarmupError,
    check_outputs,
)
from edgefleet.agent.update.slots import Slot
from edgefleet.agent.update.state import UpdateEvent, UpdateState
from edgefleet.agent.update.swap import NoActiveModel
from tests.agent.update.support import (
    DirVerifier,
    ListReporter,
    assignment_for,
    build_bundle,
    manifest_of,
)

S = UpdateState
HAPPY = [("idle", "checking"), ("checking", "downloading"), ("downloading", "verifying"),
         ("verifying", "staging"), ("staging", "warming"), ("warming", "switching"),
         ("switching", "committed")]
WARM_FAULTS = ["nan", "shape", "slow", "corrupt"]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("machine_bundles")
    out = {v: build_bundle(root, v, seed=i) for i, v in enumerate(["1", "2", "3"], start=1)}
    for kind in WARM_FAULTS:
        out[kind] = build_bundle(root, f"bad-{kind}", seed=9, kind=kind)
    return out


@dataclass
class Device:
    machine: UpdateMachine
    verifier: DirVerifier
    reporter: ListReporter
    root: Path

    def install(self, bundle: Path | None) -> UpdateState:
        self.verifier.assign(bundle)
        return self.machine.run_once().state

    def restart(self) -> UpdateMachine:
        self.machine.holder.close()
        self.machine = UpdateMachine(self.root / "agent", self.verifier, self.reporter)
        return self.machine


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Device]:
    verifier = DirVerifier(tmp_path / "server")
    reporter = ListReporter()
    dev = Device(UpdateMachine(tmp_path / "agent", verifier, reporter), verifier, reporter,
                 tmp_path)
    yield dev
    dev.machine.holder.close()


def _sample(bundle: Path) -> dict[str, np.ndarray]:
    return manifest_of(bundle).sample_arrays()


def test_install_and_upgrade(device: Device, bundles: dict[str, Path]) -> None:
    assert device.install(None) is S.IDLE
    assert device.reporter.transitions() == [("idle", "checking"), ("checking", "idle")]
    device.reporter.events.clear()
    assert device.install(bundles["1"]) is S.COMMITTED
    assert device.reporter.transitions() == HAPPY
    first = [e for e in device.reporter.events if e["type"] == "update_state"]
    assert all(e["bundle"] == "1.tar" and e["error"] is None for e in first[1:])
    assert [e["seq"] for e in first] == list(range(first[0]["seq"], first[0]["seq"] + 7))
    pointer = device.machine.slots.pointer()
    assert pointer is not None and pointer.slot is Slot.A
    assert device.machine.holder.label == assignment_for(bundles["1"]).key
    device.machine.holder.predict(_sample(bundles["1"]))

    assert device.install(bundles["2"]) is S.COMMITTED
    assert device.machine.slots.active() is Slot.B
    assert device.machine.holder.label == assignment_for(bundles["2"]).key
    assert not any((device.root / "agent" / "downloads").iterdir())  # bundle cleaned up
    device.reporter.events.clear()
    assert device.install(bundles["2"]) is S.IDLE  # already running it: no work
    assert device.reporter.transitions() == [("committed", "checking"), ("checking", "idle")]


@pytest.mark.parametrize("kind", WARM_FAULTS)
def test_a_bundle_failing_warm_up_rolls_back(device: Device, bundles: dict[str, Path],
                                            kind: str) -> None:
    device.install(bundles["1"])
    v1 = assignment_for(bundles["1"]).key
    device.reporter.events.clear()
    assert device.install(bundles[kind]) is S.IDLE
    assert device.reporter.transitions() == [
        ("committed", "checking"), *HAPPY[1:5], ("warming", "rolling_back"),
        ("rolling_back", "idle"),
    ]
    failure = next(e for e in device.reporter.events if e.get("event") == "failed")
    assert failure["bundle"] == f"bad-{kind}.tar" and failure["error"]
    assert device.machine.record.failed_in is S.WARMING
    # the old model is still active and serving
    assert device.machine.slots.active() is Slot.A
    assert device.machine.holder.label == v1
    assert device.machine.holder.predict(_sample(bundles["1"]))["probabilities"].shape == (2, 3)
    with pytest.raises(Exception, match="no complete model"):
        device.machine.slots.read(Slot.B)  # the failed model was removed
    # the same bad bundle is not retried; a new one installs normally
    device.reporter.events.clear()
    assert device.install(bundles[kind]) is S.IDLE
    assert device.reporter.transitions() == [("idle", "checking"), ("checking", "idle")]
    assert device.install(bundles["2"]) is S.COMMITTED


def test_bytes_not_matching_the_assignment_are_refused(device: Device,
                                                      bundles: dict[str, Path]) -> None:
    device.install(bundles["1"])
    device.verifier.tamper, device.verifier.check_hashes = True, False  # a verifier bug
    assert device.install(bundles["2"]) is S.IDLE
    assert device.machine.record.failed_in is S.VERIFYING
    assert "BundleMismatch" in (device.machine.record.error or "")
    assert device.machine.holder.label == assignment_for(bundles["1"]).key


def test_a_failed_download_keeps_the_partial_file_and_retries(
    device: Device, bundles: dict[str, Path]
) -> None:
    device.install(bundles["1"])
    device.verifier.fail_download = True
    assert device.install(bundles["2"]) is S.IDLE
    assert device.machine.record.failed_in is S.DOWNLOADING
    assert "ConnectionError" in (device.machine.record.error or "")
    device.verifier.fail_download = False
    assert device.machine.run_once().state is S.COMMITTED  # not blacklisted: retried


def test_first_install_failure_leaves_no_model(device: Device, bundles: dict[str, Path]) -> None:
    assert device.install(bundles["nan"]) is S.IDLE
    assert device.machine.slots.active() is None
    with pytest.raises(NoActiveModel):
        device.machine.holder.predict(_sample(bundles["1"]))


def test_reporter_failures_do_not_break_updates(device: Device, bundles: dict[str, Path]) -> None:
    class Broken:
        def report(self, event: dict[str, object]) -> None:
            raise OSError("server down")

    device.machine.reporter = Broken()
    assert device.install(bundles["1"]) is S.COMMITTED


def test_a_failed_check_goes_back_to_idle(device: Device) -> None:
    (device.verifier.server_dir / "assignment.json").write_text("{not json")
    assert device.machine.run_once().state is S.IDLE
    assert device.reporter.events[-1]["from"] == "checking"
    assert "JSONDecodeError" in device.reporter.events[-1]["error"]


@pytest.mark.parametrize("stop_at", [S.DOWNLOADING, S.VERIFYING, S.STAGING, S.WARMING,
                                     S.SWITCHING])
def test_resume_from_every_persisted_state(device: Device, bundles: dict[str, Path],
                                           stop_at: UpdateState) -> None:
    """Stop (as a crash would) right after a state is persisted, restart, finish."""
    device.install(bundles["1"])
    device.verifier.assign(bundles["2"])
    machine = device.machine
    machine._transition(UpdateEvent.CHECK)
    while machine.state is not stop_at:
        machine.step()
    machine = device.restart()
    assert machine.state is stop_at
    assert machine.boot().state is S.COMMITTED
    assert machine.holder.label == assignment_for(bundles["2"]).key
    assert machine.slots.active() is Slot.B
    assert any(e["type"] == "update_resumed" for e in device.reporter.events)


def test_resume_of_a_rollback(device: Device, bundles: dict[str, Path]) -> None:
    device.install(bundles["1"])
    device.verifier.assign(bundles["slow"])
    machine = device.machine
    machine._transition(UpdateEvent.CHECK)
    while machine.state is not S.ROLLING_BACK:
        machine.step()
    machine = device.restart()
    assert machine.boot().state is S.IDLE
    assert machine.holder.label == assignment_for(bundles["1"]).key


def test_resume_after_the_pointer_moved_in_switching_then_failing(
    device: Device, bundles: dict[str, Path]
) -> None:
    """The pointer was already swapped when the failure hit: rollback restores it."""
    device.install(bundles["1"])
    device.verifier.assign(bundles["2"])
    machine = device.machine
    machine._transition(UpdateEvent.CHECK)
    while machine.state is not S.SWITCHING:
        machine.step()
    machine.slots.set_active(Slot.B)
    machine._transition(UpdateEvent.FAILED, failed_in=S.SWITCHING, error="injected")
    machine = device.restart()
    assert machine.boot().state is S.IDLE
    assert machine.slots.active() is Slot.A
    assert machine.holder.label == assignment_for(bundles["1"]).key


def test_a_failing_rollback_is_reported_and_retried(device: Device,
                                                   bundles: dict[str, Path]) -> None:
    device.install(bundles["1"])
    device.verifier.assign(bundles["nan"])
    machine = device.machine
    machine._transition(UpdateEvent.CHECK)
    while machine.state is not S.ROLLING_BACK:
        machine.step()
    original = machine.slots.set_active

    def broken_disk(slot: Slot | None) -> None:
        raise OSError("disk")

    machine.slots.set_active = broken_disk
    with pytest.raises(RollbackFailed):
        machine.resume()
    assert machine.state is S.ROLLING_BACK
    assert device.reporter.events[-1]["type"] == "update_error"
    machine.slots.set_active = original
    assert machine.resume().state is S.IDLE


def test_updates_under_prediction_load_never_fail_a_prediction(
    device: Device, bundles: dict[str, Path]
) -> None:
    device.install(bundles["1"])
    sample = _sample(bundles["1"])
    stop = threading.Event()
    failures: list[BaseException] = []
    counts: list[int] = []

    def client() -> None:
        n = 0
        while not stop.is_set():
            try:
                device.machine.holder.predict(sample)
                n += 1
            except BaseException as exc:
                failures.append(exc)
        counts.append(n)

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for name in ["2", "nan", "3", "shape", "1", "slow", "2"]:
            state = device.install(bundles[name])
            assert state is (S.COMMITTED if name in "123" else S.IDLE)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert min(counts) > 0


def test_check_outputs_is_strict(tmp_path: Path, bundles: dict[str, Path]) -> None:
    manifest = manifest_of(bundles["1"])
    ok = {"probabilities": np.zeros((2, 3), np.float32)}
    check_outputs(manifest.signature, ok)
    bad = [{"probabilities": np.zeros((2, 4), np.float32)},
           {"probabilities": np.zeros((2, 3, 1), np.float32)},
           {"probabilities": np.full((2, 3), np.inf, np.float32)},
           {"other": np.zeros((2, 3), np.float32)}]
    for outputs in bad:
        with pytest.raises(WarmupError):
            check_outputs(manifest.signature, outputs)


def test_check_file_catches_length_and_digest(tmp_path: Path, bundles: dict[str, Path]) -> None:
    from edgefleet.agent.update.machine import check_file

    assignment = assignment_for(bundles["1"])
    copy = tmp_path / "b.tar"
    copy.write_bytes(bundles["1"].read_bytes())
    check_file(copy, assignment)
    copy.write_bytes(copy.read_bytes()[:-1] + b"\x01")
    with pytest.raises(BundleMismatch, match="sha256"):
        check_file(copy, assignment)
    copy.write_bytes(b"short")
    with pytest.raises(BundleMismatch, match="bytes"):
        check_file(copy, assignment)


def test_injected_loader_and_options_are_used(tmp_path: Path, bundles: dict[str, Path]) -> None:
    seen: list[RunnerOptions] = []

    def loader(path: Path, options: RunnerOptions) -> ModelRunner:
        seen.append(options)
        return load_model(path, options)

    from edgefleet.agent.update.machine import UpdaterConfig

    options = RunnerOptions(intra_op_threads=1)
    verifier = DirVerifier(tmp_path / "server")
    machine = UpdateMachine(tmp_path / "agent", verifier, ListReporter(),
                            config=UpdaterConfig(runner_options=options), loader=loader)
    verifier.assign(bundles["1"])
    assert machine.run_once().state is S.COMMITTED
    assert seen == [options]
    machine.holder.close()
