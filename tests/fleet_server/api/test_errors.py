"""Every error is JSON ``{"error": {"code", "message", "details"}}``: 400/404/405/413/500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Blueprint, g, request
from werkzeug.test import TestResponse

from edgefleet.fleet_server.api import ApiError, Role, route
from tests.fleet_server.support import Env, make_env


def _is_error(rv: TestResponse, status: int, code: str) -> None:
    assert rv.status_code == status, rv.data
    assert rv.mimetype == "application/json"
    assert set(rv.json["error"]) == {"code", "message", "details"}
    assert rv.json["error"]["code"] == code


@pytest.fixture
def small_env(tmp_path: Path) -> Iterator[Env]:
    """An app with tiny body limits and extra routes that fail on purpose."""
    environment = make_env(tmp_path / "data", max_request_bytes=2000, max_upload_bytes=20000)
    bp = Blueprint("testing", __name__)

    @route(bp, "/testing/boom", ["GET"], role=None, summary="fails", responses={200: "never"})
    def boom() -> Any:
        raise KeyError("secret internals")

    @route(bp, "/testing/teapot", ["GET"], role=None, summary="api error",
           responses={418: "always"})
    def teapot() -> Any:
        raise ApiError(418, "teapot", "short and stout", {"handle": 1})

    @route(bp, "/testing/upload", ["POST"], role=Role.OPERATOR, summary="upload",
           request_content_type="application/octet-stream", upload=True,
           responses={200: "size"})
    def upload() -> Any:
        return {"size": len(request.get_data())}

    @route(bp, "/testing/echo", ["POST"], role=Role.VIEWER, summary="echo",
           request_schema={"type": "object", "required": ["n"], "additionalProperties": False,
                           "properties": {"n": {"type": "integer", "minimum": 0}}},
           responses={200: "the body"})
    def echo() -> Any:
        return g.body

    environment.app.register_blueprint(bp, url_prefix="/api/v1")
    yield environment
    environment.services.store.close()


def test_unknown_url_is_json_404(env: Env) -> None:
    _is_error(env.client.get("/api/v1/nope"), 404, "not_found")
    _is_error(env.client.get("/"), 404, "not_found")


def test_wrong_method_is_json_405_with_allow(env: Env) -> None:
    rv = env.client.put("/api/v1/health")
    _is_error(rv, 405, "method_not_allowed")
    assert "GET" in rv.headers["Allow"]


def test_unhandled_exception_is_json_500_without_internals(small_env: Env,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    rv = small_env.client.get("/api/v1/testing/boom")
    _is_error(rv, 500, "internal_error")
    assert b"secret internals" not in rv.data and b"Traceback" not in rv.data
    assert "unhandled error" in caplog.text


def test_api_error_shape(small_env: Env) -> None:
    rv = small_env.client.get("/api/v1/testing/teapot")
    _is_error(rv, 418, "teapot")
    assert rv.json["error"]["details"] == {"handle": 1}


def test_body_too_large_is_json_413(small_env: Env) -> None:
    rv = small_env.client.post("/api/v1/testing/echo", data=b"{" + b" " * 5000 + b"}",
                               content_type="application/json",
                               headers=small_env.auth(Role.VIEWER))
    _is_error(rv, 413, "request_too_large")


def test_upload_routes_take_the_larger_limit_after_auth(small_env: Env) -> None:
    auth = small_env.auth(Role.OPERATOR)
    ok = small_env.client.post("/api/v1/testing/upload", data=b"x" * 10000,
                               content_type="application/octet-stream", headers=auth)
    assert ok.status_code == 200 and ok.json == {"size": 10000}
    big = small_env.client.post("/api/v1/testing/upload", data=b"x" * 30000,
                                content_type="application/octet-stream", headers=auth)
    _is_error(big, 413, "request_too_large")
    anonymous = small_env.client.post("/api/v1/testing/upload", data=b"x" * 10000,
                                      content_type="application/octet-stream")
    _is_error(anonymous, 401, "unauthorized")


@pytest.mark.parametrize(("data", "content_type", "code"), [
    (b"{not json", "application/json", "malformed_json"),
    (b'{"n": 1}', "text/plain", "malformed_json"),
    (b'{"n": -1}', "application/json", "validation_failed"),
    (b'{"n": 1, "extra": true}', "application/json", "validation_failed"),
    (b"[]", "application/json", "validation_failed"),
    (b'{"n": 1, "\\ud800": 2}', "application/json", "malformed_json"),
])
def test_bad_bodies_are_json_400(small_env: Env, data: bytes, content_type: str,
                                 code: str) -> None:
    rv = small_env.client.post("/api/v1/testing/echo", data=data, content_type=content_type,
                               headers=small_env.auth(Role.VIEWER))
    _is_error(rv, 400, code)


def test_valid_body_passes(small_env: Env) -> None:
    rv = small_env.client.post("/api/v1/testing/echo", json={"n": 3},
                               headers=small_env.auth(Role.VIEWER))
    assert rv.status_code == 200 and rv.json == {"n": 3}


def test_security_headers(env: Env) -> None:
    rv = env.client.get("/api/v1/health")
    assert rv.headers["X-Content-Type-Options"] == "nosniff"
    assert rv.headers["Cache-Control"] == "no-store"
