"""``SuperNodeSupervisor``: runs ``flower-supernode`` while the device is eligible.

One thread checks, every ``SupervisorPolicy.check_s``:

* the dataset: every ``refresh_s`` the feedback store's labelled examples are exported
  again (:mod:`.dataset`); the ClientApp reads the file afresh for every message, so the
  node keeps running across refreshes;
* eligibility (:func:`.eligibility.decide`): configured on, at least ``min_examples``
  examples, not busy (1-minute load average per CPU; a running node gets some headroom);
* the child: started when eligible, stopped when not; when it dies it is restarted after
  an exponential, capped, jittered backoff (reset once a child ran ``stable_after_s``).

The child is an :class:`edgefleet.federated.flower.processes.ManagedProcess` without its
own restarts: its own process group, output appended to ``logs/supernode.log``, stopped
with SIGTERM to the group and SIGKILL after a grace period. Its pid is recorded, so a
child left behind by a daemon that was killed is ended on the next start.

Where the SuperLink is: the ``[federated]`` table's ``superlink`` and ``ca_cert`` when
given; otherwise the device joins the fleet server's federation (:mod:`.join`) before each
start of the child: its node key is registered through the signed ``POST
/device/fl-node`` and the answer gives the SuperLink address and CA certificate. A failed
join is a failed start (backoff, the reason in the status).

States and the only function that changes them (:meth:`SuperNodeSupervisor._set`):
``off`` → ``ineligible`` → ``starting`` (joining, launching) → ``running`` ⇄
``ineligible``; a failed start or a dead child → ``backoff`` → ``starting`` … → ``off``
on stop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edgefleet.agent.daemon.feedback import FeedbackStore
from edgefleet.agent.federated.config import FederatedConfig, SupervisorPolicy
from edgefleet.agent.federated.dataset import DatasetStats, export_dataset
from edgefleet.agent.federated.eligibility import State, backoff_s, decide
from edgefleet.agent.federated.errors import DatasetError, FederatedError
from edgefleet.agent.federated.join import JoinInfo, join_federation
from edgefleet.agent.federated.nodekey import ensure_node_key
from edgefleet.federated.flower.errors import FlowerRuntimeError
from edgefleet.federated.flower.processes import (
    NO_RESTART,
    ManagedProcess,
    flower_env,
    flower_executable,
    format_node_config,
    free_port,
)
from edgefleet.federated.flower.tls import NodeKey

logger = logging.getLogger(__name__)

DATASET_FILE = "dataset.npz"
NODE_KEY_FILE = "node.key"
PID_FILE = "supernode.pid"
MAX_LOG_BYTES = 4 * 1024 * 1024  # beyond this the log is rotated to .1 before a start
_NODE_ID_RE = re.compile(r"SuperNode ID: (\d+)")

CommandFactory = Callable[[], list[str]]
#: Registers the node's public key (PEM) with the fleet server; where to join.
Joiner = Callable[[bytes], JoinInfo]


def system_load_per_cpu() -> float:
    """The 1-minute load average divided by the number of CPUs."""
    return os.getloadavg()[0] / (os.cpu_count() or 1)


class SuperNodeSupervisor:
    """Supervises the device's SuperNode (see module docstring).

    Args:
        config: the ``[federated]`` table.
        store: the daemon's feedback store (read only).
        work_dir: holds the dataset, the node key (unless configured), logs, Flower home.
        policy: timing (backoff, check interval, stop grace).
        command: builds the child's argv (default: ``flower-supernode`` with TLS, node
            authentication and the node config); injectable for tests.
        load_per_cpu: the busy signal (default: :func:`system_load_per_cpu`).
        env: the child's environment (default: ``flower_env``).
        clock: monotonic seconds; rng: jitter source.
        joiner: used when the config names no SuperLink (default: :func:`.join.
            join_federation` with the enrollment in ``state_dir``).
        state_dir: the agent's state dir (enrollment); default: ``work_dir``'s parent
            (the daemon's ``work_dir`` is ``<state_dir>/federated``).
    """

    def __init__(self, config: FederatedConfig, *, store: FeedbackStore, work_dir: Path,
                 policy: SupervisorPolicy | None = None,
                 command: CommandFactory | None = None,
                 load_per_cpu: Callable[[], float] = system_load_per_cpu,
                 env: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None,
                 joiner: Joiner | None = None,
                 state_dir: Path | None = None) -> None:
        self.config = config
        self.store = store
        self.work_dir = work_dir
        self.policy = policy or SupervisorPolicy()
        self.dataset_path = work_dir / DATASET_FILE
        self.node_key_path = config.node_key or work_dir / NODE_KEY_FILE
        self.log_path = work_dir / "logs" / "supernode.log"
        self._command = command or self.flower_command
        self._load = load_per_cpu
        self._env = dict(env) if env is not None else flower_env(work_dir / "flwr-home")
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 (backoff jitter, not crypto)
        enrolled_in = state_dir or work_dir.parent
        self._join: Joiner = joiner or (
            lambda pem: join_federation(enrolled_in, pem, work_dir))
        self.joined: JoinInfo | None = None  # the last join answer (join mode only)
        self._status: tuple[State, str] = (State.OFF, "not started")
        self.restarts = 0  # children started after one died
        self.dataset: DatasetStats | None = None
        self.node_key: NodeKey | None = None
        self._failures = 0
        self._child: ManagedProcess | None = None
        self._child_started = 0.0
        self._node_id: int | None = None  # parsed once from the current child's log
        self._retry_at = 0.0
        self._next_refresh: float | None = None
        self._lock = threading.Lock()  # one tick at a time; stop() waits for it
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Make the node key, end a child left by a killed daemon, start the thread.

        Raises:
            NodeKeyError: the configured key file is not a usable EC P-384 key.
        """
        self.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.config.enabled:
            self.node_key = ensure_node_key(self.node_key_path)
        self._end_stale_child()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="edgefleet-federated",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and the child (SIGTERM to its group, SIGKILL after the grace)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(self.policy.stop_grace_s + 10)
            self._thread = None
        with self._lock:
            self._stop_child()
            self._set(State.OFF, "stopped")

    def __enter__(self) -> SuperNodeSupervisor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.tick()
            except Exception:  # the loop must survive anything; the next tick retries
                logger.exception("federated supervisor tick failed")
            self._stopping.wait(self.policy.check_s)

    # -- one step ----------------------------------------------------------------------

    def tick(self) -> State:
        """One check: refresh the dataset when due, then start/stop/restart the child."""
        with self._lock:
            if self._stopping.is_set() and self._thread is not None:
                return self.state
            now = self._clock()
            if self.config.enabled and (self._next_refresh is None or now >= self._next_refresh):
                self.refresh_dataset()
                self._next_refresh = now + self.config.refresh_s
            self._step(now)
            return self.state

    def _step(self, now: float) -> None:
        child_alive = self._child is not None and self._child.running
        verdict = decide(self.config, self.policy,
                         examples=None if self.dataset is None else self.dataset.n,
                         load_per_cpu=self._load() if self.config.enabled else 0.0,
                         running=child_alive)
        if not verdict.eligible:
            if self._child is not None:
                logger.info("stopping the SuperNode: %s", verdict.reason)
                self._stop_child()
            self._failures = 0
            self._set(verdict.state, verdict.reason)
            return
        state = self.state
        if state is State.RUNNING and child_alive:
            if now - self._child_started >= self.policy.stable_after_s:
                self._failures = 0
            return
        if state is State.RUNNING:  # it died
            ran_s = now - self._child_started
            last = self._last_log_line()
            self._stop_child()  # reaps leftovers of its process group
            self._failures = 1 if ran_s >= self.policy.stable_after_s else self._failures + 1
            delay = backoff_s(self._failures, self.policy, self._rng)
            self._retry_at = now + delay
            self._set(State.BACKOFF, f"SuperNode exited ({last}); restart in {delay:.1f} s")
            return
        if state is State.BACKOFF:
            if now < self._retry_at:
                return
            self.restarts += 1
        self._start_child(now)

    # -- the child ---------------------------------------------------------------------

    def flower_command(self) -> list[str]:
        """argv of ``flower-supernode``: TLS, node authentication, node config.

        Without ``superlink`` / ``ca_cert`` in the config the device joins first.

        Raises:
            JoinError: the fleet server did not register the key.
        """
        if self.node_key is None:
            self.node_key = ensure_node_key(self.node_key_path)
        if self.config.superlink and self.config.ca_cert is not None:
            superlink, ca_cert = self.config.superlink, self.config.ca_cert
        else:
            self.joined = self._join(self.node_key.public_key_pem)
            superlink, ca_cert = self.joined.superlink, self.joined.ca_cert
        node_config: dict[str, bool | int | float | str] = {
            "data-path": str(self.dataset_path),
            "min-examples": self.config.min_examples,
            "holdout-fraction": self.config.holdout_fraction,
            "model": self.config.model,
        }
        return [
            flower_executable("flower-supernode"),
            "--superlink", superlink,
            "--port", str(free_port()),  # the node's local Runtime API (loopback)
            "--node-config", format_node_config(node_config),
            "--root-certificates", str(ca_cert),
            "--auth-supernode-private-key", str(self.node_key.private_key),
            "--max-wait-time", str(self.policy.reconnect_timeout_s),
        ]

    def _explicit_superlink(self) -> bool:
        """The config names the SuperLink (else the device joins the fleet server's)."""
        return bool(self.config.superlink) and self.config.ca_cert is not None

    def _start_child(self, now: float) -> None:
        self._rotate_log()
        # Joining can take tens of seconds (the server may be starting its SuperLink):
        # /v1/health says so instead of the state before.
        self._set(State.STARTING, "starting flower-supernode" if self._explicit_superlink()
                  else "joining the fleet server's federation")
        try:
            argv = self._command()
            child = ManagedProcess("supernode", argv, env=self._env, log_path=self.log_path,
                                   restart=NO_RESTART)
            child.start()
        except (FederatedError, FlowerRuntimeError, OSError) as e:
            self._failures += 1
            delay = backoff_s(self._failures, self.policy, self._rng)
            self._retry_at = now + delay
            self._set(State.BACKOFF, f"cannot start the SuperNode: {e}; retry in {delay:.1f} s")
            return
        self._child, self._child_started, self._node_id = child, now, None
        self._write_pid(child, argv)
        self._set(State.RUNNING, "")

    def _stop_child(self) -> None:
        child, self._child, self._node_id = self._child, None, None
        if child is not None:
            child.stop(grace_s=self.policy.stop_grace_s)
        (self.work_dir / PID_FILE).unlink(missing_ok=True)

    def _rotate_log(self) -> None:
        try:
            if self.log_path.stat().st_size > MAX_LOG_BYTES:
                os.replace(self.log_path, self.log_path.with_name(self.log_path.name + ".1"))
        except OSError:
            pass  # no log yet

    def _write_pid(self, child: ManagedProcess, argv: list[str]) -> None:
        if child.pid is not None:
            (self.work_dir / PID_FILE).write_text(f"{child.pid}\n" + "\0".join(argv))

    def _end_stale_child(self) -> None:
        """SIGKILL the process group of a child a killed daemon left running."""
        pid_file = self.work_dir / PID_FILE
        try:
            pid_text, _, argv = pid_file.read_text().partition("\n")
            pid = int(pid_text)
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError):
            pid_file.unlink(missing_ok=True)
            return
        # The same process, not a reused pid. A script started through its shebang shows
        # the interpreter first, hence "ends with".
        if argv and cmdline.rstrip("\0").endswith(argv):
            logger.warning("ending the SuperNode (pid %d) left by a previous run", pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        pid_file.unlink(missing_ok=True)

    def _last_log_line(self) -> str:
        if self._child is None:
            return ""
        lines = [ln.strip() for ln in self._child.current_log().splitlines() if ln.strip()]
        return lines[-1][-200:] if len(lines) > 1 else "no output"

    # -- dataset and status ------------------------------------------------------------

    def refresh_dataset(self) -> DatasetStats | None:
        """Export the labelled feedback now; on failure keep the previous stats (logged)."""
        try:
            self.dataset = export_dataset(self.store, self.config.model, self.dataset_path,
                                          max_examples=self.config.max_examples)
        except DatasetError as e:
            logger.warning("federated dataset not refreshed: %s", e)
        return self.dataset

    def _set(self, state: State, reason: str) -> None:
        old = self._status
        self._status = (state, reason)
        if old[0] is not state:
            logger.info("federated: %s -> %s %s", old[0].value, state.value, reason)

    @property
    def state(self) -> State:
        return self._status[0]

    @property
    def node_id(self) -> int | None:
        """The node ID the SuperLink gave the running child, once it joined."""
        child = self._child
        if self._node_id is None and child is not None:
            match = _NODE_ID_RE.search(child.current_log())
            if match and child is self._child:
                self._node_id = int(match.group(1))
        return self._node_id

    @property
    def pid(self) -> int | None:
        child = self._child
        return None if child is None else child.pid

    def status(self) -> dict[str, Any]:
        """``/v1/health`` ``federated``: state, reason, examples, restarts (+ node_id)."""
        state, reason = self._status
        dataset = self.dataset
        return {"state": state.value, "reason": reason,
                "examples": 0 if dataset is None else dataset.n,
                "restarts": self.restarts, "node_id": self.node_id}
