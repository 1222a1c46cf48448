"""The agent's update state machine: check, download, verify, stage, warm, switch, roll back.

Rules this module keeps:

* ``UpdateMachine._transition`` is the only code that changes the state. It asks the
  table (``state.next_state``), persists the new record atomically, and only then reports
  it; the action of a state runs after the state is on disk, so a crash at any point
  resumes by re-running the action of the persisted state (every action is idempotent).
* Network and trust are injected (``Verifier``), as are event delivery (``Reporter``),
  model loading and the clock. The smoke test (``smoke_test``, ``check_outputs``) is pure.
* Any failure after the check leads to ROLLING_BACK, which re-points the previous slot,
  puts its model back in the holder if needed, and ends in IDLE. A bundle that failed
  after download is remembered (``rejected``) and not retried until reassigned anew.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgefleet.agent.runtime import ModelRunner, RunnerOptions, load_model
from edgefleet.agent.runtime.signature import Signature
from edgefleet.agent.update.bundle import BundleLimits, Manifest, read_manifest
from edgefleet.agent.update.slots import Slot, SlotContent, Slots
from edgefleet.agent.update.state import (
    RESTING_STATES,
    Assignment,
    StateStore,
    UpdateError,
    UpdateEvent,
    UpdateRecord,
    UpdateState,
    next_state,
)
from edgefleet.agent.update.swap import ModelHolder

log = logging.getLogger(__name__)

STATE_FILE = "update-state.json"
MAX_REJECTED = 16  # bundles remembered as failed (oldest forgotten first)


class WarmupError(UpdateError):
    """The new model failed its smoke test: it must not go live."""


class BundleMismatch(UpdateError):
    """The downloaded file is not the assigned bundle (length or digest differ)."""


class RollbackFailed(UpdateError):
    """Rolling back itself failed; the machine stays in ROLLING_BACK and retries next run."""


class Verifier(Protocol):
    """The trusted source of updates (TUF: director + image repository)."""

    def check(self) -> Assignment | None:
        """The bundle the director assigns to this device now, verified; None if none."""
        ...

    def download(self, assignment: Assignment, dest_dir: Path, resume: bool = True) -> Path:
        """Fetch ``assignment`` into ``dest_dir`` (resuming a partial file); return the
        complete, verified file."""
        ...


class Reporter(Protocol):
    """Delivers update events to the server. Must not block for long."""

    def report(self, event: dict[str, Any]) -> None: ...


Loader = Callable[[Path, RunnerOptions], ModelRunner]


def _default_loader(path: Path, options: RunnerOptions) -> ModelRunner:
    return load_model(path, options)


@dataclass(frozen=True)
class UpdaterConfig:
    """Tuning of the updater.

    Attributes:
        warm_runs: timed runs of the sample input at warm-up (the median is checked
            against the manifest's ``latency_budget_ms``), after one untimed first run.
        limits: size caps for bundles.
        runner_options: how new models are loaded.
    """

    warm_runs: int = 5
    limits: BundleLimits = field(default_factory=BundleLimits)
    runner_options: RunnerOptions = field(default_factory=RunnerOptions)


# -- the smoke test (pure apart from calling the runner) ---------------------------------


@dataclass(frozen=True)
class WarmupReport:
    median_ms: float
    max_ms: float


def check_outputs(signature: Signature, outputs: Mapping[str, np.ndarray]) -> None:
    """Outputs must be exactly the declared ones, of the declared rank and static
    dimensions, and finite.

    Raises:
        WarmupError: naming the first problem found.
    """
    declared = signature.output_names
    if tuple(outputs) != declared:
        raise WarmupError(f"outputs {list(outputs)} differ from the declared {list(declared)}")
    for spec in signature.outputs:
        array = np.asarray(outputs[spec.name])
        if array.ndim != spec.rank or any(
            isinstance(d, int) and d != got for d, got in zip(spec.shape, array.shape, strict=False)
        ):
            raise WarmupError(
                f"output {spec.name!r} has shape {array.shape}, declared {list(spec.shape)}"
            )
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            raise WarmupError(f"output {spec.name!r} holds NaN or infinite values")


def smoke_test(runner: ModelRunner, manifest: Manifest, *, runs: int = 5,
               clock: Callable[[], float] = time.perf_counter) -> WarmupReport:
    """Run the manifest's sample input: outputs as declared, latency within budget.

    Raises:
        WarmupError: wrong inputs/outputs, non-finite or misshapen outputs, too slow, or
            the runner failed on the sample.
    """
    if runner.signature.input_names != manifest.signature.input_names:
        raise WarmupError(f"model inputs {list(runner.signature.input_names)} differ from the "
                          f"manifest's {list(manifest.signature.input_names)}")
    sample = manifest.sample_arrays()
    try:
        check_outputs(manifest.signature, runner.predict(sample))  # first run: not timed
        times_ms = []
        for _ in range(max(1, runs)):
            start = clock()
            outputs = runner.predict(sample)
            times_ms.append((clock() - start) * 1000.0)
            check_outputs(manifest.signature, outputs)
    except WarmupError:
        raise
    except Exception as exc:
        raise WarmupError(f"the model failed on its sample input: {exc}") from exc
    median = statistics.median(times_ms)
    if median > manifest.latency_budget_ms:
        raise WarmupError(f"median latency {median:.3f} ms exceeds the budget of "
                          f"{manifest.latency_budget_ms:g} ms")
    return WarmupReport(median, max(times_ms))


def check_file(path: Path, assignment: Assignment) -> None:
    """The file has the assigned length and hashes (defence in depth after the verifier,
    and the check that makes a resumed VERIFYING safe).

    Raises:
        BundleMismatch: length or a digest differs, or no known hash is assigned.
    """
    size = path.stat().st_size
    if size != assignment.length:
        raise BundleMismatch(f"{path.name} is {size} bytes, {assignment.length} were signed")
    hashers = {}
    for algo in assignment.hashes:
        try:
            hashers[algo] = hashlib.new(algo)
        except ValueError:
            continue
    if not hashers:
        raise BundleMismatch(f"no supported hash among {sorted(assignment.hashes)}")
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            for h in hashers.values():
                h.update(chunk)
    for algo, h in hashers.items():
        if h.hexdigest() != assignment.hashes[algo].lower():
            raise BundleMismatch(f"{path.name}: {algo} digest differs from the signed one")


# -- the machine -------------------------------------------------------------------------


class UpdateMachine:
    """Runs updates for one device, persisting its state under ``state_dir``.

    Typical use::

        machine = UpdateMachine(state_dir, verifier, reporter)
        machine.boot()          # serve the active model, finish an interrupted update
        machine.run_once()      # check for an update and install it (or roll back)
        machine.holder.predict(inputs)
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        verifier: Verifier,
        reporter: Reporter,
        holder: ModelHolder | None = None,
        *,
        config: UpdaterConfig | None = None,
        loader: Loader = _default_loader,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.config = config or UpdaterConfig()
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = StateStore(self.state_dir / STATE_FILE)
        self.slots = Slots(self.state_dir, self.config.limits)
        self.downloads = self.state_dir / "downloads"
        self.verifier = verifier
        self.reporter = reporter
        self.holder = holder if holder is not None else ModelHolder()
        self._loader = loader
        self._clock = clock
        self._warm: ModelRunner | None = None
        self.record = self.store.load()

    @property
    def state(self) -> UpdateState:
        return self.record.state

    # -- entry points -------------------------------------------------------------------
    def boot(self) -> UpdateRecord:
        """Load the active slot's model into the holder, then finish any interrupted update.

        Raises:
            RollbackFailed: see ``resume``.
        """
        self._serve_active()
        return self.resume()

    def resume(self) -> UpdateRecord:
        """Continue an update interrupted by a crash from its persisted state.

        Raises:
            RollbackFailed: a rollback could not complete (retried on the next call).
        """
        if self.record.state not in RESTING_STATES:
            log.info("resuming update in state %s", self.record.state.value)
            self._report({"type": "update_resumed", "state": self.record.state.value,
                          **self._bundle_fields()})
        return self._run_to_rest()

    def run_once(self) -> UpdateRecord:
        """Check for an assignment and carry it to COMMITTED or back to IDLE.

        Raises:
            RollbackFailed: a rollback could not complete (retried on the next call).
        """
        if self.record.state in RESTING_STATES:
            self._transition(UpdateEvent.CHECK)
        return self._run_to_rest()

    def _run_to_rest(self) -> UpdateRecord:
        while self.record.state not in RESTING_STATES:
            self.step()
        return self.record

    def step(self) -> None:
        """Run the action of the current state once; a failure becomes the FAILED event.

        Raises:
            RollbackFailed: the current state is ROLLING_BACK and its action failed.
        """
        state = self.record.state
        action = self._actions.get(state)
        if action is None:  # resting: nothing to do until run_once fires CHECK
            return
        try:
            action(self)
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            if state is UpdateState.ROLLING_BACK:
                self._report({"type": "update_error", "state": state.value, "error": message,
                              **self._bundle_fields()})
                raise RollbackFailed(f"rollback failed: {message}") from exc
            log.warning("update failed in state %s: %s", state.value, message)
            self._transition(UpdateEvent.FAILED, failed_in=state, error=message)

    # -- the one function that changes state --------------------------------------------
    def _transition(self, event: UpdateEvent, **changes: Any) -> None:
        before = self.record
        after = before.evolve(state=next_state(before.state, event), seq=before.seq + 1,
                              **changes)
        self.store.save(after)  # persisted before the new state's action runs
        self.record = after
        log.info("update %s -> %s (%s)", before.state.value, after.state.value, event.value)
        self._report({
            "type": "update_state",
            "seq": after.seq,
            "event": event.value,
            "from": before.state.value,
            "to": after.state.value,
            "state": after.state.value,
            "error": changes.get("error") if event is UpdateEvent.FAILED else None,
            **self._bundle_fields(before.assignment or after.assignment),
        })

    # -- actions, one per non-resting state ---------------------------------------------
    def _check(self) -> None:
        assignment = self.verifier.check()
        pointer = self.slots.pointer()
        if assignment is None or (pointer is not None and pointer.bundle == assignment.key):
            self._transition(UpdateEvent.NO_UPDATE, assignment=None, bundle_path=None)
            return
        if assignment.key in self.record.rejected:
            log.info("bundle %s failed before; not retrying it", assignment.key)
            self._transition(UpdateEvent.NO_UPDATE, assignment=None, bundle_path=None)
            return
        self._clear_downloads(keep=self._download_dir(assignment))
        previous = None if pointer is None else pointer.slot
        self._transition(
            UpdateEvent.ASSIGNED, assignment=assignment, bundle_path=None,
            target_slot=self.slots.inactive().value,
            previous_slot=None if previous is None else previous.value,
            failed_in=None, error=None,
        )

    def _download(self) -> None:
        assignment = self._assignment()
        dest = self._download_dir(assignment)
        dest.mkdir(parents=True, exist_ok=True)
        path = self.verifier.download(assignment, dest, resume=True)
        self._transition(UpdateEvent.DOWNLOADED, bundle_path=str(path))

    def _verify(self) -> None:
        assignment = self._assignment()
        path = self._bundle_path()
        check_file(path, assignment)
        read_manifest(path, self.config.limits)  # layout, caps and manifest, before unpacking
        self._transition(UpdateEvent.VERIFIED)

    def _stage(self) -> None:
        self.slots.stage(self._target(), self._bundle_path(), self._assignment().key)
        self._transition(UpdateEvent.STAGED)

    def _warm_up(self) -> None:
        self._discard_warm()
        content = self.slots.read(self._target(), verify=True)
        runner = self._loader(content.model_path, self.config.runner_options)
        try:
            report = smoke_test(runner, content.manifest, runs=self.config.warm_runs,
                                clock=self._clock)
        except BaseException:
            runner.close()
            raise
        self._warm = runner
        log.info("model %s warm: median %.3f ms (budget %g ms)", content.bundle,
                 report.median_ms, content.manifest.latency_budget_ms)
        self._transition(UpdateEvent.WARMED)

    def _switch(self) -> None:
        target = self._target()
        runner = self._warm
        self._warm = None
        content = self.slots.read(target, verify=runner is None)
        if runner is None and self.holder.label != content.bundle:
            # Resumed after a crash: the model passed warm-up before it; load it again.
            runner = self._loader(content.model_path, self.config.runner_options)
        self.slots.set_active(target)
        if runner is not None:
            self.holder.swap(runner, content.bundle, content.manifest.version)
        self._clear_downloads(keep=None)
        self._transition(UpdateEvent.SWITCHED)

    def _roll_back(self) -> None:
        self._discard_warm()
        record = self.record
        previous = None if record.previous_slot is None else Slot(record.previous_slot)
        self.slots.set_active(previous)
        if previous is None:
            self.holder.swap(None)
        elif self.holder.label != self.slots.read(previous, verify=False).bundle:
            self._serve(self.slots.read(previous))
        rejected = record.rejected
        if record.failed_in is not UpdateState.DOWNLOADING:
            # The bundle itself is bad: drop it and do not try it again.
            self._clear_downloads(keep=None)
            target = None if record.target_slot is None else Slot(record.target_slot)
            if target is not None and target != previous:
                self.slots.clear(target)
            if record.assignment is not None and record.assignment.key not in rejected:
                rejected = (*rejected, record.assignment.key)[-MAX_REJECTED:]
        self._transition(UpdateEvent.ROLLED_BACK, assignment=None, bundle_path=None,
                         target_slot=None, rejected=rejected)

    _actions: Mapping[UpdateState, Callable[[UpdateMachine], None]] = {
        UpdateState.CHECKING: _check,
        UpdateState.DOWNLOADING: _download,
        UpdateState.VERIFYING: _verify,
        UpdateState.STAGING: _stage,
        UpdateState.WARMING: _warm_up,
        UpdateState.SWITCHING: _switch,
        UpdateState.ROLLING_BACK: _roll_back,
    }

    # -- helpers ------------------------------------------------------------------------
    def _serve_active(self) -> None:
        pointer = self.slots.pointer()
        if pointer is None or self.holder.label == pointer.bundle:
            return
        try:
            self._serve(self.slots.read(pointer.slot))
        except Exception as exc:
            log.error("cannot serve the active model in slot %s: %s", pointer.slot.value, exc)
            self._report({"type": "update_error", "state": self.record.state.value,
                          "error": f"active model unusable: {type(exc).__name__}: {exc}",
                          **self._bundle_fields()})

    def _serve(self, content: SlotContent) -> None:
        runner = self._loader(content.model_path, self.config.runner_options)
        self.holder.swap(runner, content.bundle, content.manifest.version)

    def _discard_warm(self) -> None:
        if self._warm is not None:
            self._warm.close()
            self._warm = None

    def _assignment(self) -> Assignment:
        if self.record.assignment is None:
            raise UpdateError(f"no assignment recorded in state {self.record.state.value}")
        return self.record.assignment

    def _bundle_path(self) -> Path:
        if self.record.bundle_path is None:
            raise UpdateError(f"no bundle recorded in state {self.record.state.value}")
        return Path(self.record.bundle_path)

    def _target(self) -> Slot:
        if self.record.target_slot is None:
            raise UpdateError(f"no target slot recorded in state {self.record.state.value}")
        return Slot(self.record.target_slot)

    def _download_dir(self, assignment: Assignment) -> Path:
        digest = hashlib.sha256(assignment.key.encode()).hexdigest()[:16]
        return self.downloads / digest

    def _clear_downloads(self, keep: Path | None) -> None:
        if not self.downloads.is_dir():
            return
        for entry in self.downloads.iterdir():
            if entry == keep:
                continue
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def _bundle_fields(self, assignment: Assignment | None = None) -> dict[str, Any]:
        assignment = assignment or self.record.assignment
        return {
            "bundle": None if assignment is None else assignment.name,
            "bundle_key": None if assignment is None else assignment.key,
        }

    def _report(self, event: dict[str, Any]) -> None:
        try:
            self.reporter.report(event)
        except Exception:  # reporting must never break (or roll back) an update
            log.exception("reporting update event %s failed", event.get("type"))



# -- adapter to the TUF verifier ---------------------------------------------------------


class TufVerifier:
    """Adapts ``verify.BundleVerifier`` (Uptane-style TUF checks) to ``Verifier``.

    ``make_verifier`` returns a fresh ``BundleVerifier`` (ngclient refreshes once per
    instance, so one is made per check). ``checks`` counts successful checks and
    ``shadow_entry`` keeps the director's shadow entry of the latest one (for
    ``shadow.ShadowManager``; the machine itself ignores it). A download after a restart,
    when the check's verifier is gone, checks again and proceeds only if the assignment is
    unchanged.
    """

    def __init__(self, make_verifier: Callable[[], Any]) -> None:
        self._make = make_verifier
        self._pending: tuple[Any, Any] | None = None
        self.checks = 0  # successful checks (an assignment verified, or none assigned)
        self.shadow_entry: object = None  # the latest verified assignment's shadow entry

    def check(self) -> Assignment | None:
        """Raises: verify.VerificationError (a subclass) when the update is refused."""
        from edgefleet.agent.update.verify import NoAssignmentError

        verifier = self._make()
        try:
            found = verifier.check()
        except NoAssignmentError:
            self._pending = None
            self.shadow_entry = None
            self.checks += 1
            return None
        self._pending = (verifier, found)
        self.shadow_entry = getattr(found, "shadow", None)
        self.checks += 1
        return Assignment(found.name, found.length, dict(found.hashes))

    def download(self, assignment: Assignment, dest_dir: Path, resume: bool = True) -> Path:
        """Raises: verify.VerificationError; UpdateError if the assignment changed."""
        pending = self._pending
        if pending is None or self._key(pending[1]) != assignment.key:
            if self.check() is None or self._pending is None:
                raise UpdateError(f"{assignment.name} is no longer assigned")
            pending = self._pending
            if self._key(pending[1]) != assignment.key:
                raise UpdateError(f"the assignment changed from {assignment.name} to "
                                  f"{pending[1].name}")
        verifier, found = pending
        path: Path = verifier.download(found, dest_dir).path
        return path

    @staticmethod
    def _key(found: Any) -> str:
        return Assignment(found.name, found.length, dict(found.hashes)).key
