"""Where the signed repositories live on disk, and the names allowed in them (pure).

Layout under the repository directory (``<data_dir>/repo`` on the server)::

    image/metadata/{N.root.json, root.json, N.targets.json, N.snapshot.json, timestamp.json}
    image/targets/<sha256>.<target name>
    director/root/{N.root.json, root.json}          shared by every device's director repo
    director/devices/<device_id>/metadata/{N.targets.json, N.snapshot.json, timestamp.json}

Both repositories use TUF consistent snapshots: snapshot and targets metadata are only ever
written under new versioned names, so a client that is mid-refresh never sees a mix of old
and new files; only ``timestamp.json`` and ``root.json`` are replaced (atomically).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edgefleet.fleet_server.updates.errors import InvalidRequest

TARGET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
METADATA_FILE_RE = re.compile(r"^(?:(?P<version>[1-9][0-9]{0,9})\.)?"
                              r"(?P<role>root|targets|snapshot|timestamp)\.json$")
STORED_TARGET_RE = re.compile(r"^[0-9a-f]{64}\.[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$")


def check_target_name(name: str) -> str:
    """``name`` if it is a valid flat target name (no path separators, no leading dot).

    Raises:
        InvalidRequest: the name is empty, too long or holds other characters.
    """
    if not TARGET_NAME_RE.fullmatch(name) or ".." in name:
        raise InvalidRequest(f"invalid target name {name!r}: use letters, digits and ._+-")
    return name


def check_device_id(device_id: str) -> str:
    """``device_id`` if it is safe as a single path component.

    Raises:
        InvalidRequest: otherwise.
    """
    if not DEVICE_ID_RE.fullmatch(device_id) or ".." in device_id:
        raise InvalidRequest(f"invalid device id {device_id!r}")
    return device_id


@dataclass(frozen=True)
class RepoLayout:
    """The paths of both repositories below ``root``."""

    root: Path

    @property
    def image_metadata(self) -> Path:
        return self.root / "image" / "metadata"

    @property
    def image_targets(self) -> Path:
        return self.root / "image" / "targets"

    @property
    def director_root(self) -> Path:
        return self.root / "director" / "root"

    @property
    def director_devices(self) -> Path:
        return self.root / "director" / "devices"

    def director_metadata(self, device_id: str) -> Path:
        """A device's director metadata directory (the id is validated).

        Raises:
            InvalidRequest: the device id is not a safe path component.
        """
        return self.director_devices / check_device_id(device_id) / "metadata"

    def is_initialised(self) -> bool:
        return (self.image_metadata / "root.json").is_file() and (
            self.director_root / "root.json").is_file()
