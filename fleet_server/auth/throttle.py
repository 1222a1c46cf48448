"""Login throttling: too many failed logins from one client within a window → refuse.

Two limits, both over a sliding window of ``window_s`` seconds:

* ``max_failures`` per (client address, case-folded username): slows online guessing of
  one account, without letting anyone lock the account's owner out from elsewhere;
* ``max_failures_per_ip`` per client address, whatever the usernames: slows spraying
  many accounts from one client. A successful login does not reset it.

IPv6 clients count per /64 (one host usually holds a whole /64). Behind a reverse proxy
every client has the proxy's address; see docs/server.md.

Pure apart from the injected clock; state is in memory (per server process). Each table
holds at most ``max_tracked`` keys; when full, expired keys go first, then the key with
the fewest recent failures, so flooding the table with new names cannot cheaply reset
the counter of a client that is close to (or over) a limit.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable

MAX_TRACKED = 10_000  # keys remembered per table at once
UNKNOWN_CLIENT = "unknown"


def client_key(remote_addr: str | None) -> str:
    """The throttling key of a client address: IPv4 as is, IPv6 as its /64 network."""
    try:
        address = ipaddress.ip_address((remote_addr or "").strip())
    except ValueError:
        return UNKNOWN_CLIENT
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class _Failures:
    """Failure times per key within a window, at most ``max_keys`` keys. Not locked."""

    def __init__(self, limit: int, window_s: float, max_keys: int) -> None:
        self.limit = limit
        self._window = window_s
        self._max_keys = max_keys
        self._times: dict[Hashable, deque[float]] = {}

    def __len__(self) -> int:
        return len(self._times)

    def _recent(self, key: Hashable, now: float) -> deque[float]:
        times = self._times.get(key, deque())
        while times and times[0] <= now - self._window:
            times.popleft()
        return times

    def retry_after_s(self, key: Hashable, now: float) -> float:
        times = self._recent(key, now)
        if len(times) < self.limit:
            return 0.0
        return max(times[-self.limit] + self._window - now, 0.001)

    def add(self, key: Hashable, now: float) -> None:
        times = self._recent(key, now)
        if key not in self._times and len(self._times) >= self._max_keys:
            self._make_room(now)
        times.append(now)
        if len(times) > self.limit:  # older ones no longer decide anything
            times.popleft()
        self._times[key] = times

    def forget(self, key: Hashable) -> None:
        self._times.pop(key, None)

    def _make_room(self, now: float) -> None:
        expired = [k for k, t in self._times.items() if not t or t[-1] <= now - self._window]
        for k in expired:
            del self._times[k]
        if len(self._times) >= self._max_keys:
            weakest = min(self._times, key=lambda k: (len(self._times[k]), self._times[k][-1]))
            del self._times[weakest]


class LoginThrottle:
    """At most ``max_failures`` failed logins per (client, username) and
    ``max_failures_per_ip`` per client (default 10 × ``max_failures``) per ``window_s``."""

    def __init__(self, max_failures: int, window_s: float,
                 clock: Callable[[], float] = time.monotonic, *,
                 max_failures_per_ip: int | None = None,
                 max_tracked: int = MAX_TRACKED) -> None:
        per_ip = max_failures_per_ip if max_failures_per_ip is not None else 10 * max_failures
        self._pairs = _Failures(max_failures, window_s, max_tracked)
        self._clients = _Failures(per_ip, window_s, max_tracked)
        self._clock = clock
        self._lock = threading.Lock()

    @staticmethod
    def _keys(remote_addr: str | None, username: str) -> tuple[str, tuple[str, str]]:
        client = client_key(remote_addr)
        return client, (client, username.casefold())

    def retry_after_s(self, remote_addr: str | None, username: str) -> float:
        """0 when ``remote_addr`` may try to log in as ``username`` now, else seconds to wait."""
        client, pair = self._keys(remote_addr, username)
        with self._lock:
            now = self._clock()
            return max(self._pairs.retry_after_s(pair, now),
                       self._clients.retry_after_s(client, now))

    def failure(self, remote_addr: str | None, username: str) -> None:
        """Record a failed login."""
        client, pair = self._keys(remote_addr, username)
        with self._lock:
            now = self._clock()
            self._pairs.add(pair, now)
            self._clients.add(client, now)

    def success(self, remote_addr: str | None, username: str) -> None:
        """Forget this client's failures for a user who logged in (not its per-client count)."""
        _, pair = self._keys(remote_addr, username)
        with self._lock:
            self._pairs.forget(pair)

    def tracked(self) -> int:
        """How many keys are remembered (both tables)."""
        with self._lock:
            return len(self._pairs) + len(self._clients)
