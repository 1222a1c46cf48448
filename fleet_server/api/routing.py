"""The ``route`` decorator: Flask route + server-side authentication and role check +
the OpenAPI operation record.

Authentication, in order:

1. ``Authorization: Bearer <api token>``: a live token (not revoked, not expired, owner
   enabled); its effective role is the lower of the token's and its owner's role, and its
   scopes must cover the method (``read`` for GET/HEAD, ``write`` otherwise).
2. The console session cookie (set by ``POST /api/v1/auth/login``): the user must still be
   enabled with the same ``session_epoch``; state-changing requests must echo the session's
   CSRF token in the ``X-CSRF-Token`` header; a user whose password must be changed may only
   reach routes declared with ``password_change_exempt=True``.

The view sees ``flask.g.actor`` (an :class:`Actor`, or None on public routes) and, when the
route declares a JSON ``request_schema``, the validated body in ``flask.g.body``.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flask import Blueprint, current_app, g, request, session

from edgefleet.fleet_server.api.errors import ApiError
from edgefleet.fleet_server.api.validation import json_body
from edgefleet.fleet_server.audit import Actor, ActorKind
from edgefleet.fleet_server.auth.errors import NotFound
from edgefleet.fleet_server.auth.roles import Role, Scope
from edgefleet.fleet_server.services import Services

F = TypeVar("F", bound=Callable[..., Any])
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_HEADER = "X-CSRF-Token"
JSON = "application/json"


@dataclass(frozen=True)
class Operation:
    """What ``route`` recorded about one view, for the OpenAPI document."""

    summary: str
    role: Role | None
    methods: tuple[str, ...]
    responses: Mapping[int, str]
    request_schema: Mapping[str, Any] | None = None
    request_content_type: str = JSON
    params: Sequence[Mapping[str, Any]] = field(default_factory=tuple)
    tags: tuple[str, ...] = ()


def services() -> Services:
    """The current app's Services."""
    result: Services = current_app.extensions["edgefleet"]
    return result


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message)


def _token_actor(svc: Services, header: str) -> Actor:
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise _unauthorized("expected 'Authorization: Bearer <token>'")
    token = svc.tokens.verify(secret.strip())
    if token is None:
        raise _unauthorized("invalid, expired or revoked token")
    role = token.role
    if token.user_id is not None:
        try:
            owner = svc.users.get(token.user_id)
        except NotFound as e:
            raise _unauthorized("invalid, expired or revoked token") from e
        if owner.disabled:
            raise _unauthorized("invalid, expired or revoked token")
        role = Role.lowest(role, owner.role)
    needed = Scope.READ if request.method in SAFE_METHODS else Scope.WRITE
    if needed not in token.scopes:
        raise ApiError(403, "insufficient_scope", f"this token lacks the {needed.value} scope")
    g.auth_via = "token"
    g.user_id = token.user_id
    g.token_id = token.id
    return Actor(ActorKind.TOKEN, token.id, token.name, role.value)


def _session_actor(svc: Services, password_change_exempt: bool) -> Actor | None:
    user_id = session.get("uid")
    if not isinstance(user_id, str):
        return None
    try:
        user = svc.users.get(user_id)
    except NotFound:
        session.clear()
        return None
    if user.disabled or session.get("epoch") != user.session_epoch:
        session.clear()
        return None
    if request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        expected = session.get("csrf", "")
        if not (sent and expected and hmac.compare_digest(str(sent), str(expected))):
            raise ApiError(403, "csrf_failed", f"missing or wrong {CSRF_HEADER} header")
    if user.must_change_password and not password_change_exempt:
        raise ApiError(403, "password_change_required",
                       "change your one-time password first (POST /api/v1/auth/password)")
    g.auth_via = "session"
    g.user_id = user.id
    g.token_id = None
    return Actor(ActorKind.USER, user.id, user.username, user.role.value)


def authenticate(password_change_exempt: bool = False) -> Actor:
    """The actor behind the current request.

    Raises:
        ApiError: 401 when unauthenticated, 403 on CSRF / scope / password-change failures.
    """
    svc = services()
    header = request.headers.get("Authorization")
    if header is not None:
        return _token_actor(svc, header)
    actor = _session_actor(svc, password_change_exempt)
    if actor is None:
        raise _unauthorized("authentication required")
    return actor


def route(
    bp: Blueprint,
    rule: str,
    methods: Sequence[str],
    *,
    role: Role | None,
    summary: str,
    request_schema: Mapping[str, Any] | None = None,
    responses: Mapping[int, str],
    params: Sequence[Mapping[str, Any]] | None = None,
    request_content_type: str = JSON,
    upload: bool = False,
    password_change_exempt: bool = False,
    tags: Sequence[str] = (),
) -> Callable[[F], F]:
    """Register a view on ``bp`` with authentication, a minimum role and OpenAPI data.

    ``role=None`` makes the route public. ``upload=True`` raises the body limit from
    ``max_request_bytes`` to ``max_upload_bytes``. With a JSON ``request_schema`` the body is
    validated before the view runs and is available as ``flask.g.body``.
    """
    method_list = tuple(m.upper() for m in methods)
    op = Operation(
        summary=summary, role=role, methods=method_list, responses=dict(responses),
        request_schema=request_schema, request_content_type=request_content_type,
        params=tuple(params or ()), tags=tuple(tags) or (bp.name,),
    )

    def decorator(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            g.actor = None
            if role is not None:
                actor = authenticate(password_change_exempt)
                if not Role(actor.role).at_least(role):
                    raise ApiError(403, "forbidden", f"requires role {role.value} or higher")
                g.actor = actor
            if upload:
                request.max_content_length = services().config.max_upload_bytes
            if request_schema is not None and request_content_type == JSON:
                g.body = json_body(request_schema)
            return view(*args, **kwargs)

        wrapper.openapi_operation = op  # type: ignore[attr-defined]
        bp.add_url_rule(rule, view_func=wrapper, methods=list(method_list))
        return wrapper  # type: ignore[return-value]

    return decorator


def current_actor() -> Actor:
    """``g.actor`` on an authenticated route. Raises ApiError 401 on public routes."""
    actor: Actor | None = g.get("actor")
    if actor is None:
        raise ApiError(401, "unauthorized", "authentication required")
    return actor
