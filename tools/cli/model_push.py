"""``edgefleet model push / approve / promote``: the model registry over its HTTP API.

A thin client on the standard library (urllib): uploads stream the file as
multipart/form-data without reading it into memory. The API token comes from
``--token`` or ``EDGEFLEET_API_TOKEN``; the server from ``--server`` or
``EDGEFLEET_SERVER`` (default http://127.0.0.1:8080).
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from edgefleet.tools.cli._api import api_url, call, post_json, server_options

_CHUNK = 1 << 20
_STAGES = ("draft", "staging", "production", "archived")


def _multipart(fields: dict[str, str], file: Path) -> tuple[str, int, Iterator[bytes]]:
    """(content type, length, body chunks) of a multipart upload streaming ``file``."""
    boundary = "edgefleet-" + secrets.token_hex(16)
    head = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    )
    safe_name = file.name.replace('"', "_")
    head += (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
             f'filename="{safe_name}"\r\nContent-Type: application/octet-stream\r\n\r\n').encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    length = len(head) + file.stat().st_size + len(tail)

    def chunks() -> Iterator[bytes]:
        yield head
        with file.open("rb") as f:
            while chunk := f.read(_CHUNK):
                yield chunk
        yield tail

    return f"multipart/form-data; boundary={boundary}", length, chunks()


@click.command("push")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Model name (letters, digits, . _ -).")
@click.option("--version", "version", required=True, help="New version string (immutable).")
@click.option("--metadata", "metadata_file", type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="JSON file: description, metrics, reference_profile, "
              "parent, data_digest, training_run, federated_round, code_version, quantization.")
@click.option("--parent", default=None, help="Parent version ('1.0' or 'other-model@1.0').")
@server_options
def push_command(*, file: Path, name: str, version: str, metadata_file: Path | None,
                 parent: str | None, server_url: str, token: str) -> None:
    """Upload a model file as a new version (stage draft); prints NAME@VERSION."""
    metadata: dict[str, Any] = {}
    if metadata_file is not None:
        try:
            metadata = json.loads(metadata_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise click.ClickException(f"cannot read {metadata_file}: {e}") from e
        if not isinstance(metadata, dict):
            raise click.ClickException(f"{metadata_file} must hold a JSON object")
    if parent:
        metadata["parent"] = parent
    content_type, length, body = _multipart(
        {"version": version, "metadata": json.dumps(metadata)}, file)
    request = urllib.request.Request(  # noqa: S310 - http(s) URL of the configured fleet server
        api_url(server_url, "models", name, "versions"), data=body, method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": content_type,
                 "Content-Length": str(length)})
    record = call(request)
    click.echo(f"{record['model']}@{record['version']}")
    click.echo(f"id {record['id']}, {record['framework']}, {record['digest']}, "
               f"{record['size_bytes']} bytes, stage {record['stage']}", err=True)


@click.command("approve")
@click.argument("name")
@click.argument("version")
@click.option("--reason", required=True, help="Why this version may go to production.")
@server_options
def approve_command(*, name: str, version: str, reason: str, server_url: str, token: str) -> None:
    """Approve a staging version for production (admin, or an operator other than the uploader)."""
    record = post_json(api_url(server_url, "models", name, "versions", version, "approve"),
                        token, {"reason": reason})
    click.echo(f"{record['model']}@{record['version']} approved by "
               f"{record['approved_by_name']} at {record['approved_at']}")


@click.command("promote")
@click.argument("name")
@click.argument("version")
@click.option("--to", "stage", type=click.Choice(_STAGES), required=True,
              help="Target stage (production needs an approval first).")
@click.option("--reason", default="", help="Why (kept in the audit log).")
@server_options
def promote_command(*, name: str, version: str, stage: str, reason: str, server_url: str,
                    token: str) -> None:
    """Move a model version to another stage (draft, staging, production, archived)."""
    record = post_json(api_url(server_url, "models", name, "versions", version, "stage"),
                        token, {"stage": stage, "reason": reason})
    click.echo(f"{record['model']}@{record['version']} is now {record['stage']}")


def register(cli: click.Group, groups: dict[str, click.Group]) -> None:
    """Attach ``model push``, ``model approve`` and ``model promote``."""
    for command in (push_command, approve_command, promote_command):
        groups["model"].add_command(command)
