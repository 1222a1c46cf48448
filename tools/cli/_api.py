"""The fleet server's JSON API from the command line: options, URLs, calls.

A thin client on the standard library (urllib). The API token comes from ``--token`` or
``EDGEFLEET_API_TOKEN``; the server from ``--server`` or ``EDGEFLEET_SERVER`` (default
http://127.0.0.1:8080). Errors become one-line ``click.ClickException`` messages.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import click

DEFAULT_SERVER = "http://127.0.0.1:8080"


def server_options(fn: Any) -> Any:
    fn = click.option("--token", envvar="EDGEFLEET_API_TOKEN", required=True,
                      help="API token (env EDGEFLEET_API_TOKEN).")(fn)
    return click.option("--server", "server_url", envvar="EDGEFLEET_SERVER",
                        default=DEFAULT_SERVER, show_default=True,
                        help="Fleet server URL (env EDGEFLEET_SERVER).")(fn)


def api_url(server_url: str, *parts: str) -> str:
    parsed = urllib.parse.urlsplit(server_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise click.ClickException(f"--server must be http(s)://host[:port], got {server_url!r}")
    quoted = "/".join(urllib.parse.quote(p, safe="") for p in parts)
    return f"{server_url.rstrip('/')}/api/v1/{quoted}"


def call(request: urllib.request.Request, timeout_s: float = 600.0) -> dict[str, Any]:
    """Send ``request``; the decoded JSON answer, or a ClickException with the API error."""
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - http(s) URL of the configured fleet server
            body: dict[str, Any] = json.loads(response.read() or b"{}")
            return body
    except urllib.error.HTTPError as e:
        message = e.reason
        try:
            error = json.loads(e.read())["error"]
            message = f"{error['code']}: {error['message']}"
            if error.get("details"):
                message += f" {error['details']}"
        except (ValueError, KeyError, TypeError):
            pass
        raise click.ClickException(f"server answered {e.code}: {message}") from e
    except (urllib.error.URLError, OSError) as e:
        raise click.ClickException(f"cannot reach {request.full_url}: "
                                   f"{getattr(e, 'reason', e)}") from e
    except ValueError as e:
        raise click.ClickException("the server's answer is not JSON") from e


def post_json(url: str, token: str, payload: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 - http(s) URL of the configured fleet server
        url, data=json.dumps(payload).encode(), method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    return call(request)


def get_json(url: str, token: str) -> dict[str, Any]:
    request = urllib.request.Request(  # noqa: S310 - http(s) URL of the configured fleet server
        url, method="GET", headers={"Authorization": f"Bearer {token}"})
    return call(request)
