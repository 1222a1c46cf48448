"""A small periodic-job scheduler for the server process (presence timeouts, rollout
ticks, retention sweeps, ...).

One loop thread decides what is due; jobs run on a small worker pool so a slow job
does not delay the others. Rules:

* a job never overlaps itself: when its previous run is still going at the next due
  time, that run is skipped (and counted), not queued;
* a failing job is logged with its traceback and counted; the loop and the job's
  later runs go on;
* a job first runs one interval after :meth:`Scheduler.start` (or after
  :meth:`Scheduler.every` on a running scheduler); missed runs are not caught up;
* time is injected: ``clock`` (seconds, monotonic) and ``sleep`` (seconds); tests
  can drive :meth:`Scheduler.run_pending` directly without the loop thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

logger = logging.getLogger(__name__)

DEFAULT_MAX_SLEEP_S = 1.0  # the loop re-checks at least this often (new jobs, stop)


class SchedulerError(Exception):
    """Misuse of the scheduler (the caller's fault): bad interval, duplicate name."""


@dataclass(frozen=True)
class JobStats:
    """What a job did so far (a snapshot)."""

    name: str
    interval_s: float
    runs: int  # completed runs, successful or not
    failures: int
    skipped_overlaps: int  # due times skipped because the previous run was still going
    running: bool
    last_error: str | None


class _Job:
    """Mutable per-job state; only touched with the scheduler's lock held."""

    def __init__(self, name: str, interval_s: float, fn: Callable[[], None], due: float) -> None:
        self.name = name
        self.interval_s = interval_s
        self.fn = fn
        self.due = due
        self.future: Future[None] | None = None
        self.runs = 0
        self.failures = 0
        self.skipped_overlaps = 0
        self.last_error: str | None = None

    def stats(self) -> JobStats:
        return JobStats(
            name=self.name,
            interval_s=self.interval_s,
            runs=self.runs,
            failures=self.failures,
            skipped_overlaps=self.skipped_overlaps,
            running=self.future is not None and not self.future.done(),
            last_error=self.last_error,
        )


class Scheduler:
    """Runs registered functions every ``interval_s`` seconds on worker threads.

    Args:
        clock: monotonic time in seconds (default ``time.monotonic``).
        sleep: waits the given seconds; default: an event wait that :meth:`stop`
            interrupts. An injected ``sleep`` must return promptly for stop to be quick.
        max_workers: how many jobs may run at the same time.
        max_sleep_s: the loop wakes up at least this often.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
        max_workers: int = 4,
        max_sleep_s: float = DEFAULT_MAX_SLEEP_S,
    ) -> None:
        if max_workers < 1:
            raise SchedulerError("max_workers must be at least 1")
        self._clock = clock
        self._stopping = threading.Event()
        self._sleep = sleep if sleep is not None else self._stopping.wait
        self._max_workers = max_workers
        self._max_sleep_s = max_sleep_s
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None

    # -- registration ----------------------------------------------------------------

    def every(self, name: str, interval_s: float, fn: Callable[[], None]) -> None:
        """Run ``fn()`` every ``interval_s`` seconds, first one interval from now.

        May be called before or after :meth:`start`.

        Raises:
            SchedulerError: ``interval_s`` is not positive, or ``name`` is taken.
        """
        if not interval_s > 0:
            raise SchedulerError(f"job {name!r}: interval_s must be positive, got {interval_s}")
        with self._lock:
            if name in self._jobs:
                raise SchedulerError(f"a job named {name!r} is already scheduled")
            self._jobs[name] = _Job(name, interval_s, fn, self._clock() + interval_s)

    def stats(self) -> dict[str, JobStats]:
        """A snapshot of every job's counters, by name."""
        with self._lock:
            return {name: job.stats() for name, job in self._jobs.items()}

    # -- running ---------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._thread is not None

    def start(self) -> None:
        """Start the loop thread. No-op when running. Jobs are due one interval later."""
        with self._lock:
            if self._thread is not None:
                return
            now = self._clock()
            for job in self._jobs.values():
                job.due = now + job.interval_s
            self._stopping.clear()
            self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
            self._thread.start()
        logger.info("scheduler started with %d job(s)", len(self._jobs))

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Stop the loop and wait up to ``timeout_s`` for running jobs. Idempotent.

        Returns:
            True when the loop and every job finished in time; False when a job is
            still running (it keeps its worker thread until it returns).
        """
        deadline = time.monotonic() + timeout_s
        with self._lock:
            thread, self._thread = self._thread, None
        self._stopping.set()
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            executor, self._executor = self._executor, None
            futures = [job.future for job in self._jobs.values() if job.future is not None]
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        _, not_done = wait(futures, timeout=max(0.0, deadline - time.monotonic()))
        loop_ended = thread is None or not thread.is_alive()
        if not_done or not loop_ended:
            logger.warning("scheduler stopped; %d job(s) still running", len(not_done))
            return False
        if thread is not None:
            logger.info("scheduler stopped")
        return True

    def run_pending(self) -> float:
        """Submit every due job that is not still running; return seconds until the
        next due time (at most ``max_sleep_s``). The loop thread calls this; tests may
        call it directly with an injected clock."""
        with self._lock:
            now = self._clock()
            for job in self._jobs.values():
                if job.due > now:
                    continue
                if job.future is not None and not job.future.done():
                    job.skipped_overlaps += 1
                    logger.debug("job %r still running; skipping this run", job.name)
                else:
                    job.future = self._pool().submit(self._run_job, job)
                job.due += job.interval_s
                if job.due <= now:  # fell behind by a whole interval: do not catch up
                    job.due = now + job.interval_s
            next_due = min((job.due for job in self._jobs.values()), default=now + 3600.0)
        return max(0.0, min(next_due - now, self._max_sleep_s))

    # -- internals -------------------------------------------------------------------

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._max_workers, thread_name_prefix="job")
        return self._executor

    def _run_job(self, job: _Job) -> None:
        error: str | None = None
        try:
            job.fn()
        except Exception as exc:  # a job's failure must never reach the loop
            logger.exception("scheduled job %r failed", job.name)
            error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            job.runs += 1
            if error is not None:
                job.failures += 1
                job.last_error = error

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                delay = self.run_pending()
            except RuntimeError:  # executor shut down by a concurrent stop()
                break
            except Exception:
                logger.exception("scheduler loop error; continuing")
                delay = self._max_sleep_s
            self._sleep(delay)
