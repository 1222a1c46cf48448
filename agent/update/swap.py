"""Serve predictions from the active model and replace it under load without a failed call.

``ModelHolder.predict`` takes a lease on the current runner (a reference count under a
short lock), runs outside the lock, and returns the lease. ``swap`` replaces the current
runner in one pointer assignment under the same lock, so every call that starts after the
swap sees the new model and every call already running finishes on the old one. The old
runner is closed only when its last lease is returned: by ``swap`` itself once the
in-flight calls drain, or, if they take longer than ``drain_timeout_s``, by the last call
to finish.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from edgefleet.agent.update.state import UpdateError

log = logging.getLogger(__name__)


class NoActiveModel(UpdateError):
    """``predict`` was called before any model was installed."""


class Runner(Protocol):
    """What the holder needs of a ``ModelRunner``."""

    def predict(self, inputs: Any) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


class _Lease:
    __slots__ = ("close_when_idle", "label", "refs", "retired", "runner", "version")

    def __init__(self, runner: Runner, label: str, version: str | None = None) -> None:
        self.runner = runner
        self.label = label
        self.version = version or label
        self.refs = 0
        self.retired = False
        self.close_when_idle = False


class ModelHolder:
    """The live model of the agent, swappable while other threads predict."""

    def __init__(self, runner: Runner | None = None, label: str = "",
                 drain_timeout_s: float = 30.0) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._current: _Lease | None = None if runner is None else _Lease(runner, label)
        self._drain_timeout_s = drain_timeout_s

    @property
    def label(self) -> str | None:
        """What the current model is (the bundle key the updater gave it), None when empty."""
        current = self._current
        return None if current is None else current.label

    @property
    def version(self) -> str | None:
        """The model version the current model's manifest declares (what telemetry and the
        registry call it); the label when none was given. None when empty."""
        current = self._current
        return None if current is None else current.version

    @property
    def runner(self) -> Runner | None:
        current = self._current
        return None if current is None else current.runner

    def predict(self, inputs: Mapping[str, Any] | Any) -> dict[str, np.ndarray]:
        """Run the current model.

        Raises:
            NoActiveModel: nothing was installed yet.
            Whatever the runner raises for bad input or a runtime failure.
        """
        with self._cond:
            lease = self._current
            if lease is None:
                raise NoActiveModel("no model is active on this device yet")
            lease.refs += 1
        try:
            return lease.runner.predict(inputs)
        finally:
            self._release(lease)

    def _release(self, lease: _Lease) -> None:
        close = False
        with self._cond:
            lease.refs -= 1
            if lease.refs == 0 and lease.retired:
                self._cond.notify_all()
                close = lease.close_when_idle  # swap() gave up waiting for this call
        if close:
            _close(lease)

    def swap(self, runner: Runner | None, label: str = "", version: str | None = None) -> None:
        """Make ``runner`` the current model; close the old one once its calls finish.

        ``label`` identifies the exact bundle (the updater's bundle key), ``version`` is the
        model version it declares (defaults to ``label``).

        Returns after the old runner is closed, or after ``drain_timeout_s`` (then the last
        in-flight call closes it). ``runner`` None empties the holder.
        """
        new = None if runner is None else _Lease(runner, label, version)
        with self._cond:
            old, self._current = self._current, new
            if old is None:
                return
            old.retired = True
            drained = self._cond.wait_for(lambda: old.refs == 0, self._drain_timeout_s)
            if not drained:
                old.close_when_idle = True
                log.warning("model %s still busy after %.1f s; closing it when idle",
                            old.label, self._drain_timeout_s)
                return
        _close(old)

    def close(self) -> None:
        """Empty the holder and close its model (waiting for in-flight calls)."""
        self.swap(None)


def _close(lease: _Lease) -> None:
    try:
        lease.runner.close()
    except Exception:  # a failing close must not fail the swap; the model is gone either way
        log.exception("closing model %s failed", lease.label)
