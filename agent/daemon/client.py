"""A small Python client of the daemon's local API (stdlib ``http.client`` only).

```python
from edgefleet.agent.daemon.client import AgentClient

client = AgentClient("http://127.0.0.1:8470")       # or AgentClient("unix:/run/edgefleet.sock")
result = client.predict("digits", {"input": [[0.0] * 64]})
client.feedback(result.id, 7)
client.health()
```
"""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from edgefleet.agent.daemon.errors import DaemonError


class AgentClientError(DaemonError):
    """The daemon refused a request (``status``, ``code``) or could not be reached (0)."""

    def __init__(self, status: int, code: str, message: str,
                 detail: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}" if status else message)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail or {}


@dataclass(frozen=True)
class Prediction:
    id: str
    model: str
    version: str
    outputs: dict[str, Any]  # nested lists, as the API returns them


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    return value


class AgentClient:
    """Talks to one daemon: ``http://127.0.0.1:PORT``, ``unix:/path`` or a socket path."""

    def __init__(self, target: str, timeout_s: float = 30.0) -> None:
        self.timeout_s = timeout_s
        if target.startswith("unix:"):
            self._unix: str | None = target[len("unix:"):]
        elif target.startswith("/"):
            self._unix = target
        else:
            self._unix = None
            parts = urlsplit(target)
            if parts.scheme != "http" or not parts.hostname:
                raise ValueError(f"expected http://host:port or unix:/path, got {target!r}")
            self._host, self._port = parts.hostname, parts.port or 80

    def _connection(self) -> http.client.HTTPConnection:
        if self._unix is not None:
            return _UnixConnection(self._unix, self.timeout_s)
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout_s)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None
                ) -> dict[str, Any]:
        """One call; returns the decoded JSON body.

        Raises:
            AgentClientError: a non-2xx answer (its ``status``/``code``) or no connection.
        """
        data = None if body is None else json.dumps(body, default=_jsonable).encode()
        headers = {} if data is None else {"Content-Type": "application/json"}
        conn = self._connection()
        try:
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            status = response.status
        except OSError as e:
            raise AgentClientError(0, "unreachable", f"cannot reach the agent: {e}") from e
        finally:
            conn.close()
        try:
            decoded = json.loads(raw)
        except ValueError:
            raise AgentClientError(status, "bad_response", raw[:200].decode(errors="replace")
                                   ) from None
        if not 200 <= status < 300:
            error = decoded.get("error", {}) if isinstance(decoded, dict) else {}
            raise AgentClientError(status, str(error.get("code", "error")),
                                   str(error.get("message", "")), error)
        if not isinstance(decoded, dict):
            raise AgentClientError(status, "bad_response", "expected a JSON object")
        return decoded

    def predict(self, model: str, inputs: dict[str, Any]) -> Prediction:
        """Run ``model``; ``inputs`` maps input names to nested lists or numpy arrays."""
        body = self.request("POST", "/v1/predict", {"model": model, "inputs": inputs})
        return Prediction(body["id"], body["model"], body["version"], body["outputs"])

    def feedback(self, pid: str, label: Any) -> bool | None:
        """Send the true label of prediction ``pid``; returns whether the model was right."""
        body = self.request("POST", "/v1/feedback", {"id": pid, "label": _jsonable(label)})
        correct = body.get("correct")
        return None if correct is None else bool(correct)

    def health(self) -> dict[str, Any]:
        return self.request("GET", "/v1/health")
