"""The ingest package's exception hierarchy."""

from __future__ import annotations


class IngestError(Exception):
    """Base of every ingest error."""


class BodyError(IngestError, ValueError):
    """A message body does not match its channel's format."""

    def __init__(self, message: str, *, unknown_version: bool = False) -> None:
        super().__init__(message)
        self.unknown_version = unknown_version


class IngestConfigError(IngestError, ValueError):
    """Invalid ingestion settings (broker URL, sizes)."""
