"""A fleet simulator: thousands of devices speaking the real MQTT contract in one process.

* :mod:`.mqtt`: a minimal MQTT 3.1.1 client codec (sans-I/O) for many connections;
* :mod:`.device`: one device's behaviour (pure: birth, status, heartbeats, drift windows,
  the update walk on a ``desired`` hint, faults per version);
* :mod:`.windows`: real drift window summaries, precomputed per version and reused;
* :mod:`.fleet`: the event loop holding every connection on one ``selectors`` selector;
* :mod:`.spec`: the command line's inputs (broker URL, fault specs, password and
  reference files); :mod:`.errors`: the exception hierarchy.

``edgefleet simulate`` (tools/cli/simulate.py) is the command; docs/simulate.md the guide.
"""

from edgefleet.tools.simulate.device import DeviceConfig, Message, SimDevice, VersionFaults
from edgefleet.tools.simulate.errors import (
    BrokerError,
    CapacityError,
    SimulateConfigError,
    SimulateError,
)
from edgefleet.tools.simulate.fleet import LIBRARY, Fleet, FleetConfig, FleetStats
from edgefleet.tools.simulate.windows import WindowSource, default_reference, load_reference

__all__ = [
    "LIBRARY",
    "BrokerError",
    "CapacityError",
    "DeviceConfig",
    "Fleet",
    "FleetConfig",
    "FleetStats",
    "Message",
    "SimDevice",
    "SimulateConfigError",
    "SimulateError",
    "VersionFaults",
    "WindowSource",
    "default_reference",
    "load_reference",
]
