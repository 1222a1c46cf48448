"""HTTP serving of both repositories: routes, Range requests, traversal, stock ngclient."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from tuf.ngclient import Updater

from tests.fleet_server.updates.harness import RepoServer, repo_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RepoServer]:
    with repo_server(tmp_path / "server") as srv:
        yield srv


def _stored_name(server: RepoServer, name: str) -> str:
    return f"{server.repo.targets()[name].hashes['sha256']}.{name}"


def test_stock_ngclient_downloads_a_bundle(server: RepoServer, tmp_path: Path) -> None:
    """Nothing but the documented root file and URLs: python-tuf's Updater, as shipped."""
    src = server.bundle("model-1.0.tar", size=100_000)
    root = tmp_path / "root.json"
    root.write_bytes(requests.get(f"{server.api_url}/repo/image/metadata/1.root.json",
                                  timeout=10).content)
    metadata_dir = tmp_path / "client" / "metadata"
    metadata_dir.mkdir(parents=True)
    updater = Updater(str(metadata_dir), f"{server.api_url}/repo/image/metadata/",
                      str(tmp_path / "client" / "targets"), f"{server.api_url}/repo/image/targets/",
                      bootstrap=root.read_bytes())
    updater.refresh()
    info = updater.get_targetinfo("model-1.0.tar")
    assert info is not None
    path = updater.download_target(info)
    assert Path(path).read_bytes() == src.read_bytes()


def test_metadata_routes(server: RepoServer) -> None:
    server.bundle("m.tar")
    server.repo.assign("dev-1", "m.tar")
    base = f"{server.api_url}/repo"
    for url in ("image/metadata/root.json", "image/metadata/1.root.json",
                "image/metadata/timestamp.json", "image/metadata/2.snapshot.json",
                "image/metadata/2.targets.json", "director/dev-1/metadata/root.json",
                "director/dev-1/metadata/1.root.json", "director/dev-1/metadata/timestamp.json",
                "director/dev-1/metadata/1.targets.json"):
        rv = requests.get(f"{base}/{url}", timeout=10)
        assert rv.status_code == 200, url
        assert rv.headers["Content-Type"].startswith("application/json")
        assert "signatures" in rv.json()
    assert (requests.get(f"{base}/director/dev-1/metadata/root.json", timeout=10).content
            == server.director_root())


@pytest.mark.parametrize("path", [
    "image/metadata/2.root.json", "image/metadata/1.timestamp.json",
    "image/metadata/secrets.toml", "image/metadata/..%2F..%2Fsecrets.toml",
    "image/targets/m.tar", "image/targets/..%2Fmetadata%2Froot.json",
    "image/targets/" + "0" * 64 + ".m.tar", "director/..%2F..%2Fimage/metadata/root.json",
    "director/..%2Fdevices/metadata/root.json", "director/dev-2/metadata/timestamp.json",
    "director/.hidden/metadata/timestamp.json", "../../data/edgefleet.db",
])
def test_unknown_or_unsafe_paths_are_404(server: RepoServer, path: str) -> None:
    server.bundle("m.tar")
    rv = requests.get(f"{server.api_url}/repo/{path}", timeout=10)
    assert rv.status_code == 404, path


def test_range_requests_for_resumable_downloads(server: RepoServer) -> None:
    src = server.bundle("m.tar", size=10_000).read_bytes()
    url = f"{server.api_url}/repo/image/targets/{_stored_name(server, 'm.tar')}"
    full = requests.get(url, timeout=10)
    assert full.status_code == 200
    assert full.headers["Accept-Ranges"] == "bytes"
    assert full.content == src
    part = requests.get(url, headers={"Range": "bytes=6000-"}, timeout=10)
    assert part.status_code == 206
    assert part.headers["Content-Range"] == "bytes 6000-9999/10000"
    assert part.content == src[6000:]
    middle = requests.get(url, headers={"Range": "bytes=10-19"}, timeout=10)
    assert (middle.status_code, middle.content) == (206, src[10:20])
    beyond = requests.get(url, headers={"Range": "bytes=20000-30000"}, timeout=10)
    assert beyond.status_code == 416
    assert beyond.headers["Content-Range"] == "bytes */10000"


def test_routes_need_no_authentication_and_refuse_writes(server: RepoServer) -> None:
    rv = requests.put(f"{server.api_url}/repo/image/metadata/timestamp.json", data=b"x",
                      timeout=10)
    assert rv.status_code == 405
