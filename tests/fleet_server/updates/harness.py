"""Test harness for the update repositories: the real app serving them over real HTTP.

Shared by tests/fleet_server/updates and tests/agent/update/test_verify*.py. The server is
werkzeug's ``make_server`` on port 0 (the OS picks a free port) in a thread. The
``FaultyFetcher`` is the fault injector: a real ngclient ``Urllib3Fetcher`` that can replace,
transform or extend what the server sent for chosen URLs (what a network attacker does).
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tuf.ngclient import Urllib3Fetcher
from werkzeug.serving import make_server

from edgefleet.agent.update.verify import RepoUrls, TrustConfig
from edgefleet.fleet_server.app import all_components, create_app
from edgefleet.fleet_server.config import load_config
from edgefleet.fleet_server.datadir import init_data_dir
from edgefleet.fleet_server.updates import keys_dir, repo_dir
from edgefleet.fleet_server.updates.keys import Signers, init_keys
from edgefleet.fleet_server.updates.repository import Repository
from edgefleet.fleet_server.updates.signed_repo import ExpiryPolicy

FEATURES = ["edgefleet.fleet_server.updates"]


@dataclass
class MutableClock:
    """A clock tests can move (to sign metadata that is already expired)."""

    now: datetime = field(default_factory=lambda: datetime.now(UTC).replace(microsecond=0))

    def __call__(self) -> datetime:
        return self.now


@dataclass
class RepoServer:
    """Both repositories of one server data dir, served over HTTP at ``api_url``."""

    data_dir: Path
    repo: Repository
    signers: Signers
    online_keys: Path
    offline_keys: Path
    api_url: str
    clock: MutableClock

    def urls(self, device_id: str) -> RepoUrls:
        return RepoUrls.for_server(self.api_url, device_id)

    def image_root(self) -> bytes:
        return (self.repo.layout.image_metadata / "root.json").read_bytes()

    def director_root(self) -> bytes:
        return (self.repo.layout.director_root / "root.json").read_bytes()

    def trust(self, device_id: str, state_dir: Path) -> TrustConfig:
        return TrustConfig(device_id, self.image_root(), self.director_root(), state_dir)

    def bundle(self, name: str, size: int = 4096) -> Path:
        """A fresh random bundle file, added to the image repository."""
        path = self.data_dir.parent / f"src-{name}"
        path.write_bytes(os.urandom(size))
        self.repo.add_bundle(path, name)
        return path


@contextmanager
def serving(app: object) -> Iterator[str]:
    """Serve a WSGI app on 127.0.0.1:<free port> in a thread; yields the base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)  # type: ignore[arg-type]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()


@contextmanager
def repo_server(base: Path, expiry: ExpiryPolicy | None = None) -> Iterator[RepoServer]:
    """An initialised server data dir with keys and repositories, served over HTTP."""
    data_dir = base / "data"
    init_data_dir(data_dir, all_components())
    config = load_config(data_dir, env={}, session_cookie_secure=False)
    app = create_app(config, features=FEATURES)
    services = app.extensions["edgefleet"]
    offline = base / "offline-keys"
    signers = init_keys(keys_dir(services), offline)
    clock = MutableClock()
    repo = Repository(repo_dir(services), signers, expiry, clock)
    repo.initialise()
    try:
        with serving(app) as url:
            yield RepoServer(data_dir, repo, signers, keys_dir(services), offline,
                             f"{url}/api/v1", clock)
    finally:
        services.store.close()


class FaultyFetcher(Urllib3Fetcher):
    """ngclient's real fetcher, with per-URL-suffix faults injected by the test."""

    def __init__(self, socket_timeout: int = 30) -> None:
        super().__init__(socket_timeout=socket_timeout)
        self.replace: dict[str, bytes] = {}
        self.transform: dict[str, Callable[[bytes], bytes]] = {}
        self.append: dict[str, bytes] = {}
        self.seen: list[str] = []

    def _fetch(self, url: str) -> Iterator[bytes]:
        self.seen.append(url)
        for suffix, data in self.replace.items():
            if url.endswith(suffix):
                return iter([data])
        chunks = super()._fetch(url)
        for suffix, fn in self.transform.items():
            if url.endswith(suffix):
                return iter([fn(b"".join(chunks))])
        for suffix, extra in self.append.items():
            if url.endswith(suffix):
                return itertools.chain(chunks, [extra])
        return chunks


@contextmanager
def stalling_server() -> Iterator[str]:
    """A TCP server on a free port that accepts requests and never answers (slow retrieval)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)  # keep it open, send nothing

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()
