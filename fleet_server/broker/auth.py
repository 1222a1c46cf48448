"""The authentication / authorisation hook the embedded broker calls."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class BrokerAuth(Protocol):
    """Decides who may connect and which topics they may use.

    The embedded broker calls ``authenticate`` on a worker thread (it may hash
    passwords or read a database) and ``may_publish`` / ``may_subscribe`` on the
    broker's event-loop thread (keep them fast and pure, e.g. the functions in
    :mod:`edgefleet.fleet_server.broker.acl`). All three must be thread-safe. An
    exception from any of them is logged and treated as "no".
    """

    def authenticate(self, username: str, password: str) -> bool:
        """True when ``password`` is the current broker password of ``username``."""
        ...

    def may_publish(self, username: str, topic: str) -> bool:
        """True when ``username`` may publish to (or set its last will on) ``topic``."""
        ...

    def may_subscribe(self, username: str, topic: str) -> bool:
        """True when ``username`` may subscribe with filter ``topic``; also asked with a
        concrete topic name before each delivery to that user."""
        ...
