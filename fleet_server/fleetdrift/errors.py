"""The fleet drift package's exceptions (one hierarchy)."""

from __future__ import annotations


class FleetDriftError(Exception):
    """Base of every fleet drift error."""


class NoReferenceError(FleetDriftError):
    """The model version is unknown or has no usable reference profile."""


class UnknownVersionError(NoReferenceError):
    """The registry has no such model version."""


class InvalidQueryError(FleetDriftError):
    """A drift query is malformed (bad scope, time range, or too many windows)."""
