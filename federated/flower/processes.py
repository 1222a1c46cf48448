"""Supervise a real Flower SuperLink and SuperNodes as child processes.

* :class:`ManagedProcess`: one child in its own process group, output appended to a log
  file, restarted with exponential backoff when it dies (unless stopped), stopped cleanly
  (SIGTERM to the group, SIGKILL after a grace period). :meth:`ManagedProcess.kill`
  simulates a crash (SIGKILL to the group; the supervisor then restarts it).
* :class:`SuperLink`: ``flower-superlink`` with a persistent SQLite state database, one
  loopback port for the Fleet, Control and ServerAppIo HTTP APIs, plain HTTP by default
  or TLS, optional SuperNode authentication (needs TLS), runtime dependency installation
  off (the apps come from the installed edgefleet package).
* :class:`SuperNode`: ``flower-supernode`` with its node config (``data-path`` etc.), its
  own Runtime API port, and its node ID read from its log once it joined.
* :class:`Federation`: a SuperLink plus SuperNodes, with :meth:`Federation.submit_run` and
  :meth:`Federation.wait_run` (the Control API; see ``control``).

Every process gets ``FLWR_HOME`` inside the federation's work directory (installed FABs),
telemetry and update checks off, and a 0.5 s SuperExec task poll instead of 1 s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from edgefleet.federated.flower.appdir import write_app_dir
from edgefleet.federated.flower.config import ConfigValue
from edgefleet.federated.flower.control import ControlClient, NodeStatus, RunState
from edgefleet.federated.flower.errors import ProcessStartError, RunError, SettingsError
from edgefleet.federated.flower.tls import NodeKey, TlsFiles, ensure_tls_files, make_node_key

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
_NODE_ID_RE = re.compile(r"SuperNode ID: (\d+)")
_RESTART_MARK = "=== edgefleet: process (re)started"


@dataclass(frozen=True)
class RestartPolicy:
    """Restart-with-backoff for a supervised child."""

    max_restarts: int = 20  # within the life of the supervisor; then it stays down
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 15.0
    stable_after_s: float = 30.0  # a run this long resets the backoff


NO_RESTART = RestartPolicy(max_restarts=0)


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def flower_executable(name: str) -> str:
    """Path of a Flower console script, preferring the running interpreter's venv.

    Raises:
        ProcessStartError: not installed.
    """
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise ProcessStartError(f"{name} not found: install edgefleet[federated] (flwr 1.41)")
    return found


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for Flower children.

    Flower starts ``flower-superexec``, ``flwr-serverapp`` and ``flwr-clientapp`` by bare
    name, so the interpreter's script directory goes first on PATH.
    """
    env = dict(os.environ)
    scripts = str(Path(sys.executable).parent)
    env.update(
        {
            "PATH": os.pathsep.join([scripts, env.get("PATH", "")]),
            "FLWR_HOME": str(flwr_home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.5",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def format_node_config(config: Mapping[str, ConfigValue]) -> str:
    """``--node-config`` string: ``key='str' n=1 f=0.5 b=true`` (TOML values).

    Raises:
        SettingsError: a key or string value that the format cannot carry.
    """
    parts = []
    for key, value in config.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
            raise SettingsError(f"node-config key {key!r} must be [A-Za-z0-9_.-]+")
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        else:
            if "'" in value or '"' in value:
                raise SettingsError(f"node-config value of {key!r} may not contain quotes")
            text = f"'{value}'"  # TOML literal string: no escapes, spaces allowed
        parts.append(f"{key}={text}")
    return " ".join(parts)


class ManagedProcess:
    """A supervised child process (see module docstring)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        log_path: Path,
        restart: RestartPolicy = NO_RESTART,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.restart_policy = restart
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._monitor: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        """PID of the current child, if any."""
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        """The current child is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the child and its supervisor thread."""
        self._stopping.clear()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._spawn()
        self._monitor = threading.Thread(target=self._supervise, name=f"sup-{self.name}",
                                         daemon=True)
        self._monitor.start()

    def _spawn(self) -> None:
        with self._lock:
            if self._stopping.is_set():  # stop() won the race against a restart
                return
            if self._log is None:
                self._log = self.log_path.open("ab")
            self._log.write(f"{_RESTART_MARK} at {time.time():.3f}\n".encode())
            self._log.flush()
            self._proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # own process group: stop/kill reach its children
            )
            logger.info("%s started (pid %d)", self.name, self._proc.pid)

    def _supervise(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            proc = self._proc
            if proc is None:
                return
            started = time.monotonic()
            code = proc.wait()
            if self._stopping.is_set():
                return
            ran_s = time.monotonic() - started
            failures = 1 if ran_s >= self.restart_policy.stable_after_s else failures + 1
            if self.restarts >= self.restart_policy.max_restarts:
                logger.warning("%s exited with %s; not restarting", self.name, code)
                return
            backoff = min(
                self.restart_policy.initial_backoff_s * 2 ** (failures - 1),
                self.restart_policy.max_backoff_s,
            )
            logger.warning("%s exited with %s; restarting in %.1f s", self.name, code, backoff)
            if self._stopping.wait(backoff):
                return
            self.restarts += 1
            self._spawn()

    def kill(self) -> None:
        """SIGKILL the child's process group (a crash); the supervisor may restart it."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            _signal_group(proc, signal.SIGKILL)

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop for good: SIGTERM to the group, SIGKILL after ``grace_s``."""
        self._stopping.set()
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(timeout=5)
        if proc is not None:
            _signal_group(proc, signal.SIGKILL)  # leftovers in the group (e.g. SuperExec)
        if self._monitor is not None:
            self._monitor.join(timeout=5)
        with self._lock:
            if self._log is not None:
                self._log.close()
                self._log = None

    def log_tail(self, max_bytes: int = 4000) -> str:
        """The end of the log file, for error messages."""
        try:
            data = self.log_path.read_bytes()[-max_bytes:]
        except OSError:
            return ""
        return data.decode(errors="replace")

    def current_log(self) -> str:
        """Log text since the last (re)start."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[text.rfind(_RESTART_MARK):] if _RESTART_MARK in text else text


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


class SuperLink:
    """A supervised ``flower-superlink`` (see module docstring)."""

    def __init__(
        self,
        state_dir: Path,
        *,
        port: int | None = None,
        tls: TlsFiles | None = None,
        supernode_auth: bool = False,
        restart: RestartPolicy = RestartPolicy(),
    ) -> None:
        if supernode_auth and tls is None:
            raise SettingsError("SuperNode authentication needs TLS in Flower 1.41")
        self.state_dir = state_dir
        self.port = port or free_port()
        self.tls = tls
        self.supernode_auth = supernode_auth
        self.database = state_dir / "superlink.db"
        argv = [
            flower_executable("flower-superlink"),
            "--database", str(self.database),
            "--host", LOOPBACK,
            "--port", str(self.port),
            "--disable-runtime-dependency-installation",
        ]
        if tls is None:
            argv.append("--insecure")
        else:
            argv += ["--ssl-ca-certfile", str(tls.ca_cert), "--ssl-certfile",
                     str(tls.server_cert), "--ssl-keyfile", str(tls.server_key)]
        if supernode_auth:
            argv.append("--enable-supernode-auth")
        self.process = ManagedProcess(
            "superlink", argv, env=flower_env(state_dir / "flwr-home"),
            log_path=state_dir / "logs" / "superlink.log", restart=restart,
        )

    @property
    def address(self) -> str:
        """``host:port`` of the Fleet and Control APIs."""
        return f"{LOOPBACK}:{self.port}"

    def control(self) -> ControlClient:
        """A new Control API client (close it, or use it as a context manager)."""
        return ControlClient(self.address, ca_cert=None if self.tls is None else self.tls.ca_cert)

    def start(self, ready_timeout_s: float = 60.0) -> None:
        """Start and wait until the Control API answers.

        Raises:
            ProcessStartError: it exited or did not answer in time (log tail included).
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.process.start()
        deadline = time.monotonic() + ready_timeout_s
        with self.control() as control:
            while True:
                try:
                    control.list_nodes()
                    return
                except RunError:
                    pass
                if not self.process.running and self.process.restarts == 0:
                    raise ProcessStartError(
                        f"flower-superlink exited:\n{self.process.log_tail()}"
                    )
                if time.monotonic() >= deadline:
                    raise ProcessStartError(
                        f"flower-superlink not ready after {ready_timeout_s:.0f} s:\n"
                        f"{self.process.log_tail()}"
                    )
                time.sleep(0.2)

    def stop(self) -> None:
        """Stop the SuperLink (its state database stays)."""
        self.process.stop()


class SuperNode:
    """A supervised ``flower-supernode`` (see module docstring)."""

    def __init__(
        self,
        name: str,
        superlink: SuperLink,
        node_config: Mapping[str, ConfigValue],
        *,
        work_dir: Path,
        auth_key: NodeKey | None = None,
        restart: RestartPolicy = RestartPolicy(),
    ) -> None:
        self.name = name
        self.node_config = dict(node_config)
        self.runtime_port = free_port()
        self.auth_key = auth_key
        self.registered_id: int | None = None  # set when registered for authentication
        argv = [
            flower_executable("flower-supernode"),
            "--superlink", superlink.address,
            "--port", str(self.runtime_port),
            "--node-config", format_node_config(node_config),
        ]
        if superlink.tls is None:
            argv.append("--insecure")
        else:
            argv += ["--root-certificates", str(superlink.tls.ca_cert)]
        if auth_key is not None:
            argv += ["--auth-supernode-private-key", str(auth_key.private_key)]
        self.process = ManagedProcess(
            f"supernode-{name}", argv, env=flower_env(work_dir / "flwr-home"),
            log_path=work_dir / "logs" / f"supernode-{name}.log", restart=restart,
        )

    @property
    def node_id(self) -> int | None:
        """The node ID the SuperLink gave the current process, once it joined."""
        match = _NODE_ID_RE.search(self.process.current_log())
        return int(match.group(1)) if match else None

    def start(self) -> None:
        """Start (returns at once; see :meth:`wait_ready`)."""
        self.process.start()

    def wait_ready(self, timeout_s: float = 60.0) -> int:
        """Block until the node joined the SuperLink; its node ID.

        Raises:
            ProcessStartError: it did not join in time (log tail included).
        """
        deadline = time.monotonic() + timeout_s
        while (node_id := self.node_id) is None:
            if time.monotonic() >= deadline:
                raise ProcessStartError(
                    f"SuperNode {self.name} did not join within {timeout_s:.0f} s:\n"
                    f"{self.process.log_tail()}"
                )
            time.sleep(0.2)
        return node_id

    def kill(self) -> None:
        """Crash the node (SIGKILL to it, its SuperExec and its ClientApp process)."""
        self.process.kill()

    def stop(self) -> None:
        """Stop the node cleanly (it deactivates itself on the SuperLink)."""
        self.process.stop()


class Federation:
    """A SuperLink and its SuperNodes under one work directory; a context manager.

    ``tls=True`` serves the SuperLink over HTTPS with a private CA (kept in
    ``work_dir/tls`` and reused by the next start, see :func:`.tls.ensure_tls_files`);
    ``port`` (default: a free one) lets a restarted server keep its address;
    ``supernode_auth=True`` (implies TLS) enables SuperNode authentication and registers
    a freshly generated key for every node added.
    """

    def __init__(
        self,
        work_dir: Path,
        *,
        tls: bool = False,
        supernode_auth: bool = False,
        restart: RestartPolicy = RestartPolicy(),
        port: int | None = None,
    ) -> None:
        self.work_dir = work_dir
        self.restart = restart
        tls_files = ensure_tls_files(work_dir / "tls") if (tls or supernode_auth) else None
        self.superlink = SuperLink(work_dir / "superlink", port=port, tls=tls_files,
                                   supernode_auth=supernode_auth, restart=restart)
        self.nodes: dict[str, SuperNode] = {}
        self.app_dir = write_app_dir(work_dir / "app")

    def __enter__(self) -> Federation:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, ready_timeout_s: float = 60.0) -> None:
        """Start the SuperLink and wait until it answers."""
        self.superlink.start(ready_timeout_s)

    def add_node(self, name: str, node_config: Mapping[str, ConfigValue]) -> SuperNode:
        """Start a SuperNode named ``name`` (returns before it joined)."""
        if name in self.nodes:
            raise SettingsError(f"node {name!r} exists")
        key, registered_id = None, None
        if self.superlink.supernode_auth:
            # The node ID is bound to the key, so it survives restarts of the node.
            key = make_node_key(self.work_dir / "keys" / f"{name}.key")
            with self.superlink.control() as control:
                registered_id = control.register_node(key.public_key_pem)
        node = SuperNode(name, self.superlink, node_config, work_dir=self.work_dir,
                         auth_key=key, restart=self.restart)
        node.registered_id = registered_id
        node.start()
        self.nodes[name] = node
        return node

    def wait_nodes(self, timeout_s: float = 60.0) -> dict[str, int]:
        """Wait until every added node joined; node name -> node ID."""
        deadline = time.monotonic() + timeout_s
        return {name: node.wait_ready(max(deadline - time.monotonic(), 0.1))
                for name, node in self.nodes.items()}

    def online_nodes(self) -> list[NodeStatus]:
        """Nodes the SuperLink currently considers online."""
        with self.superlink.control() as control:
            return [n for n in control.list_nodes() if n.status == "online"]

    def submit_run(self, app_dir: Path | None, run_config: Mapping[str, ConfigValue]) -> int:
        """Start a run of the app in ``app_dir`` (None: the edgefleet apps); its run ID.

        Raises:
            RunError: rejected or SuperLink unreachable.
        """
        with self.superlink.control() as control:
            return control.submit_run(app_dir or self.app_dir, run_config)

    def wait_run(self, run_id: int, timeout_s: float) -> RunState:
        """Block until the run finished successfully.

        Raises:
            RunError: failed, stopped or still running after ``timeout_s`` (the message
                names the SuperLink log, where the ServerApp's output goes).
        """
        with self.superlink.control() as control:
            try:
                return control.wait_run(run_id, timeout_s)
            except RunError as e:
                raise RunError(f"{e} (ServerApp log: {self.superlink.process.log_path})",
                               run_id=run_id, status=e.status) from e

    def stop(self) -> None:
        """Stop every SuperNode, then the SuperLink."""
        for node in self.nodes.values():
            node.stop()
        self.superlink.stop()
