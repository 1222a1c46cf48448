"""Errors raised by the model registry, split by whose fault they are.

The API layer maps each class to one HTTP status through ``status`` and ``code``.
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base of every model-registry error."""

    status = 400
    code = "registry_error"


class NotFoundError(RegistryError):
    """The model or version does not exist."""

    status = 404
    code = "not_found"


class VersionExistsError(RegistryError):
    """A version with this name and version string is already registered (immutable)."""

    status = 409
    code = "version_exists"


class InvalidArtifactError(RegistryError):
    """The uploaded bytes are not a readable ONNX or TFLite model."""

    status = 422
    code = "invalid_artifact"


class InvalidMetadataError(RegistryError):
    """Upload metadata is malformed (bad version string, unknown parent, ...)."""

    status = 400
    code = "invalid_metadata"


class InvalidTransitionError(RegistryError):
    """The requested stage change is not in the transition table."""

    status = 409
    code = "invalid_transition"


class ApprovalRequiredError(RegistryError):
    """Promotion to production needs a recorded approval first."""

    status = 409
    code = "approval_required"


class ApprovalForbiddenError(RegistryError):
    """This actor may not approve this version (role too low, or self-approval)."""

    status = 403
    code = "approval_forbidden"
