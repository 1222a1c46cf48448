"""Public, read-only HTTP serving of both repositories (what ngclient downloads).

Routes (mounted under the app's API prefix; no authentication, the content is signed):

* ``GET /repo/image/metadata/<file>``: ``root.json``, ``N.root.json``, ``timestamp.json``,
  ``N.snapshot.json``, ``N.targets.json``
* ``GET /repo/image/targets/<sha256>.<name>``: a bundle, with ``Range`` support (206 +
  ``Content-Range``; 416 for unsatisfiable ranges) for resumable downloads
* ``GET /repo/director/<device_id>/metadata/<file>``: the device's director metadata; the
  ``root.json`` / ``N.root.json`` files are the shared director root

File names are matched against strict patterns before they touch the file system, so no
request can leave the repository directory.

The same blueprint carries the device and operator update routes of ``device_api``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Blueprint, abort, send_file
from werkzeug.exceptions import RequestedRangeNotSatisfiable

from edgefleet.fleet_server.api.errors import error_response
from edgefleet.fleet_server.api.routing import route
from edgefleet.fleet_server.services import Services
from edgefleet.fleet_server.updates.device_api import register_device_routes
from edgefleet.fleet_server.updates.errors import InvalidRequest
from edgefleet.fleet_server.updates.keys import load_signers
from edgefleet.fleet_server.updates.layout import (
    METADATA_FILE_RE,
    STORED_TARGET_RE,
    RepoLayout,
    check_device_id,
)
from edgefleet.fleet_server.updates.repository import Repository

TAG = ("updates",)
JSON = "application/json"
OCTETS = "application/octet-stream"


def repo_dir(services: Services) -> Path:
    """Where the server keeps both repositories: ``<data_dir>/repo``."""
    return services.config.data_dir / "repo"


def keys_dir(services: Services) -> Path:
    """Where the server keeps its online signing keys: ``<data_dir>/keys``."""
    return services.config.data_dir / "keys"


def updates_repository(services: Services) -> Repository:
    """The app's Repository, kept in ``services.extras["updates"]``.

    The online keys are loaded again whenever the key folder changes (``keys init`` after
    the server started, ``keys rotate`` while it runs), so the server never signs with a
    retired key and needs no restart.

    Raises:
        KeyMaterialError: a key file is unreadable or has unsafe permissions.
    """
    directory = keys_dir(services)
    fingerprint = _key_fingerprint(directory)
    cached = services.extras.get("updates")
    if isinstance(cached, Repository) and services.extras.get("updates_keys") == fingerprint:
        return cached
    repo = Repository(repo_dir(services), load_signers([directory]))
    services.extras["updates"] = repo
    services.extras["updates_keys"] = fingerprint
    return repo


def _key_fingerprint(directory: Path) -> tuple[tuple[str, int], ...]:
    if not directory.is_dir():
        return ()
    return tuple(sorted((p.name, p.stat().st_mtime_ns) for p in directory.iterdir()))


def _serve(path: Path, mimetype: str) -> Any:
    if not path.is_file():
        abort(404)
    # conditional=True gives Range (206/416), ETag and If-Modified-Since handling
    try:
        return send_file(path, mimetype=mimetype, conditional=True, etag=True, max_age=0)
    except RequestedRangeNotSatisfiable:
        response = error_response(416, "range_not_satisfiable",
                                  "the requested range lies outside the file")
        response.headers["Content-Range"] = f"bytes */{path.stat().st_size}"
        return response


def _metadata_path(metadata_dir: Path, root_dir: Path, filename: str) -> Path:
    match = METADATA_FILE_RE.fullmatch(filename)
    if match is None:
        abort(404)
    if match["role"] == "root":
        return root_dir / filename
    if match["role"] == "timestamp" and match["version"] is not None:
        abort(404)  # timestamp is never versioned
    return metadata_dir / filename


def create_blueprint(services: Services) -> Blueprint:
    """The repository routes, serving ``<data_dir>/repo`` (see the module docstring)."""
    bp = Blueprint("updates", __name__)
    layout = RepoLayout(repo_dir(services))

    @route(bp, "/repo/image/metadata/<filename>", ["GET"], role=None,
           summary="Image repository TUF metadata", responses={200: "Signed metadata",
                                                               404: "No such file"}, tags=TAG)
    def image_metadata(filename: str) -> Any:
        return _serve(_metadata_path(layout.image_metadata, layout.image_metadata, filename),
                      JSON)

    @route(bp, "/repo/image/targets/<filename>", ["GET"], role=None,
           summary="A released bundle (Range requests supported)",
           responses={200: "The bundle", 206: "Part of the bundle", 404: "No such bundle",
                      416: "Range not satisfiable"}, tags=TAG)
    def image_target(filename: str) -> Any:
        if STORED_TARGET_RE.fullmatch(filename) is None or ".." in filename:
            abort(404)
        return _serve(layout.image_targets / filename, OCTETS)

    @route(bp, "/repo/director/<device_id>/metadata/<filename>", ["GET"], role=None,
           summary="A device's director repository TUF metadata",
           responses={200: "Signed metadata", 404: "No such file"}, tags=TAG)
    def director_metadata(device_id: str, filename: str) -> Any:
        try:
            metadata_dir = layout.director_metadata(check_device_id(device_id))
        except InvalidRequest:
            abort(404)
        return _serve(_metadata_path(metadata_dir, layout.director_root, filename), JSON)

    register_device_routes(bp, services, lambda: updates_repository(services))
    return bp
