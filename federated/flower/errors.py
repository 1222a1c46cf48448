"""Exceptions of the Flower runtime, split by whose fault it is."""

from __future__ import annotations


class FlowerRuntimeError(Exception):
    """Base class of every error raised by ``edgefleet.federated.flower``."""


class SettingsError(FlowerRuntimeError, ValueError):
    """A run configuration or node configuration value is missing or invalid (caller's fault)."""


class CheckpointError(FlowerRuntimeError):
    """A checkpoint directory is missing, incomplete or unreadable."""


class NodeDataError(FlowerRuntimeError, ValueError):
    """A node's local data file is missing or malformed (device side)."""


class ProcessStartError(FlowerRuntimeError):
    """A SuperLink or SuperNode process did not start or did not become ready."""


class RunError(FlowerRuntimeError):
    """A Flower run could not be submitted, failed, or did not finish in time."""

    def __init__(self, message: str, *, run_id: int | None = None, status: str = "") -> None:
        super().__init__(message)
        self.run_id = run_id
        self.status = status
