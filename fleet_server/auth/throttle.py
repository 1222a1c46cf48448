"""Login throttling: too many failed logins for one username within a window → refuse.

Pure apart from the injected clock; state is in memory (per server process), which is
enough to make online password guessing slow. Keys are case-folded usernames.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

MAX_TRACKED = 10_000  # usernames remembered at once; the oldest are forgotten first


class LoginThrottle:
    """At most ``max_failures`` failed logins per username per ``window_s`` seconds."""

    def __init__(self, max_failures: int, window_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._max = max_failures
        self._window = window_s
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.get(key, deque())
        while times and times[0] <= now - self._window:
            times.popleft()
        return times

    def retry_after_s(self, username: str) -> float:
        """0 when a login for ``username`` may be tried now, else seconds to wait."""
        key = username.casefold()
        with self._lock:
            now = self._clock()
            times = self._recent(key, now)
            if len(times) < self._max:
                return 0.0
            return max(times[0] + self._window - now, 0.001)

    def failure(self, username: str) -> None:
        """Record a failed login."""
        key = username.casefold()
        with self._lock:
            now = self._clock()
            times = self._recent(key, now)
            times.append(now)
            self._failures[key] = times
            self._failures.move_to_end(key)
            while len(self._failures) > MAX_TRACKED:
                self._failures.popitem(last=False)

    def success(self, username: str) -> None:
        """Forget the failures of a user who logged in."""
        with self._lock:
            self._failures.pop(username.casefold(), None)
