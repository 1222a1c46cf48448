"""A/B slots and the atomic active pointer."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.agent.update.bundle import BundleError
from edgefleet.agent.update.slots import Slot, SlotError, Slots
from tests.agent.update.support import build_bundle


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("slot_bundles")
    return {v: build_bundle(root, v, seed=i) for i, v in enumerate(["1", "2"])}


def test_fresh_device_has_no_active_slot(tmp_path: Path) -> None:
    slots = Slots(tmp_path)
    assert slots.pointer() is None and slots.active() is None
    assert slots.inactive() is Slot.A
    with pytest.raises(SlotError, match="no complete model"):
        slots.read(Slot.A)


def test_stage_switch_and_restage(tmp_path: Path, bundles: dict[str, Path]) -> None:
    slots = Slots(tmp_path)
    content = slots.stage(Slot.A, bundles["1"], "key-1")
    assert content.manifest.version == "1" and content.model_path.is_file()
    slots.set_active(Slot.A)
    assert slots.pointer() is not None and slots.pointer().bundle == "key-1"
    assert slots.inactive() is Slot.B
    with pytest.raises(SlotError, match="active"):
        slots.stage(Slot.A, bundles["2"], "key-2")
    with pytest.raises(SlotError, match="active"):
        slots.clear(Slot.A)
    slots.stage(Slot.B, bundles["2"], "key-2")
    slots.stage(Slot.B, bundles["2"], "key-2")  # repeating a stage is fine
    slots.set_active(Slot.B)
    slots.set_active(Slot.B)  # idempotent
    assert slots.read(Slot.B).manifest.version == "2"
    assert slots.read(Slot.A).manifest.version == "1"  # the previous slot stays intact
    assert not list(slots.slots_dir.glob(".staging-*"))
    slots.set_active(None)
    assert slots.active() is None


def test_a_failed_stage_leaves_the_slot_empty(tmp_path: Path, bundles: dict[str, Path]) -> None:
    slots = Slots(tmp_path)
    slots.stage(Slot.B, bundles["1"], "key-1")
    broken = tmp_path / "broken.tar"
    broken.write_bytes(bundles["2"].read_bytes()[:700])
    with pytest.raises(BundleError):
        slots.stage(Slot.B, broken, "key-2")
    with pytest.raises(SlotError):
        slots.read(Slot.B)
    with pytest.raises(SlotError):
        slots.set_active(Slot.B)  # an incomplete slot can never become active


def test_damage_is_detected(tmp_path: Path, bundles: dict[str, Path]) -> None:
    slots = Slots(tmp_path)
    content = slots.stage(Slot.A, bundles["1"], "key-1")
    data = bytearray(content.model_path.read_bytes())
    data[-3] ^= 0xFF
    content.model_path.write_bytes(bytes(data))
    with pytest.raises(SlotError, match="does not match"):
        slots.read(Slot.A)
    slots.pointer_path.write_text("{garbage")
    with pytest.raises(SlotError, match="damaged active pointer"):
        slots.pointer()
