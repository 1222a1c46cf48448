"""Errors raised by device enrollment and management, with their HTTP mapping."""

from __future__ import annotations


class DeviceError(Exception):
    """Base of every devices-package error."""

    status = 400
    code = "device_error"


class InvalidRequestError(DeviceError):
    """Malformed input (bad public key, bad group name, ...): the caller's fault."""

    status = 400
    code = "invalid_request"


class NotFoundError(DeviceError):
    """The device, group or token does not exist."""

    status = 404
    code = "not_found"


class ConflictError(DeviceError):
    """The change conflicts with current state (duplicate group, decommissioned device)."""

    status = 409
    code = "conflict"


class EnrollmentRefusedError(DeviceError):
    """Base of refused enrollment tokens."""

    status = 401
    code = "enrollment_refused"


class TokenInvalidError(EnrollmentRefusedError):
    """Unknown or forged token (no stored hash matches)."""

    status = 401
    code = "token_invalid"


class TokenUsedError(EnrollmentRefusedError):
    """The one-time token was already used to enroll a device."""

    status = 409
    code = "token_used"


class TokenExpiredError(EnrollmentRefusedError):
    """The token's expiry time has passed."""

    status = 410
    code = "token_expired"


class TokenRevokedError(EnrollmentRefusedError):
    """An operator revoked the token before it was used."""

    status = 410
    code = "token_revoked"
