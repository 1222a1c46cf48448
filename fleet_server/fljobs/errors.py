"""The federated-jobs feature's exceptions (the API maps them to 400 / 404 / 409 / 503)."""

from __future__ import annotations


class FlJobError(Exception):
    """Base class of federated-job errors."""


class JobNotFound(FlJobError):
    """No job with that id, or a model / version / device the request names is unknown."""


class JobInvalid(FlJobError, ValueError):
    """The request is inconsistent or names data that cannot be used (caller's fault)."""


class JobConflict(FlJobError):
    """The request conflicts with the current state (job finished, key registered twice,
    too few eligible devices)."""


class FederationUnavailable(FlJobError):
    """The supervised SuperLink cannot be started or reached (the server's environment)."""
