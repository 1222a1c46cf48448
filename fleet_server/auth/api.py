"""The auth blueprint: console sessions, API tokens and user administration.

Sessions: ``POST /auth/login`` sets a signed, HttpOnly, SameSite=Strict cookie (Secure
unless ``session_cookie_secure = false``) and returns the CSRF token that every
state-changing session request must echo in ``X-CSRF-Token``. ``POST /auth/logout`` ends
every console session of the user (sessions are stateless signed cookies; an epoch
counter in the user row invalidates them).

Tokens: any user may create tokens for themself up to their own role, from a console
session only (a token cannot mint tokens); admins list and revoke everyone's, others only
their own (an owner-less token owns none). The secret is in the creation response only.
"""

from __future__ import annotations

import math
import secrets
from typing import Any

from flask import Blueprint, g, request, session

from edgefleet.fleet_server.api import (
    PAGINATION_PARAMS,
    ApiError,
    Role,
    Scope,
    Services,
    current_actor,
    page_request,
    paginate,
    query_filter,
    route,
)
from edgefleet.fleet_server.audit import Actor, ActorKind
from edgefleet.fleet_server.auth.errors import (
    AuthError,
    Conflict,
    Forbidden,
    InvalidCredentials,
    NotFound,
)
from edgefleet.fleet_server.auth.passwords import MAX_PASSWORD_LENGTH, WeakPasswordError
from edgefleet.fleet_server.auth.throttle import LoginThrottle
from edgefleet.fleet_server.auth.tokens import ApiToken
from edgefleet.fleet_server.auth.users import User

USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
MAX_TOKEN_TTL_S = 10 * 365 * 24 * 3600

_ROLES = [r.value for r in Role]
_SCOPES = [s.value for s in Scope]

LOGIN_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["username", "password"],
    "properties": {
        "username": {"type": "string", "minLength": 1, "maxLength": 64},
        "password": {"type": "string", "minLength": 1, "maxLength": MAX_PASSWORD_LENGTH},
    },
}
PASSWORD_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["old_password", "new_password"],
    "properties": {
        "old_password": {"type": "string", "minLength": 1, "maxLength": MAX_PASSWORD_LENGTH},
        "new_password": {"type": "string", "minLength": 1, "maxLength": MAX_PASSWORD_LENGTH},
    },
}
TOKEN_CREATE_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["name"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 100},
        "role": {"type": "string", "enum": _ROLES},
        "scopes": {"type": "array", "minItems": 1, "maxItems": 2,
                   "items": {"type": "string", "enum": _SCOPES}},
        "ttl_s": {"type": "integer", "minimum": 60, "maximum": MAX_TOKEN_TTL_S},
    },
}
USER_CREATE_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["username", "role"],
    "properties": {
        "username": {"type": "string", "pattern": USERNAME_PATTERN, "maxLength": 64},
        "role": {"type": "string", "enum": _ROLES},
    },
}
USER_UPDATE_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "minProperties": 1,
    "properties": {
        "role": {"type": "string", "enum": _ROLES},
        "disabled": {"type": "boolean"},
    },
}


def _api_error(e: AuthError | WeakPasswordError) -> ApiError:
    """Translate a service error into its HTTP form."""
    if isinstance(e, NotFound):
        return ApiError(404, "not_found", str(e))
    if isinstance(e, Conflict):
        return ApiError(409, "conflict", str(e))
    if isinstance(e, Forbidden):
        return ApiError(403, "forbidden", str(e))
    if isinstance(e, InvalidCredentials):
        return ApiError(401, "invalid_credentials", str(e))
    return ApiError(400, "weak_password", str(e))


def _start_session(user: User) -> str:
    """Replace the session (no fixation) with one for ``user``; returns the CSRF token."""
    session.clear()
    csrf = secrets.token_urlsafe(32)
    session.permanent = True
    session.update({"uid": user.id, "epoch": user.session_epoch, "csrf": csrf})
    return csrf


def _caller_user_id(actor: Actor) -> str | None:
    """The user behind the request: the session's user or the token's owner."""
    if actor.kind is ActorKind.USER:
        return actor.id
    user_id: str | None = g.get("user_id")
    return user_id


def create_blueprint(services: Services) -> Blueprint:
    """The auth routes bound to ``services``."""
    bp = Blueprint("auth", __name__)
    users, tokens = services.users, services.tokens
    config = services.config
    throttle = LoginThrottle(config.login_max_failures, config.login_window_s,
                             max_failures_per_ip=config.login_max_failures_per_ip)

    # -- sessions ------------------------------------------------------------------

    @route(bp, "/auth/login", ["POST"], role=None, summary="Log in to the console",
           request_schema=LOGIN_SCHEMA, tags=["auth"],
           responses={200: "Logged in; the body carries the CSRF token",
                      401: "Invalid username or password",
                      429: "Too many failed logins from this client (for this username, "
                           "or in total); retry later"})
    def login() -> Any:
        body = g.body
        client = request.remote_addr
        wait_s = throttle.retry_after_s(client, body["username"])
        if wait_s > 0:
            raise ApiError(429, "too_many_requests",
                           f"too many failed logins; retry in {math.ceil(wait_s)} s")
        try:
            user = users.authenticate(body["username"], body["password"])
        except InvalidCredentials as e:
            throttle.failure(client, body["username"])
            raise _api_error(e) from None
        throttle.success(client, body["username"])
        csrf = _start_session(user)
        return {"user": user.to_json(), "csrf_token": csrf}

    @route(bp, "/auth/logout", ["POST"], role=Role.VIEWER, summary="End every console session",
           password_change_exempt=True, tags=["auth"],
           responses={204: "Logged out"})
    def logout() -> Any:
        user_id = _caller_user_id(current_actor())
        if g.get("auth_via") == "session" and user_id is not None:
            users.end_sessions(current_actor(), user_id)
        session.clear()
        return "", 204

    @route(bp, "/auth/password", ["POST"], role=Role.VIEWER, summary="Change your password",
           request_schema=PASSWORD_SCHEMA, password_change_exempt=True, tags=["auth"],
           responses={200: "Changed; other sessions ended, this one renewed",
                      401: "Current password wrong", 409: "Only users have passwords"})
    def change_password() -> Any:
        actor = current_actor()
        user_id = _caller_user_id(actor)
        if user_id is None:
            raise ApiError(409, "conflict", "this token has no user")
        try:
            user = users.change_password(actor, user_id, g.body["old_password"],
                                         g.body["new_password"])
        except (AuthError, WeakPasswordError) as e:
            raise _api_error(e) from None
        result: dict[str, Any] = {"user": user.to_json()}
        if g.get("auth_via") == "session":
            result["csrf_token"] = _start_session(user)
        return result

    @route(bp, "/auth/whoami", ["GET"], role=Role.VIEWER, summary="Who is calling",
           password_change_exempt=True, tags=["auth"],
           responses={200: "The caller, its role and (for sessions) the CSRF token"})
    def whoami() -> Any:
        actor = current_actor()
        user_id = _caller_user_id(actor)
        result: dict[str, Any] = {
            "actor": {"kind": actor.kind.value, "id": actor.id, "name": actor.name,
                      "role": actor.role},
            "auth": g.get("auth_via"),
            "user": users.get(user_id).to_json() if user_id else None,
        }
        if g.get("auth_via") == "session":
            result["csrf_token"] = session.get("csrf")
        return result

    # -- API tokens -----------------------------------------------------------------

    def _visible_token(token_id: str) -> ApiToken:
        actor = current_actor()
        try:
            token = tokens.get(token_id)
        except NotFound as e:
            raise _api_error(e) from None
        if actor.role != Role.ADMIN:
            # An owner-less caller owns nothing (owner-less tokens are not "its" tokens).
            caller = _caller_user_id(actor)
            if caller is None or token.user_id != caller:
                raise ApiError(404, "not_found", f"token {token_id} not found")
        return token

    @route(bp, "/tokens", ["GET"], role=Role.VIEWER, summary="List API tokens",
           params=[*PAGINATION_PARAMS,
                   {"name": "user_id", "in": "query", "required": False,
                    "schema": {"type": "string", "maxLength": 64},
                    "description": "Admins only: tokens of this user"}],
           tags=["tokens"], responses={200: "Your tokens (admins: everyone's)"})
    def list_tokens() -> Any:
        actor = current_actor()
        page = page_request()
        user_id = query_filter("user_id")
        if actor.role != Role.ADMIN:
            user_id = _caller_user_id(actor) or ""
        items, total = tokens.list(user_id=user_id, limit=page.limit, offset=page.offset)
        return paginate([t.to_json() for t in items], total, page)

    @route(bp, "/tokens", ["POST"], role=Role.VIEWER, summary="Create an API token",
           request_schema=TOKEN_CREATE_SCHEMA, tags=["tokens"],
           responses={201: "Created; the secret is shown only in this response",
                      403: "Role too high, or the caller is an API token (use a console "
                           "session or `edgefleet server token create`)"})
    def create_token() -> Any:
        actor = current_actor()
        if g.get("auth_via") != "session":
            # A token must not mint tokens: the child could outlive the parent's expiry
            # and revocation (and escape its scopes), turning one leak into a permanent one.
            raise ApiError(403, "forbidden",
                           "API tokens cannot create tokens; log in to the console, or use "
                           "`edgefleet server token create` on the server")
        body = g.body
        own_role = Role(actor.role)
        role = Role(body.get("role", own_role.value))
        try:
            token, secret = tokens.create(
                actor, name=body["name"], role=role, user_id=_caller_user_id(actor),
                owner_role=own_role,
                scopes=[Scope(s) for s in body.get("scopes", _SCOPES)],
                ttl_s=body.get("ttl_s", services.config.api_token_ttl_s),
            )
        except AuthError as e:
            raise _api_error(e) from None
        return {"token": token.to_json(), "secret": secret}, 201

    @route(bp, "/tokens/<token_id>", ["GET"], role=Role.VIEWER, summary="Get an API token",
           tags=["tokens"], responses={200: "The token (never its secret)"})
    def get_token(token_id: str) -> Any:
        return _visible_token(token_id).to_json()

    @route(bp, "/tokens/<token_id>", ["DELETE"], role=Role.VIEWER,
           summary="Revoke an API token", tags=["tokens"],
           responses={200: "Revoked (idempotent)"})
    def revoke_token(token_id: str) -> Any:
        _visible_token(token_id)
        return tokens.revoke(current_actor(), token_id).to_json()

    # -- users ------------------------------------------------------------------------

    @route(bp, "/users", ["GET"], role=Role.ADMIN, summary="List users",
           params=[*PAGINATION_PARAMS,
                   {"name": "role", "in": "query", "required": False,
                    "schema": {"type": "string", "enum": _ROLES}}],
           tags=["users"], responses={200: "A page of users"})
    def list_users() -> Any:
        page = page_request()
        role = query_filter("role", _ROLES)
        items, total = users.list(role=Role(role) if role else None,
                                  limit=page.limit, offset=page.offset)
        return paginate([u.to_json() for u in items], total, page)

    @route(bp, "/users", ["POST"], role=Role.ADMIN, summary="Create a user",
           request_schema=USER_CREATE_SCHEMA, tags=["users"],
           responses={201: "Created; the one-time password is shown only here",
                      409: "Username taken"})
    def create_user() -> Any:
        try:
            user, password = users.create(current_actor(), g.body["username"],
                                          Role(g.body["role"]))
        except AuthError as e:
            raise _api_error(e) from None
        return {"user": user.to_json(), "one_time_password": password}, 201

    @route(bp, "/users/<user_id>", ["GET"], role=Role.ADMIN, summary="Get a user",
           tags=["users"], responses={200: "The user"})
    def get_user(user_id: str) -> Any:
        try:
            return users.get(user_id).to_json()
        except AuthError as e:
            raise _api_error(e) from None

    @route(bp, "/users/<user_id>", ["PATCH"], role=Role.ADMIN,
           summary="Change a user's role or disable / enable it",
           request_schema=USER_UPDATE_SCHEMA, tags=["users"],
           responses={200: "Updated; the user's sessions ended",
                      409: "Would leave no enabled admin"})
    def update_user(user_id: str) -> Any:
        body = g.body
        try:
            user = users.update(current_actor(), user_id,
                                role=Role(body["role"]) if "role" in body else None,
                                disabled=body.get("disabled"))
        except AuthError as e:
            raise _api_error(e) from None
        return user.to_json()

    return bp


__all__ = ["create_blueprint"]
