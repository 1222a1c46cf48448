"""Shadow candidates: the director names one, the image repository vouches for its bytes.

A director assignment may carry ``custom.edgefleet.shadow = {"target": name,
"sample_rate": "0.1"}`` (a decimal string: TUF signs canonical JSON, which has no
floats). After each successful update check, :class:`ShadowManager` makes the device
match it:

* a new shadow target: fetch it through the image repository (signed length and
  hashes, checked by ngclient and again here), check the bundle, extract it into
  ``<work>/shadow/``, load it and run the same smoke test as an update, then hand it
  to the listener (the daemon, which runs it on sampled inputs, never serving it);
* the same target with another rate: the listener gets the new rate;
* no shadow entry (or no assignment): the listener gets None and the candidate is
  closed and deleted.

None of this touches the slots, the active pointer or the update state machine. A
failure is reported as an ``update_error`` event in state ``idle`` (the server sees an
``error`` event) and never affects the active model; a download failure is retried at
the next check, a candidate whose bytes or model are bad is not retried until the
director names another.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.agent.runtime import ModelRunner
from edgefleet.agent.update.bundle import extract_bundle
from edgefleet.agent.update.machine import (
    Loader,
    Reporter,
    UpdaterConfig,
    _default_loader,
    check_file,
    smoke_test,
)
from edgefleet.agent.update.state import Assignment, UpdateError

log = logging.getLogger(__name__)

SHADOW_DIR = "shadow"


class ShadowError(UpdateError):
    """The director's shadow entry is malformed."""


@dataclass(frozen=True)
class ShadowSpec:
    """What the director's signed shadow entry asks for."""

    target: str
    sample_rate: float

    @classmethod
    def from_entry(cls, entry: Any) -> ShadowSpec:
        """Parse ``{"target": str, "sample_rate": "0.1"}`` (a number is accepted too).

        Raises:
            ShadowError: not that shape, or the rate is not in (0, 1].
        """
        if not isinstance(entry, Mapping):
            raise ShadowError("the shadow entry must be an object")
        target, raw = entry.get("target"), entry.get("sample_rate")
        if not isinstance(target, str) or not target:
            raise ShadowError(f"shadow target must be a non-empty string, got {target!r:.80}")
        try:
            if isinstance(raw, bool) or not isinstance(raw, str | int | float):
                raise ValueError
            rate = float(raw)
        except ValueError:
            raise ShadowError(f"shadow sample_rate must be a number, got {raw!r:.80}") from None
        if not math.isfinite(rate) or not 0.0 < rate <= 1.0:
            raise ShadowError(f"shadow sample_rate must be in (0, 1], got {raw!r:.80}")
        return cls(target, rate)


@dataclass(frozen=True)
class ShadowCandidate:
    """A verified, loaded and smoke-tested shadow model.

    Attributes:
        target: its TUF target name.
        key: ``name@sha256:hex`` (reported as the shadow's version).
        version: the version its manifest declares.
        sample_rate: share of predictions to compare.
        runner: the loaded model (owned by the manager: valid until the listener is told
            otherwise).
    """

    target: str
    key: str
    version: str
    sample_rate: float
    runner: ModelRunner


ShadowListener = Callable[["ShadowCandidate | None"], None]
# (target name, destination dir) -> (path of the verified file, its signed assignment)
ShadowFetch = Callable[[str, Path], "tuple[Path, Assignment]"]


class ShadowManager:
    """Keeps the device's shadow candidate in line with the director (updater thread).

    Args:
        work_dir: the updater's directory; candidates live in ``work_dir/shadow``.
        fetch: downloads a target the image repository lists, verified (see
            ``agent_loop``: a ``BundleVerifier.image_target`` + ``download``).
        reporter: receives failure events.
    """

    def __init__(self, work_dir: Path, fetch: ShadowFetch, reporter: Reporter, *,
                 config: UpdaterConfig | None = None,
                 loader: Loader = _default_loader) -> None:
        self.dir = Path(work_dir) / SHADOW_DIR
        self._fetch = fetch
        self._reporter = reporter
        self.config = config or UpdaterConfig()
        self._loader = loader
        self._listener: ShadowListener | None = None
        self._current: ShadowCandidate | None = None
        self._bad: set[str] = set()  # targets whose bytes or model failed
        shutil.rmtree(self.dir, ignore_errors=True)  # nothing survives a restart

    @property
    def current(self) -> ShadowCandidate | None:
        return self._current

    def set_listener(self, listener: ShadowListener | None) -> None:
        """Who runs the candidate; told now about a loaded one, later about changes.

        The listener must stop using the previous candidate's runner before it returns.
        """
        self._listener = listener
        if listener is not None and self._current is not None:
            self._tell(self._current)

    def sync(self, entry: object) -> None:
        """Match the director's (verified) shadow ``entry``; None: no shadow. Never raises."""
        if entry is None:
            self._replace(None)
            return
        try:
            spec = ShadowSpec.from_entry(entry)
        except ShadowError as e:
            self._replace(None)
            self._report_failure(str(entry)[:80], e)
            return
        current = self._current
        if current is not None and current.target == spec.target:
            if current.sample_rate != spec.sample_rate:
                self._replace(ShadowCandidate(current.target, current.key, current.version,
                                              spec.sample_rate, current.runner))
            return
        if spec.target in self._bad:
            self._replace(None)
            return
        try:
            candidate = self._load(spec)
        except Exception as e:
            from edgefleet.agent.update.verify import DownloadFailedError

            if not isinstance(e, DownloadFailedError):
                self._bad.add(spec.target)
            self._replace(None)
            self._report_failure(spec.target, e)
            return
        self._replace(candidate)
        log.info("shadow candidate %s (version %s) at rate %g", candidate.target,
                 candidate.version, candidate.sample_rate)

    def close(self) -> None:
        """Stop shadowing and close the candidate."""
        self._replace(None)

    # -- internals ------------------------------------------------------------------------
    def _load(self, spec: ShadowSpec) -> ShadowCandidate:
        digest = hashlib.sha256(spec.target.encode()).hexdigest()[:16]
        download, model_dir = self.dir / f"download-{digest}", self.dir / f"model-{digest}"
        for d in (download, model_dir):
            shutil.rmtree(d, ignore_errors=True)
        try:
            path, assignment = self._fetch(spec.target, download)
            check_file(path, assignment)  # defence in depth, as for an update
            model_dir.mkdir(parents=True)
            manifest = extract_bundle(path, model_dir, self.config.limits)
            shutil.rmtree(download, ignore_errors=True)
            runner = self._loader(model_dir / manifest.model_file, self.config.runner_options)
            try:
                smoke_test(runner, manifest, runs=self.config.warm_runs)
            except BaseException:
                runner.close()
                raise
        except BaseException:
            for d in (download, model_dir):
                shutil.rmtree(d, ignore_errors=True)
            raise
        return ShadowCandidate(spec.target, assignment.key, manifest.version,
                               spec.sample_rate, runner)

    def _replace(self, candidate: ShadowCandidate | None) -> None:
        old, self._current = self._current, candidate
        if old is None and candidate is None:
            return
        self._tell(candidate)
        if old is not None and (candidate is None or candidate.runner is not old.runner):
            with contextlib.suppress(Exception):
                old.runner.close()
            digest = hashlib.sha256(old.target.encode()).hexdigest()[:16]
            shutil.rmtree(self.dir / f"model-{digest}", ignore_errors=True)
            log.info("shadow candidate %s stopped", old.target)

    def _tell(self, candidate: ShadowCandidate | None) -> None:
        if self._listener is None:
            return
        try:
            self._listener(candidate)
        except Exception:  # the daemon's problem; the updater keeps going
            log.exception("shadow listener failed")

    def _report_failure(self, target: str, exc: BaseException) -> None:
        message = f"shadow {target}: {type(exc).__name__}: {exc}"
        log.warning("%s", message)
        try:
            self._reporter.report({"type": "update_error", "state": "idle", "error": message,
                                   "bundle": target, "bundle_key": None})
        except Exception:  # reporting never breaks anything
            log.exception("reporting a shadow failure failed")
