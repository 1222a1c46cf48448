"""The updates package's exceptions, split by whose fault it is.

``UpdatesError`` is the root. ``KeyError_`` family: the operator's key material is missing or
unsafe. ``RepositoryStateError``: the on-disk repositories are not initialised or
inconsistent. ``InvalidRequest``: a caller passed a bad name, device id or target.
"""

from __future__ import annotations


class UpdatesError(Exception):
    """Base of every error raised by edgefleet.fleet_server.updates."""


class KeyMaterialError(UpdatesError):
    """Key files are missing, unreadable, unsafe (permissions) or already exist."""


class MissingSigningKeyError(KeyMaterialError):
    """Fewer signing keys than the role's threshold are available (an offline key is needed)."""


class RepositoryStateError(UpdatesError):
    """The repositories on disk are missing, not initialised, or already initialised."""


class InvalidRequest(UpdatesError):
    """A bad target name, device id or assignment (the caller's fault)."""


class UnknownTargetError(InvalidRequest):
    """The image repository does not list this target."""
