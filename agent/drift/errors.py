"""The drift package's exceptions, split by whose fault an error is."""

from __future__ import annotations


class DriftError(Exception):
    """Base class for every error raised by :mod:`edgefleet.agent.drift`."""


class DriftDataError(DriftError, ValueError):
    """Input data is malformed: wrong shapes, inconsistent sizes, a summary that does not
    match its reference profile, or a serialized payload that fails validation. Payloads
    from devices are untrusted, so the server should count and drop these, never crash."""


class DriftConfigError(DriftError, ValueError):
    """A configuration value is out of range (the caller's mistake, not the data's)."""
