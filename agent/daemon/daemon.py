"""``Daemon``: models in ``ModelHolder``s, the prediction log, telemetry and the HTTP API.

``Daemon(config).start()`` loads every configured model (or lets the update agent drive
one of them), opens the feedback store, starts the prediction log's flusher, starts
telemetry when it is enabled and the device is enrolled (or a broker is passed in), and
serves the local API. ``stop()`` undoes it in reverse order, flushing queued predictions
and the last drift window into the outbox first. ``run_until_signal()`` is what
``edgefleet agent run`` calls: it stops cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgefleet.agent.daemon.config import DaemonConfig, ModelConfig
from edgefleet.agent.daemon.desired import DesiredHint, DesiredHintError, parse_desired
from edgefleet.agent.daemon.errors import ConfigError, DaemonError, UnknownModelError
from edgefleet.agent.daemon.feedback import FeedbackStore
from edgefleet.agent.daemon.http_api import HttpApi
from edgefleet.agent.daemon.predlog import LogPolicy, PredictionLog
from edgefleet.agent.daemon.shadow import ShadowWorker
from edgefleet.agent.daemon.stats import DaemonStats
from edgefleet.agent.daemon.summarize import DriftSummarizer, load_reference
from edgefleet.agent.runtime import ModelRunner, load_model
from edgefleet.agent.runtime.errors import ModelLoadError
from edgefleet.agent.update.swap import ModelHolder

log = logging.getLogger(__name__)

FEEDBACK_FILE = "feedback.sqlite"
_PROBABILITY_NAMES = ("probabilities", "probability", "probs", "scores", "softmax")


@dataclass
class _Slot:
    config: ModelConfig
    holder: ModelHolder

    @property
    def version(self) -> str:
        return self.holder.version or self.config.version


def _static_width(shape: tuple[Any, ...]) -> int | None:
    width = 1
    for d in shape[1:]:
        if not isinstance(d, int):
            return None
        width *= d
    return width


def _confidence_output(runner: ModelRunner, wanted: str | None) -> str | None:
    outputs = runner.signature.outputs
    names = [o.name for o in outputs]
    if wanted is not None:
        if wanted not in names:
            raise ConfigError(f"confidence_output {wanted!r} is not an output of "
                              f"{runner.path} ({names})")
        return wanted
    for o in outputs:
        if o.name.lower() in _PROBABILITY_NAMES:
            return o.name
    for o in outputs:
        width = _static_width(o.shape)
        if o.dtype.kind == "f" and o.rank >= 2 and (width is None or width > 1):
            return o.name
    return None


class Daemon:
    """The device daemon. Use ``start``/``stop`` or as a context manager.

    Args:
        config: the parsed ``agent.toml``.
        broker / device_id: telemetry to this broker instead of the enrollment's
            (tests, and devices configured by hand).
    """

    def __init__(self, config: DaemonConfig, *, broker: Any = None,
                 device_id: str | None = None) -> None:
        self.config = config
        self._broker = broker
        self._device_id = device_id
        self._slots: dict[str, _Slot] = {}
        self._prefix = secrets.token_hex(6) + "-"
        self._counter = itertools.count(1)
        self.stats = DaemonStats([m.name for m in config.models], served=self._served_version)
        self.store: FeedbackStore | None = None
        self.telemetry: Any = None
        self.predlog: PredictionLog | None = None
        self.http: HttpApi | None = None
        self._updater: Any = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started_at = time.monotonic()
        self._confidence: dict[str, str | None] = {}
        self._shadow: ShadowWorker | None = None
        self._shadow_lock = threading.Lock()
        self.desired: DesiredHint | None = None  # the latest valid hint (not trusted)
        self.desired_rejected = 0
        self.federated: Any = None  # SuperNodeSupervisor when [federated] enabled

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Load models and start everything.

        Raises:
            ConfigError: a model or reference profile cannot be loaded or does not fit.
            DaemonError: the API address is taken, or the update agent cannot start.
        """
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        cfg = self.config
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        summarizer = DriftSummarizer()
        policies = {}
        for m in cfg.models:
            runner = self._model_runner(m)
            policies[m.name] = LogPolicy(m.sample_rate, m.low_confidence,
                                         _confidence_output(runner, m.confidence_output),
                                         m.inputs)
            if m.low_confidence is not None and policies[m.name].confidence_output is None:
                log.warning("model %s: low_confidence set but no probability output found; "
                            "set confidence_output", m.name)
            if m.reference_profile is not None:
                outs = runner.signature.outputs
                summarizer.add_model(m.name, load_reference(m.reference_profile),
                                     input_names=[i.name for i in runner.signature.inputs],
                                     output_names=[o.name for o in outs],
                                     output_widths=[_static_width(o.shape) for o in outs],
                                     drift_output=m.drift_output)
        self._confidence = {name: p.confidence_output for name, p in policies.items()}
        self.store = FeedbackStore(cfg.state_dir / FEEDBACK_FILE, cfg.feedback_max_rows,
                                   self._confidence)
        if cfg.telemetry_enabled:
            self.telemetry = self._telemetry()
        self.predlog = PredictionLog(
            policies, self.stats,
            publish=None if self.telemetry is None else self.telemetry.publish,
            summarizer=summarizer, store=self.store, ring_size=cfg.ring_size,
            shadow=None if self._updater is None else self._feed_shadow,
            flush_interval_s=cfg.flush_interval_s, window_s=cfg.window_s,
            max_records_per_message=cfg.max_records_per_message)
        self.predlog.start()
        if cfg.federated.enabled:
            self.federated = self._federated_supervisor()
        if self.telemetry is not None:
            self.telemetry.start()
        if self._updater is not None:
            self._updater.set_shadow_listener(self._on_shadow)
            thread = threading.Thread(target=self._updater.run_forever, args=(self._stop,),
                                      name="edgefleet-updater", daemon=True)
            thread.start()
            self._threads.append(thread)
        try:
            self.http = HttpApi(self, cfg.listen, cfg.max_request_bytes)
        except OSError as e:
            raise DaemonError(f"cannot listen on {cfg.listen}: {e.strerror or e}") from e
        self.http.start()
        log.info("agent daemon serving %s on %s", sorted(self._slots), self.http.url)

    def _model_runner(self, m: ModelConfig) -> ModelRunner:
        if self.config.updates_enabled and m.name == self.config.updates_model:
            holder = self._update_holder(m)
        else:
            try:
                holder = ModelHolder(load_model(m.path), m.version)
            except ModelLoadError as e:
                raise ConfigError(f"model {m.name}: {e}") from e
        self._slots[m.name] = _Slot(m, holder)
        runner = holder.runner
        assert isinstance(runner, ModelRunner)
        return runner

    def _update_holder(self, m: ModelConfig) -> ModelHolder:
        from edgefleet.agent.update.agent_loop import AgentSetupError, UpdateAgent

        try:
            self._updater = UpdateAgent.from_state_dir(
                self.config.state_dir, check_interval_s=self.config.updates_interval_s)
        except AgentSetupError as e:
            raise DaemonError(f"updates enabled but the update agent cannot start: {e}") from e
        self._updater.boot()
        holder: ModelHolder = self._updater.holder
        if holder.runner is None:  # nothing installed over the air yet: serve the config's
            try:
                holder.swap(load_model(m.path), m.version)
            except ModelLoadError as e:
                raise ConfigError(f"model {m.name}: {e}") from e
        return holder

    def _federated_supervisor(self) -> Any:
        # Imported only when enabled: it needs flwr (the [federated] extra).
        from edgefleet.agent.federated.config import FEDERATED_DIR
        from edgefleet.agent.federated.errors import NodeKeyError

        try:
            from edgefleet.agent.federated.supervisor import SuperNodeSupervisor
        except ImportError as e:
            raise ConfigError(f"federated enabled but flwr is missing (install "
                              f"edgefleet[federated]): {e}") from e

        assert self.store is not None
        supervisor = SuperNodeSupervisor(self.config.federated, store=self.store,
                                         work_dir=self.config.state_dir / FEDERATED_DIR)
        try:
            supervisor.start()
        except NodeKeyError as e:
            raise ConfigError(f"federated: {e}") from e
        return supervisor

    def _telemetry(self) -> Any:
        from edgefleet.agent.telemetry import BrokerConfigError, TelemetryClient
        from edgefleet.agent.telemetry.client import TelemetryConfig

        tconf = TelemetryConfig(heartbeat_s=self.config.heartbeat_s)
        kwargs: dict[str, Any] = {"config": tconf, "models": self.model_versions(),
                                  "stats": self.stats.snapshot,
                                  "on_inbound": self._on_inbound}
        if self._broker is not None:
            if self._device_id is None:
                raise DaemonError("a broker was given without a device id")
            return TelemetryClient(self._device_id, self._broker, self.config.state_dir,
                                   **kwargs)
        try:
            return TelemetryClient.from_enrollment(self.config.state_dir, **kwargs)
        except BrokerConfigError as e:
            log.warning("telemetry off: %s (enroll with 'edgefleet agent enroll')", e)
            return None

    def stop(self) -> None:
        """Stop serving, flush the prediction log and drift window, stop telemetry."""
        self._stop.set()
        if self.http is not None:
            self.http.stop()
            self.http = None
        for thread in self._threads:
            thread.join(10)
        self._threads = []
        if self.federated is not None:  # before the store it reads closes
            self.federated.stop()
            self.federated = None
        if self.predlog is not None:
            self.predlog.stop()
            self.predlog = None
        if self.telemetry is not None:
            self.telemetry.stop()
            self.telemetry = None
        if self._updater is not None:
            self._updater.close()  # stops the shadow candidate through _on_shadow
            self._updater = None
        self._on_shadow(None)
        if self.store is not None:
            self.store.close()
            self.store = None
        for slot in self._slots.values():
            slot.holder.close()
        self._slots = {}

    def __enter__(self) -> Daemon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def run_until_signal(self) -> None:
        """Start, serve until SIGTERM/SIGINT, stop cleanly (main thread only)."""
        stop = threading.Event()

        def on_signal(signum: int, _frame: object) -> None:
            log.info("stopping on %s", signal.Signals(signum).name)
            stop.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not stop.wait(1.0):
                pass
        finally:
            self.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)

    # -- the API -----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Where the API listens (``http://127.0.0.1:PORT`` or ``unix:/path``)."""
        if self.http is None:
            raise DaemonError("the daemon is not running")
        return self.http.url

    def model_versions(self) -> dict[str, str]:
        return {name: slot.version for name, slot in self._slots.items()}

    def predict(self, model: str, inputs: Mapping[str, Any]
                ) -> tuple[str, str, dict[str, np.ndarray]]:
        """Run ``model`` on ``inputs``; log the prediction. Returns ``(id, version, outputs)``.

        Raises:
            UnknownModelError: no such model.
            InputError (from the runtime): the inputs do not fit the model.
            InferenceError, NoActiveModel: the model failed or is not installed.
        """
        slot = self._slots.get(model)
        predlog = self.predlog
        if predlog is None:
            raise DaemonError("the daemon is not running")
        if slot is None:
            raise UnknownModelError(model)
        pid = self._prefix + format(next(self._counter), "x")
        version = slot.version
        t0 = time.perf_counter()
        try:
            outputs = slot.holder.predict(inputs)
        except Exception as e:
            predlog.log(model, version, time.perf_counter() - t0, pid, inputs, None,
                        f"{type(e).__name__}: {e}")
            raise
        predlog.log(model, version, time.perf_counter() - t0, pid, inputs, outputs)
        return pid, version, outputs

    def feedback(self, pid: str, label: Any) -> bool | None:
        """Attach the true label to prediction ``pid``; True/False if it was right.

        Raises:
            UnknownPredictionError: no stored prediction has this id.
        """
        store, predlog = self.store, self.predlog
        if store is None or predlog is None:
            raise DaemonError("the daemon is not running")
        if not store.contains(pid):
            predlog.flush()  # it may still be waiting in the ring
        outcome = store.feedback_outcome(pid, label)
        if outcome.model in self._slots:
            self.stats.record_feedback(outcome.model, outcome.version, outcome.correct,
                                       outcome.previous)
        return outcome.correct

    def health(self) -> dict[str, Any]:
        models = self.stats.models()
        for name, slot in self._slots.items():
            models[name]["version"] = slot.version
        telemetry: dict[str, Any] = {"enabled": self.telemetry is not None}
        if self.telemetry is not None:
            s = self.telemetry.stats()
            telemetry.update(connected=s.connected, outbox_depth=s.outbox.depth,
                             outbox_dropped=s.outbox.dropped)
        predlog = self.predlog
        accuracy = [] if self.store is None else [
            {"model": a.model, "version": a.version, "labelled": a.labelled,
             "correct": a.correct, "accuracy": a.accuracy} for a in self.store.accuracy()]
        return {
            "status": "ok",
            "models": models,
            "telemetry": telemetry,
            "predlog": {"queued": 0 if predlog is None else predlog.queued,
                        "dropped": 0 if predlog is None else predlog.dropped},
            "accuracy": accuracy,
            "shadow": self._shadow_health(),
            "federated": self.federated.status() if self.federated is not None else {
                "state": "off", "reason": "federated training is configured off",
                "examples": 0, "restarts": 0},
            "process": self.stats.process(),
        }

    def _shadow_health(self) -> dict[str, Any] | None:
        worker = self._shadow
        if worker is None:
            return None
        return {"model": worker.model, "version": worker.version,
                "sample_rate": worker.sample_rate, "queued": worker.queued,
                "dropped": worker.dropped, "failed": worker.failed}

    # -- what the update agent and the server drive ------------------------------------

    def _served_version(self, model: str) -> str | None:
        slot = self._slots.get(model)
        return None if slot is None else slot.version

    def _on_inbound(self, env: Any) -> None:
        """Telemetry's inbound thread: a ``desired`` hint may wake the updater early.

        The hint is not trusted: it only makes the update agent check the signed
        metadata now. Malformed hints are logged and ignored.
        """
        from edgefleet.agent.telemetry.envelope import Channel

        if env.type is not Channel.DESIRED:
            log.debug("ignoring a %s message", env.type.value)
            return
        try:
            hint = parse_desired(env.body)
        except DesiredHintError as e:
            self.desired_rejected += 1
            log.warning("ignoring a malformed desired hint (seq %s): %s", env.seq, e)
            return
        self.desired = hint
        updater = self._updater
        if updater is None or hint.model != self.config.updates_model:
            return
        shadow = None if hint.shadow is None else hint.shadow.target
        if hint.target != updater.installed_target or shadow != updater.shadow_target:
            log.info("desired hint names %s (shadow %s): checking for updates now",
                     hint.target, shadow)
            updater.request_check()

    def _on_shadow(self, candidate: Any) -> None:
        """The update agent's shadow listener (updater thread): start/stop the worker."""
        model = self.config.updates_model
        with self._shadow_lock:
            old, self._shadow = self._shadow, None
            if old is not None:
                old.close()  # before the updater closes the old candidate's runner
            if candidate is None or model is None:
                if old is not None:
                    self.stats.set_shadow(old.model, None)
                return
            worker = ShadowWorker(model, candidate.version, candidate.runner,
                                  sample_rate=candidate.sample_rate, stats=self.stats,
                                  confidence_output=self._confidence.get(model))
            if old is None or old.version != worker.version:
                self.stats.set_shadow(model, worker.version)
            worker.start()
            self._shadow = worker

    def _feed_shadow(self, model: str, version: str,
                     pairs: list[tuple[Any, dict[str, np.ndarray]]]) -> None:
        worker = self._shadow
        if worker is not None and worker.model == model:
            worker.offer(version, pairs)
