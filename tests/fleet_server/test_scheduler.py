"""The periodic-job scheduler, driven by an injected clock (no timing assertions)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from edgefleet.fleet_server.scheduler import Scheduler, SchedulerError

WAIT_S = 10.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds

    def sleep(self, seconds: float) -> None:
        """For the loop thread: fake time passes, real time barely (just yield)."""
        self.advance(max(seconds, 0.5))
        time.sleep(0.001)


def wait_until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def scheduler(clock: FakeClock) -> Iterator[Scheduler]:
    made = Scheduler(clock=clock, sleep=clock.sleep)
    yield made
    assert made.stop(timeout_s=WAIT_S)


def test_every_validates_interval_and_name(scheduler: Scheduler) -> None:
    scheduler.every("a", 5, lambda: None)
    with pytest.raises(SchedulerError):
        scheduler.every("a", 5, lambda: None)
    for bad in (0, -1, float("nan")):
        with pytest.raises(SchedulerError):
            scheduler.every("b", bad, lambda: None)


def test_job_runs_once_per_interval_after_the_first_interval(
    scheduler: Scheduler, clock: FakeClock
) -> None:
    calls: list[float] = []
    scheduler.every("tick", 10, lambda: calls.append(clock()))
    scheduler.run_pending()
    clock.advance(9.9)
    scheduler.run_pending()
    assert scheduler.stats()["tick"].runs == 0

    clock.advance(0.1)
    scheduler.run_pending()
    wait_until(lambda: scheduler.stats()["tick"].runs == 1)
    scheduler.run_pending()  # same instant: not due again
    clock.advance(10)
    scheduler.run_pending()
    wait_until(lambda: scheduler.stats()["tick"].runs == 2)
    assert calls == [1010.0, 1020.0]


def test_missed_runs_are_not_caught_up(scheduler: Scheduler, clock: FakeClock) -> None:
    scheduler.every("tick", 10, lambda: None)
    clock.advance(1000)
    scheduler.run_pending()
    scheduler.run_pending()
    wait_until(lambda: not scheduler.stats()["tick"].running)
    assert scheduler.stats()["tick"].runs == 1
    clock.advance(9.9)  # the next run is one interval after the late one
    scheduler.run_pending()
    assert scheduler.stats()["tick"].runs == 1
    clock.advance(0.1)
    scheduler.run_pending()
    wait_until(lambda: scheduler.stats()["tick"].runs == 2)


def test_a_job_never_overlaps_itself(scheduler: Scheduler, clock: FakeClock) -> None:
    started, release = threading.Event(), threading.Event()
    active, most_active = [0], [0]
    lock = threading.Lock()

    def slow() -> None:
        with lock:
            active[0] += 1
            most_active[0] = max(most_active[0], active[0])
        started.set()
        release.wait(WAIT_S)
        with lock:
            active[0] -= 1

    scheduler.every("slow", 1, slow)
    clock.advance(1)
    scheduler.run_pending()
    assert started.wait(WAIT_S)
    for _ in range(5):  # five more due times while the first run is still going
        clock.advance(1)
        scheduler.run_pending()
    stats = scheduler.stats()["slow"]
    assert (stats.running, stats.runs, stats.skipped_overlaps) == (True, 0, 5)

    release.set()
    wait_until(lambda: scheduler.stats()["slow"].runs == 1)
    wait_until(lambda: not scheduler.stats()["slow"].running)
    clock.advance(1)
    scheduler.run_pending()
    wait_until(lambda: scheduler.stats()["slow"].runs == 2)
    assert most_active[0] == 1


def test_a_slow_job_does_not_hold_up_the_others(scheduler: Scheduler, clock: FakeClock) -> None:
    release, fast_ran = threading.Event(), threading.Event()
    scheduler.every("slow", 1, lambda: release.wait(WAIT_S) and None)
    scheduler.every("fast", 2, fast_ran.set)
    clock.advance(1)
    scheduler.run_pending()
    clock.advance(1)
    scheduler.run_pending()
    assert fast_ran.wait(WAIT_S)
    assert scheduler.stats()["slow"].running
    release.set()


def test_a_failing_job_is_logged_and_the_loop_goes_on(
    scheduler: Scheduler, caplog: pytest.LogCaptureFixture
) -> None:
    second_run, other_ran = threading.Event(), threading.Event()
    calls = [0]

    def flaky() -> None:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("database is locked")
        second_run.set()

    scheduler.every("flaky", 1, flaky)
    scheduler.every("other", 1, other_ran.set)
    with caplog.at_level(logging.ERROR, logger="edgefleet.fleet_server.scheduler"):
        scheduler.start()
        assert second_run.wait(WAIT_S)
        assert other_ran.wait(WAIT_S)

    failures = [r for r in caplog.records if "scheduled job 'flaky' failed" in r.getMessage()]
    assert failures and failures[0].exc_info is not None
    stats = scheduler.stats()["flaky"]
    assert stats.failures == 1
    assert stats.last_error == "RuntimeError: database is locked"
    assert scheduler.running


def test_jobs_added_after_start_run_too(scheduler: Scheduler) -> None:
    ran = threading.Event()
    scheduler.start()
    scheduler.every("late", 1, ran.set)
    assert ran.wait(WAIT_S)


def test_stop_joins_the_loop_and_is_idempotent(clock: FakeClock) -> None:
    scheduler = Scheduler(clock=clock, sleep=clock.sleep)
    ran = threading.Event()
    scheduler.every("tick", 1, ran.set)
    scheduler.start()
    scheduler.start()  # no second loop
    assert ran.wait(WAIT_S)
    assert [t.name for t in threading.enumerate()].count("scheduler") == 1
    assert scheduler.stop()
    assert scheduler.stop()
    assert not scheduler.running
    assert "scheduler" not in [t.name for t in threading.enumerate()]


def test_stop_interrupts_the_default_sleep() -> None:
    scheduler = Scheduler(max_sleep_s=3600)  # real clock, real (event) sleep
    scheduler.every("hourly", 3600, lambda: None)
    scheduler.start()
    assert scheduler.stop(timeout_s=WAIT_S)


def test_stop_is_bounded_when_a_job_hangs(clock: FakeClock) -> None:
    scheduler = Scheduler(clock=clock, sleep=clock.sleep)
    started, release = threading.Event(), threading.Event()

    def hangs() -> None:
        started.set()
        release.wait(WAIT_S)

    scheduler.every("hangs", 1, hangs)
    scheduler.start()
    assert started.wait(WAIT_S)
    assert scheduler.stop(timeout_s=0.05) is False  # reports the job it left running
    release.set()
    assert not scheduler.running


def test_restart_after_stop(clock: FakeClock) -> None:
    scheduler = Scheduler(clock=clock, sleep=clock.sleep)
    runs = threading.Semaphore(0)
    scheduler.every("tick", 1, runs.release)
    scheduler.start()
    assert runs.acquire(timeout=WAIT_S)
    assert scheduler.stop()
    scheduler.start()
    assert runs.acquire(timeout=WAIT_S)
    assert scheduler.stop()
