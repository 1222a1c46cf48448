"""Two model slots (A and B) and the atomic pointer saying which one is active.

Layout under ``root``::

    active.json        {"slot": "A", "bundle": "<Assignment.key>"}, replaced atomically
    slots/A/           edgefleet.json + model file (+ slot.json, written last)
    slots/B/
    slots/.staging-*   a slot being extracted (never referenced; removed on the next stage)

A slot directory only ever appears by renaming a fully written and fsynced staging
directory, so the pointer can never reference a partial slot. Staging refuses the active
slot: the model in use is never touched.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from edgefleet.agent.update.bundle import (
    MANIFEST_NAME,
    BundleError,
    BundleLimits,
    Manifest,
    extract_bundle,
    file_sha256,
)
from edgefleet.agent.update.state import UpdateError, atomic_write_json, fsync_dir

log = logging.getLogger(__name__)

SLOT_INFO = "slot.json"


class SlotError(UpdateError):
    """A slot is missing, incomplete or damaged, or an operation would touch the active one."""


class Slot(StrEnum):
    A = "A"
    B = "B"

    @property
    def other(self) -> Slot:
        return Slot.B if self is Slot.A else Slot.A


@dataclass(frozen=True)
class SlotContent:
    """A complete slot: its manifest, model file and the bundle it came from."""

    slot: Slot
    manifest: Manifest
    model_path: Path
    bundle: str


@dataclass(frozen=True)
class ActivePointer:
    slot: Slot
    bundle: str


class Slots:
    """The A/B slot directories and the active pointer under one root directory."""

    def __init__(self, root: str | os.PathLike[str], limits: BundleLimits | None = None) -> None:
        self.root = Path(root)
        self.limits = limits or BundleLimits()
        self.pointer_path = self.root / "active.json"
        self.slots_dir = self.root / "slots"
        self.slots_dir.mkdir(parents=True, exist_ok=True)

    def path(self, slot: Slot) -> Path:
        return self.slots_dir / slot.value

    # -- the pointer ----------------------------------------------------------------------
    def pointer(self) -> ActivePointer | None:
        """The active slot and its bundle key, or None on a device with no model yet.

        Raises:
            SlotError: the pointer file is damaged (cannot happen with atomic writes
                unless the disk lies).
        """
        try:
            data = json.loads(self.pointer_path.read_bytes())
            return ActivePointer(Slot(data["slot"]), str(data["bundle"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise SlotError(f"damaged active pointer {self.pointer_path}: {exc}") from exc

    def active(self) -> Slot | None:
        pointer = self.pointer()
        return None if pointer is None else pointer.slot

    def inactive(self) -> Slot:
        active = self.active()
        return Slot.A if active is None else active.other

    def set_active(self, slot: Slot | None) -> None:
        """Point at ``slot`` atomically (None: no active model). Idempotent.

        Raises:
            SlotError: ``slot`` is not complete.
        """
        if slot is None:
            if self.pointer_path.exists():
                self.pointer_path.unlink()
                fsync_dir(self.root)
            return
        content = self.read(slot, verify=False)
        current = self.pointer()
        if current == ActivePointer(slot, content.bundle):
            return
        atomic_write_json(self.pointer_path, {"slot": slot.value, "bundle": content.bundle})
        log.info("active model slot is now %s (%s)", slot.value, content.bundle)

    # -- slot content ---------------------------------------------------------------------
    def read(self, slot: Slot, *, verify: bool = True) -> SlotContent:
        """A complete slot's content; ``verify`` re-hashes the model file.

        Raises:
            SlotError: the slot is empty, incomplete or its model does not match its manifest.
        """
        directory = self.path(slot)
        try:
            info = json.loads((directory / SLOT_INFO).read_bytes())
            manifest = Manifest.from_json((directory / MANIFEST_NAME).read_bytes())
        except FileNotFoundError:
            raise SlotError(f"slot {slot.value} holds no complete model") from None
        except (ValueError, BundleError) as exc:
            raise SlotError(f"slot {slot.value} is damaged: {exc}") from exc
        model_path = directory / manifest.model_file
        if verify and (not model_path.is_file() or file_sha256(model_path)
                       != manifest.model_sha256):
            raise SlotError(f"slot {slot.value}: model file does not match its manifest")
        return SlotContent(slot, manifest, model_path, str(info.get("bundle", "")))

    def stage(
        self, slot: Slot, bundle_path: str | os.PathLike[str], bundle_key: str
    ) -> SlotContent:
        """Replace the inactive ``slot`` with the content of a verified bundle.

        Extracts into a fresh staging directory, fsyncs it, then renames it into place;
        a crash at any point leaves the slot either absent or complete. Safe to repeat.

        Raises:
            SlotError: ``slot`` is the active slot.
            BundleError: the bundle is malformed, unsafe or over the size caps.
        """
        if slot == self.active():
            raise SlotError(f"refusing to stage into the active slot {slot.value}")
        self._clean_staging()
        target = self.path(slot)
        self.clear(slot)
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{slot.value}-", dir=self.slots_dir))
        extract_bundle(bundle_path, staging, self.limits)
        atomic_write_json(staging / SLOT_INFO, {"bundle": bundle_key})
        os.replace(staging, target)
        fsync_dir(self.slots_dir)
        return self.read(slot, verify=False)

    def clear(self, slot: Slot) -> None:
        """Remove an inactive slot's content (no-op when empty).

        Raises:
            SlotError: ``slot`` is the active slot.
        """
        if slot == self.active():
            raise SlotError(f"refusing to clear the active slot {slot.value}")
        target = self.path(slot)
        if target.exists():
            # Rename first so a crash mid-delete never leaves a half-deleted slot in place.
            doomed = Path(tempfile.mkdtemp(prefix=f".staging-rm-{slot.value}-",
                                           dir=self.slots_dir))
            os.replace(target, doomed / "old")
            fsync_dir(self.slots_dir)
            shutil.rmtree(doomed, ignore_errors=True)

    def _clean_staging(self) -> None:
        for leftover in self.slots_dir.glob(".staging-*"):
            shutil.rmtree(leftover, ignore_errors=True)
