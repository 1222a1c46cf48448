"""Exceptions of ``edgefleet.agent.federated``."""

from __future__ import annotations


class FederatedError(Exception):
    """Base class of every error raised by ``edgefleet.agent.federated``."""


class NodeKeyError(FederatedError):
    """The SuperNode key file exists but is unreadable or not an EC P-384 key (device side)."""


class DatasetError(FederatedError):
    """The training dataset cannot be exported (feedback store or disk failure)."""


class JoinError(FederatedError):
    """The fleet server did not register the SuperNode key (or gave an unusable answer)."""
