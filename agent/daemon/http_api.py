"""The local HTTP API: stdlib ``http.server`` on 127.0.0.1 or a unix socket.

Routes (JSON in, JSON out; errors are ``{"error": {"code", "message"}}``, never a
traceback):

* ``POST /v1/predict`` ``{"model": str, "inputs": {name: nested lists}}`` →
  ``{"id", "model", "version", "outputs": {name: nested lists}}``.
  400 ``bad_input`` carries the runtime's typed error (``type``: e.g. ``InputShapeError``).
* ``POST /v1/feedback`` ``{"id": str, "label": int | str | float | bool | [..]}`` →
  ``{"id", "correct": bool | null}``; 404 ``unknown_prediction``.
* ``GET /v1/health`` → models, versions, counters, latency, telemetry state.

Requests must carry ``Content-Length`` (411 otherwise) of at most ``max_request_bytes``
(413) and a JSON body; NaN/Infinity, duplicate-free objects with unknown keys, and
deeply nested garbage are refused with 400.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import socketserver
import stat
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgefleet.agent.daemon.config import ListenAddress
from edgefleet.agent.daemon.errors import DaemonError, UnknownModelError, UnknownPredictionError
from edgefleet.agent.runtime.errors import InferenceError, InputError

log = logging.getLogger(__name__)

MAX_ID_CHARS = 128
MAX_LABELS = 100_000


class Api(Protocol):
    """What the HTTP layer needs of the daemon."""

    def predict(self, model: str, inputs: dict[str, Any]
                ) -> tuple[str, str, dict[str, np.ndarray]]: ...

    def feedback(self, pid: str, label: Any) -> bool | None: ...

    def health(self) -> dict[str, Any]: ...


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


def as_arrays(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Nested lists → numpy arrays where numpy can (the runner validates the rest)."""
    out: dict[str, Any] = {}
    for name, value in inputs.items():
        try:
            array = np.asarray(value)
        except (ValueError, TypeError):  # ragged: the runner reports it, typed
            out[name] = value
            continue
        out[name] = value if array.dtype.kind == "O" else array
    return out


def json_outputs(outputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Outputs as nested lists; NaN/inf become null (JSON has neither)."""
    result: dict[str, Any] = {}
    for name, a in outputs.items():
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            obj = a.astype(object)
            obj[~np.isfinite(a)] = None
            result[name] = obj.tolist()
        else:
            result[name] = a.tolist()
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key in a JSON object")
    return obj


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "edgefleet-agent"
    sys_version = ""
    timeout = 30  # seconds a client may stall mid-request before its socket is closed
    server: _ServerMixin  # type: ignore[assignment]

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def address_string(self) -> str:
        address = self.client_address
        return str(address[0]) if isinstance(address, tuple) and address else "local"

    # -- routing -----------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch({"/v1/health": self._health}, {"/v1/predict", "/v1/feedback"})

    def do_POST(self) -> None:
        self._dispatch({"/v1/predict": self._predict, "/v1/feedback": self._feedback},
                       {"/v1/health"})

    def _dispatch(self, routes: dict[str, Callable[[], dict[str, Any]]],
                  other_method: set[str]) -> None:
        path = self.path.split("?", 1)[0]
        try:
            route = routes.get(path)
            if route is None:
                if path in other_method:
                    raise ApiError(405, "method_not_allowed", f"{self.command} not allowed on "
                                                              f"{path}")
                raise ApiError(404, "not_found", f"no route {path}")
            self._send(200, route())
        except ApiError as e:
            self._send(e.status, {"error": {"code": e.code, "message": e.message, **e.extra}})
        except Exception:  # never a traceback to the client; the log has it
            log.exception("internal error serving %s %s", self.command, path)
            self._send(500, {"error": {"code": "internal", "message": "internal error"}})

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    # -- body --------------------------------------------------------------------------

    def _json_body(self) -> dict[str, Any]:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise ApiError(411, "length_required", "send Content-Length, not chunked bodies")
        length_text = self.headers.get("Content-Length")
        if length_text is None or not length_text.strip().isdigit():
            self.close_connection = True
            raise ApiError(411, "length_required", "Content-Length is required")
        length = int(length_text)
        limit = self.server.max_request_bytes
        if length > limit:
            self.close_connection = True  # the body is not read: the connection is unusable
            raise ApiError(413, "too_large", f"request body of {length} bytes exceeds the "
                                             f"limit of {limit}")
        ctype = self.headers.get("Content-Type", "application/json")
        if ctype.split(";", 1)[0].strip().lower() != "application/json":
            self.rfile.read(length)
            raise ApiError(415, "unsupported_media_type", "the body must be application/json")
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw, parse_constant=_reject_constant,
                              object_pairs_hook=_unique_object)
        except (ValueError, RecursionError) as e:
            raise ApiError(400, "bad_json", f"the body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", "the body must be a JSON object")
        return body

    @staticmethod
    def _keys(body: dict[str, Any], required: set[str]) -> None:
        missing = sorted(required - set(body))
        extra = sorted(set(body) - required)
        if missing:
            raise ApiError(400, "bad_request", f"missing key(s): {', '.join(missing)}")
        if extra:
            raise ApiError(400, "bad_request", f"unknown key(s): {', '.join(extra)}")

    # -- routes ------------------------------------------------------------------------

    def _predict(self) -> dict[str, Any]:
        body = self._json_body()
        self._keys(body, {"model", "inputs"})
        model, inputs = body["model"], body["inputs"]
        if not isinstance(model, str) or not model:
            raise ApiError(400, "bad_request", "model must be a non-empty string")
        if not isinstance(inputs, dict) or not inputs:
            raise ApiError(400, "bad_request", "inputs must be a non-empty object of "
                                               "{input name: nested lists of numbers}")
        for name, value in inputs.items():
            if not (isinstance(value, list) or _is_number(value)):
                raise ApiError(400, "bad_request", f"input {name!r} must be a number or "
                                                   f"nested lists of numbers")
        try:
            pid, version, outputs = self.server.api.predict(model, as_arrays(inputs))
        except UnknownModelError:
            raise ApiError(404, "unknown_model", f"no model named {model!r}") from None
        except InputError as e:
            raise ApiError(400, "bad_input", str(e), type=type(e).__name__,
                           tensor=e.tensor) from None
        except InferenceError as e:
            raise ApiError(500, "inference_failed", f"inference failed: {e.reason}") from None
        except DaemonError as e:
            raise ApiError(503, "unavailable", str(e)) from None
        return {"id": pid, "model": model, "version": version,
                "outputs": json_outputs(outputs)}

    def _feedback(self) -> dict[str, Any]:
        body = self._json_body()
        self._keys(body, {"id", "label"})
        pid, label = body["id"], body["label"]
        if not isinstance(pid, str) or not 0 < len(pid) <= MAX_ID_CHARS:
            raise ApiError(400, "bad_request", f"id must be a string of 1-{MAX_ID_CHARS} "
                                               f"characters")
        scalar = (int, float, str, bool)
        ok = isinstance(label, scalar) or (
            isinstance(label, list) and 0 < len(label) <= MAX_LABELS
            and all(isinstance(v, scalar) for v in label))
        if not ok:
            raise ApiError(400, "bad_request", "label must be a number, string or boolean, "
                                               "or a list of them (one per row)")
        try:
            correct = self.server.api.feedback(pid, label)
        except UnknownPredictionError:
            raise ApiError(404, "unknown_prediction", f"no stored prediction {pid!r} (never "
                                                      f"made, or evicted)") from None
        except DaemonError as e:
            raise ApiError(503, "unavailable", str(e)) from None
        return {"id": pid, "correct": correct}

    def _health(self) -> dict[str, Any]:
        return self.server.api.health()


class _ServerMixin:
    api: Api
    max_request_bytes: int


class _TcpServer(_ServerMixin, ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:  # skip HTTPServer's reverse-DNS lookup of the host
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class _Tcp6Server(_TcpServer):
    address_family = socket.AF_INET6


class _UnixServer(_ServerMixin, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class HttpApi:
    """Serves :class:`Api` on ``listen`` from a background thread."""

    def __init__(self, api: Api, listen: ListenAddress, max_request_bytes: int) -> None:
        self.listen = listen
        self._server: _TcpServer | _UnixServer
        if listen.path is not None:
            _remove_stale_socket(listen.path)
            listen.path.parent.mkdir(parents=True, exist_ok=True)
            self._server = _UnixServer(str(listen.path), _Handler)
            os.chmod(listen.path, 0o660)  # the socket's group decides which apps may call
        else:
            assert listen.host is not None and listen.port is not None
            cls = _Tcp6Server if ":" in listen.host else _TcpServer
            self._server = cls((listen.host, listen.port), _Handler)
        self._server.api = api
        self._server.max_request_bytes = max_request_bytes
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` (the bound port) or ``unix:/path``."""
        if self.listen.path is not None:
            return f"unix:{self.listen.path}"
        address = self._server.server_address
        assert isinstance(address, tuple)
        host, port = str(address[0]), int(address[1])
        host_text = f"[{host}]" if ":" in str(host) else str(host)
        return f"http://{host_text}:{port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.2},
                                        name="edgefleet-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()
        if self.listen.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.listen.path.unlink()


def _remove_stale_socket(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise DaemonError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # nobody listens: a leftover of a crashed daemon
        return
    finally:
        probe.close()
    raise DaemonError(f"another process already serves on {path}")
