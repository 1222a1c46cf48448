"""The evaluation job as the server runs it: registered from ``jobs(services)`` on the
real Scheduler (clock injected), run on its worker thread."""

from __future__ import annotations

from edgefleet.fleet_server.fleetdrift import jobs
from edgefleet.fleet_server.scheduler import Scheduler
from tests.fleet_server.fleetdrift.support import DriftEnv


def test_evaluation_job_runs_on_the_scheduler(env: DriftEnv) -> None:
    now = [0.0]
    scheduler = Scheduler(clock=lambda: now[0])
    for name, interval_s, fn in jobs(env.services):
        scheduler.every(name, interval_s, fn)
    device = env.enroll()
    env.store_window(device, env.summary(seed=21, shift=1.0))

    now[0] += env.drift.settings.evaluation_interval_s
    scheduler.run_pending()
    assert scheduler.stop(timeout_s=60)  # waits for the submitted run
    stats = scheduler.stats()["fleetdrift.evaluate"]
    assert (stats.runs, stats.failures) == (1, 0)
    assert env.get("/api/v1/drift/alerts?status=open")["total"] == 2
