"""The simulator's command-line inputs: broker URLs, faults per version (pure), and the
password and reference files."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

from edgefleet.agent.drift import DriftError, ReferenceProfile
from edgefleet.tools.simulate.device import VersionFaults
from edgefleet.tools.simulate.errors import SimulateConfigError
from edgefleet.tools.simulate.windows import load_reference

DEFAULT_SHIFT = 2.0
DEFAULT_PORT = 1883


def parse_broker_url(url: str) -> tuple[str, int]:
    """``mqtt://HOST[:PORT]`` → ``(host, port)``.

    Raises:
        SimulateConfigError: another scheme (TLS is not simulated) or no host.
    """
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme != "mqtt":
        raise SimulateConfigError(f"broker URL {url!r}: only mqtt:// is supported")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise SimulateConfigError(f"broker URL {url!r}: bad port") from None
    if not parts.hostname:
        raise SimulateConfigError(f"broker URL {url!r}: no host")
    return parts.hostname, port


def _split(spec: str, what: str) -> tuple[str, str]:
    version, sep, rest = spec.rpartition(":")
    if not sep:
        version, rest = spec, ""
    if not version:
        raise SimulateConfigError(f"{what} {spec!r}: no version")
    return version, rest


def _positive(text: str, spec: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SimulateConfigError(f"{what} {spec!r}: {text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise SimulateConfigError(f"{what} {spec!r}: must be a positive number")
    return value


def parse_faults(bad: Iterable[str] = (), fail: Iterable[str] = (),
                 latency: Iterable[str] = ()) -> dict[str, VersionFaults]:
    """Faults per version from ``--bad-version V[:shift=S]``, ``--fail-version V`` and
    ``--latency-factor V:F``.

    Raises:
        SimulateConfigError: a malformed spec.
    """
    out: dict[str, VersionFaults] = {}
    for spec in bad:
        version, rest = _split(spec, "--bad-version")
        shift = DEFAULT_SHIFT
        if rest:
            key, eq, value = rest.partition("=")
            if key != "shift" or not eq:
                raise SimulateConfigError(f"--bad-version {spec!r}: expected V:shift=NUMBER")
            try:
                shift = float(value)
            except ValueError:
                raise SimulateConfigError(f"--bad-version {spec!r}: {value!r} is not a "
                                          "number") from None
            if not math.isfinite(shift):
                raise SimulateConfigError(f"--bad-version {spec!r}: shift must be finite")
        out[version] = replace(out.get(version, VersionFaults()), output_shift=shift)
    for version in fail:
        if not version or ":" in version:
            raise SimulateConfigError(f"--fail-version {version!r}: expected a version")
        out[version] = replace(out.get(version, VersionFaults()), fail_install=True)
    for spec in latency:
        version, rest = _split(spec, "--latency-factor")
        if not rest:
            raise SimulateConfigError(f"--latency-factor {spec!r}: expected V:FACTOR")
        factor = _positive(rest, spec, "--latency-factor")
        out[version] = replace(out.get(version, VersionFaults()), latency_factor=factor)
    return out


def load_passwords(path: Path) -> dict[str, str]:
    """``{device_id: password}`` from a JSON file (the format ``edgefleet server
    mosquitto-config --devices`` reads).

    Raises:
        SimulateConfigError: unreadable, not JSON, or not an object of strings.
    """
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SimulateConfigError(f"cannot read {path}: {e}") from e
    if not isinstance(raw, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        raise SimulateConfigError(f"{path}: expected a JSON object of device id → password")
    return dict(raw)


def read_reference(path: Path) -> ReferenceProfile:
    """A drift reference profile from a JSON file: ``ReferenceProfile.to_dict()``, a
    bundle manifest or a registry version holding ``reference_profile``.

    Raises:
        SimulateConfigError: unreadable or not a valid profile.
    """
    try:
        return load_reference(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, DriftError) as e:
        raise SimulateConfigError(f"reference profile {path}: {e}") from e
