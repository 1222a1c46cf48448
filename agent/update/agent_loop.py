"""The updater as a running agent: enrollment in, periodic update checks out.

``UpdateAgent.from_state_dir(state_dir)`` reads what enrollment stored
(``enrollment.json``, ``device_key.pem``) and wires the parts together:

* ``verify.BundleVerifier`` (both TUF repositories of the fleet server) with a
  ``fetcher.ResumableFetcher``, adapted by ``machine.TufVerifier``;
* ``machine.UpdateMachine`` with a ``swap.ModelHolder`` (``agent.holder``: a daemon
  serves predictions from it while updates happen);
* ``reporter.HttpReporter`` (signed ``POST /api/v1/device/events``, sender thread).

Files, below ``<state_dir>/update/``: the machine's ``update-state.json``,
``active.json``, ``slots/``, ``downloads/``; ``tuf/{image,director}/`` (trusted metadata);
``partial/`` (the resumable download); ``events.jsonl`` (undelivered events).

The trust anchors are the roots enrollment stored (``update_root``), or the newer root
ngclient already verified and cached in ``tuf/<repo>/root.json`` (so a key rotation the
device followed is never undone by starting again from the enrollment root).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgefleet.agent.update.fetcher import ResumableFetcher
from edgefleet.agent.update.machine import (
    RollbackFailed,
    TufVerifier,
    UpdateMachine,
    UpdaterConfig,
)
from edgefleet.agent.update.reporter import HttpReporter, ReporterConfig
from edgefleet.agent.update.shadow import ShadowListener, ShadowManager
from edgefleet.agent.update.signing import SigningError, load_device_key
from edgefleet.agent.update.state import Assignment, UpdateError, UpdateRecord
from edgefleet.agent.update.swap import ModelHolder
from edgefleet.agent.update.verify import BundleVerifier, RepoUrls, TrustConfig

log = logging.getLogger(__name__)

UPDATE_DIR = "update"
EVENTS_FILE = "events.jsonl"
API_PREFIX = "/api/v1"
NO_ROOT_HINT = "enroll again after the server ran `edgefleet keys init`"

EventListener = Callable[[dict[str, Any]], None]
MIN_EARLY_CHECK_S = 5.0  # at most one check requested early (desired hint) per this time
_WAIT_SLICE_S = 0.25     # how often a waiting loop looks at its stop event


class AgentSetupError(Exception):
    """The agent cannot start: not enrolled, no update roots, unreadable key or state."""


class _Tee:
    """Passes every event to the reporter and to local listeners (the CLI's output)."""

    def __init__(self, reporter: HttpReporter, listeners: list[EventListener]) -> None:
        self.reporter = reporter
        self.listeners = listeners

    def report(self, event: dict[str, Any]) -> None:
        self.reporter.report(event)
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # a listener must never break an update
                log.exception("update event listener failed")


def _root_bytes(update_root: dict[str, Any], repo: str, cached: Path) -> bytes:
    """The newer of the enrollment root and the root ngclient cached for ``repo``."""
    from tuf.api.metadata import Metadata, Root

    given = update_root.get(repo)
    if not isinstance(given, dict):
        raise AgentSetupError(f"enrollment.json has no {repo} root in update_root; "
                              f"{NO_ROOT_HINT}")
    enrolled = json.dumps(given).encode()
    try:
        enrolled_version = Metadata[Root].from_bytes(enrolled).signed.version
    except Exception as e:
        raise AgentSetupError(f"the {repo} root in enrollment.json is invalid: {e}") from e
    try:
        local = cached.read_bytes()
        if Metadata[Root].from_bytes(local).signed.version >= enrolled_version:
            return local  # verified by ngclient when it was cached
    except FileNotFoundError:
        pass
    except Exception as e:  # a damaged cache: start again from the enrollment root
        log.warning("ignoring the cached %s root %s: %s", repo, cached, e)
    return enrolled


class UpdateAgent:
    """Runs ``UpdateMachine`` checks periodically; ``holder`` serves the live model.

    ``request_check()`` asks for a check now (the daemon calls it when the server's
    ``desired`` hint names another target); such early checks are rate-limited to one
    per ``min_early_check_s``. ``shadow`` (optional) follows the director's shadow entry
    after every successful check.
    """

    def __init__(self, machine: UpdateMachine, reporter: HttpReporter, *,
                 check_interval_s: float = 60.0, shadow: ShadowManager | None = None,
                 min_early_check_s: float = MIN_EARLY_CHECK_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.machine = machine
        self.reporter = reporter
        self.check_interval_s = check_interval_s
        self.shadow = shadow
        self.min_early_check_s = min_early_check_s
        self._clock = clock
        self._booted = False
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._early_due: float | None = None
        self._last_early = -float("inf")
        self.early_checks = 0  # checks run early because of request_check()

    @classmethod
    def from_state_dir(
        cls,
        state_dir: Path,
        *,
        check_interval_s: float = 60.0,
        config: UpdaterConfig | None = None,
        reporter_config: ReporterConfig | None = None,
        socket_timeout_s: float = 30.0,
        listeners: list[EventListener] | None = None,
    ) -> UpdateAgent:
        """Build the agent from an enrolled state directory.

        Raises:
            AgentSetupError: not enrolled, ``update_root`` is null or invalid, the device
                key is unusable, or the update state cannot be read.
        """
        from edgefleet.agent.enroll import EnrollmentError, load_enrollment

        state_dir = Path(state_dir)
        try:
            enrollment = load_enrollment(state_dir)
        except EnrollmentError as e:
            raise AgentSetupError(str(e)) from e
        device_id = str(enrollment["device_id"])
        server_url = enrollment.get("server_url")
        if not isinstance(server_url, str) or not server_url:
            raise AgentSetupError("enrollment.json has no server_url")
        update_root = enrollment.get("update_root")
        if not isinstance(update_root, dict):
            raise AgentSetupError(
                f"the server had no update repositories when this device enrolled "
                f"(update_root is null): {NO_ROOT_HINT}")
        try:
            key = load_device_key(state_dir / str(enrollment.get("key_file") or
                                                  "device_key.pem"))
        except SigningError as e:
            raise AgentSetupError(str(e)) from e

        work = state_dir / UPDATE_DIR
        tuf_dir = work / "tuf"
        trust = TrustConfig(
            device_id,
            _root_bytes(update_root, "image", tuf_dir / "image" / "root.json"),
            _root_bytes(update_root, "director", tuf_dir / "director" / "root.json"),
            tuf_dir,
        )
        api_url = server_url.rstrip("/")
        if not api_url.endswith(API_PREFIX):
            api_url += API_PREFIX
        urls = RepoUrls.for_server(api_url, device_id)

        def make_verifier() -> BundleVerifier:
            fetcher = ResumableFetcher(work / "partial",
                                       resumable_prefixes=(urls.image_targets_url,),
                                       socket_timeout_s=socket_timeout_s)
            return BundleVerifier(trust, urls, fetcher=fetcher)

        def fetch_shadow(name: str, dest: Path) -> tuple[Path, Assignment]:
            # A plain fetcher: the resumable one keeps a single partial file, which
            # belongs to the active update's download.
            verifier = BundleVerifier(trust, urls)
            listed = verifier.image_target(name)
            path = verifier.download(listed, dest).path
            return path, Assignment(listed.name, listed.length, dict(listed.hashes))

        reporter = HttpReporter(api_url, device_id, key, work / EVENTS_FILE, reporter_config)
        tee = _Tee(reporter, list(listeners or ()))
        try:
            machine = UpdateMachine(work, TufVerifier(make_verifier), tee, ModelHolder(),
                                    config=config)
            shadow = ShadowManager(work, fetch_shadow, tee, config=config)
        except (UpdateError, OSError) as e:
            raise AgentSetupError(f"cannot open the update state in {work}: {e}") from e
        return cls(machine, reporter, check_interval_s=check_interval_s, shadow=shadow)

    @property
    def holder(self) -> ModelHolder:
        """The live model; call ``holder.predict(inputs)`` from any thread."""
        return self.machine.holder

    def boot(self) -> UpdateRecord:
        """Serve the active model and finish an update a crash interrupted (once)."""
        self._booted = True
        try:
            return self.machine.boot()
        except RollbackFailed as e:
            log.error("%s (retried on the next check)", e)
            return self.machine.record

    @property
    def installed_target(self) -> str | None:
        """The TUF target name of the bundle in the active slot (None: none installed)."""
        pointer = self.machine.slots.pointer()
        return None if pointer is None else pointer.bundle.split("@", 1)[0]

    @property
    def shadow_target(self) -> str | None:
        """The target name of the loaded shadow candidate, if any."""
        current = None if self.shadow is None else self.shadow.current
        return None if current is None else current.target

    def set_shadow_listener(self, listener: ShadowListener | None) -> None:
        """Who runs shadow candidates (the daemon); no-op without a shadow manager."""
        if self.shadow is not None:
            self.shadow.set_listener(listener)

    def run_once(self) -> UpdateRecord:
        """Boot if needed, then check for an assignment and install it or roll back;
        then follow the assignment's shadow entry (if the check succeeded)."""
        if not self._booted:
            self.boot()
        verifier = self.machine.verifier
        before = getattr(verifier, "checks", None)
        try:
            record = self.machine.run_once()
        except RollbackFailed as e:
            log.error("%s (retried on the next check)", e)
            record = self.machine.record
        if self.shadow is not None and isinstance(verifier, TufVerifier) \
                and verifier.checks != before:
            self.shadow.sync(verifier.shadow_entry)
        return record

    def request_check(self) -> None:
        """Check now rather than at the next interval (thread-safe, never blocks).

        Rate-limited: a request within ``min_early_check_s`` of the previous early check
        is served when that time is over; many requests meanwhile make one check.
        """
        with self._lock:
            due = max(self._clock(), self._last_early + self.min_early_check_s)
            if self._early_due is None or due < self._early_due:
                self._early_due = due
        self._wake.set()

    def run_forever(self, stop_event: threading.Event) -> None:
        """Check every ``check_interval_s`` (or early, see ``request_check``) until
        ``stop_event`` is set.

        Events are sent by the reporter's thread meanwhile. A check in progress finishes
        its current update before the loop sees ``stop_event`` (every step is persisted,
        so a harder stop only means the update resumes at the next start).
        """
        self.reporter.start()
        try:
            while not stop_event.is_set():
                try:
                    self.run_once()
                except Exception:  # keep serving the current model; try again later
                    log.exception("update check failed")
                self._wait(stop_event)
        finally:
            self.reporter.stop()

    def _wait(self, stop_event: threading.Event) -> None:
        """Until the interval is over, an early check is due, or ``stop_event``."""
        deadline = self._clock() + self.check_interval_s
        while not stop_event.is_set():
            now = self._clock()
            with self._lock:
                early = self._early_due
                if early is not None and now >= early:
                    self._early_due = None
                    self._last_early = now
                    self.early_checks += 1
                    log.info("update check requested early")
                    return
            if now >= deadline:
                return
            until = deadline if early is None else min(deadline, early)
            self._wake.wait(min(until - now, _WAIT_SLICE_S))
            self._wake.clear()

    def close(self, flush_timeout_s: float = 2.0) -> None:
        """Stop reporting (trying to deliver queued events first) and close the model."""
        self.reporter.stop()
        if flush_timeout_s > 0:
            self.reporter.flush(flush_timeout_s)
        if self.shadow is not None:
            self.shadow.close()
        self.machine.holder.close()
