"""The demo's narration: steps, echoed commands and API calls, and its errors."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.tools.errors import ToolError

Say = Callable[[str], None]


class DemoError(ToolError):
    """A demo step failed; the message names the step and the cause."""


@dataclass(frozen=True)
class DemoOptions:
    """How the demo runs.

    Attributes:
        workdir: where models, the server's data dir and the device state go (a new
            temporary folder when None; kept afterwards so you can look around).
        keep_running: leave the fleet server running at the end until Ctrl-C.
        http_port / mqtt_port: fixed ports for the server (free ones when None).
    """

    workdir: Path | None = None
    keep_running: bool = False
    http_port: int | None = None
    mqtt_port: int | None = None


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Demo:
    def __init__(self, work: Path, say: Say) -> None:
        self.work = work
        self.say = say
        self.steps = 0
        self.api_url = ""
        self.api_token = ""
        self.cli_env: dict[str, str] = {}  # EDGEFLEET_SERVER / EDGEFLEET_API_TOKEN


    def step(self, title: str) -> None:
        self.steps += 1
        self.say(f"\n== {self.steps}. {title}")

    def show(self, text: str) -> None:
        for line in text.rstrip().splitlines():
            self.say(f"   {line}")

    def cli(self, *args: str, show: bool = True, env: dict[str, str] | None = None) -> str:
        """Run ``edgefleet ARGS`` as a user would; return its stdout."""
        shown = " ".join(_quote(a) for a in args)
        self.say(f"$ edgefleet {shown}")
        proc = subprocess.run(
            [sys.executable, "-m", "edgefleet.tools.cli", *args],
            capture_output=True, text=True, cwd=self.work, check=False,
            env={**os.environ, **(env or {})},
        )
        if proc.returncode != 0:
            raise DemoError(f"`edgefleet {shown}` failed: {proc.stderr.strip() or proc.stdout}")
        if show:
            self.show(proc.stdout)
        return proc.stdout

    def api(self, method: str, path: str, body: dict[str, Any] | None = None, *,
            quiet: bool = False) -> Any:
        """Call the fleet server's JSON API with the demo's API token."""
        if not quiet:
            self.say(f"$ {method} /api/v1{path}" + (f" {json.dumps(body)}" if body else ""))
        request = urllib.request.Request(  # noqa: S310 - http(s) URL of the configured fleet server
            f"{self.api_url}/api/v1{path}", method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"Bearer {self.api_token}",
                     "Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - http(s) URL of the configured fleet server
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as e:
            raise DemoError(f"{method} {path} answered {e.code}: {e.read()[:300]!r}") from None
        except OSError as e:  # refused, reset, timed out
            raise DemoError(f"{method} {path}: no answer from the fleet server ({e})") from None

    def watch(self, path: str, lines: Callable[[dict[str, Any]], dict[str, str]],
              done: Callable[[dict[str, Any]], bool], timeout_s: float,
              what: str) -> dict[str, Any]:
        """Poll ``GET path`` every second until ``done(view)``; print each of
        ``lines(view)`` (keyed) when it changes, with the seconds since the start.

        Raises:
            DemoError: still not done after ``timeout_s`` (or the API keeps failing).
        """
        start = time.monotonic()
        shown: dict[str, str] = {}
        while True:
            try:
                view: dict[str, Any] = self.api("GET", path, quiet=True)
            except DemoError as e:  # a busy server may miss a poll; the deadline holds
                if time.monotonic() - start > timeout_s:
                    raise
                self.show(f"{time.monotonic() - start:5.1f} s  ({e}; asking again)")
                time.sleep(1.0)
                continue
            for key, text in lines(view).items():
                if shown.get(key) != text:
                    self.show(f"{time.monotonic() - start:5.1f} s  {text}")
                    shown[key] = text
            if done(view):
                return view
            if time.monotonic() - start > timeout_s:
                raise DemoError(f"{what} not done after {timeout_s:.0f} s: "
                                f"{' / '.join(shown.values())}")
            time.sleep(1.0)

    def download(self, path: str, dest: Path) -> Path:
        """GET ``/api/v1{path}`` (a file) into ``dest``, echoed like :meth:`api`."""
        self.say(f"$ GET /api/v1{path} > {dest.name}")
        request = urllib.request.Request(  # noqa: S310 - http(s) URL of the configured fleet server
            f"{self.api_url}/api/v1{path}",
            headers={"Authorization": f"Bearer {self.api_token}"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - http(s) URL of the configured fleet server
                dest.write_bytes(response.read())
        except urllib.error.HTTPError as e:
            raise DemoError(f"GET {path} answered {e.code}: {e.read()[:300]!r}") from None
        except OSError as e:
            raise DemoError(f"GET {path}: no answer from the fleet server ({e})") from None
        return dest


def _quote(arg: str) -> str:
    return arg if re.fullmatch(r"[\w@%+=:,./-]+", arg) else repr(arg)
