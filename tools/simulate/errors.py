"""The fleet simulator's exceptions, split by whose fault it is."""

from __future__ import annotations


class SimulateError(Exception):
    """Base of every error raised by ``edgefleet.tools.simulate``."""


class SimulateConfigError(SimulateError):
    """The caller asked for something unusable (a bad fault spec, an unreadable file)."""


class CapacityError(SimulateError):
    """This machine cannot hold the connections asked for (file descriptors, ports)."""


class BrokerError(SimulateError):
    """The broker is unreachable or refused every device."""
