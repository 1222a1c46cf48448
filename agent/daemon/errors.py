"""The daemon's exception hierarchy."""

from __future__ import annotations


class DaemonError(Exception):
    """Base class of every error raised by ``edgefleet.agent.daemon``."""


class ConfigError(DaemonError, ValueError):
    """``agent.toml`` is missing, unreadable or invalid (the message names the key)."""


class UnknownModelError(DaemonError, LookupError):
    """A request named a model the daemon does not serve."""


class UnknownPredictionError(DaemonError, LookupError):
    """Feedback named a prediction id the store does not hold (never seen, or evicted)."""


class StoreError(DaemonError):
    """The feedback store cannot be opened or written."""
