"""``edgefleet fl``: schedule and follow federated training jobs over the server's API."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from edgefleet.tools.cli._api import api_url, get_json, post_json, server_options

_STRATEGIES = ("fedavg", "fedprox", "fedadam", "trimmed", "krum")
_STATUSES = ("queued", "running", "succeeded", "rejected", "failed", "cancelled")
_FINAL = ("succeeded", "rejected", "failed", "cancelled")


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _show(job: dict[str, Any]) -> None:
    spec = job.get("spec", {})
    click.echo(f"job {job['id']}: {job['model']}@{job['base_version']} "
               f"[{job['status']}{'/' + job['phase'] if job.get('phase') else ''}] "
               f"{spec.get('strategy', '?')}, {spec.get('rounds', '?')} round(s), "
               f"{len(job.get('cohort', []))} device(s), attempt(s) {job['attempts']}, "
               f"Flower run(s) {job.get('run_ids', [])}")
    for r in job.get("rounds", []):
        if r["round"] == 0:
            continue
        train = r.get("train_metrics", {})
        click.echo(f"  round {r['round']:>3} ({r['status']}): {len(r['participating_nodes'])} "
                   f"node(s), {len(r['failed_nodes'])} failed, {r['examples']} examples, "
                   f"loss {_fmt(r['loss'])}, accuracy {_fmt(r['accuracy'])}, node hold-out "
                   f"accuracy {_fmt(train.get('holdout-accuracy'))}, "
                   f"{r['bytes_sent'] + r['bytes_received']} bytes, {r['duration_s']:.1f} s")
    result = job.get("result") or {}
    if result:
        click.echo(f"  held-out accuracy: base {_fmt(result.get('base_accuracy'))} -> "
                   f"{_fmt(result.get('accuracy'))} (int8 {_fmt(result.get('int8_accuracy'))})")
        click.echo(f"  {result.get('decision', '')}")
        canary = result.get("canary")
        if isinstance(canary, dict):
            click.echo(f"  canary: rollout {canary.get('rollout_id')} of "
                       f"{job['model']}@{canary.get('version')}" if canary.get("created")
                       else f"  {canary.get('reason', 'canary not created')}")
    if job.get("result_version"):
        click.echo(f"  registered {job['model']}@{job['result_version']}")
    if job.get("error"):
        click.echo(f"  error: {job['error']}")


@click.command("run")
@click.option("--model", required=True, help="Model name in the registry.")
@click.option("--base-version", required=True,
              help="Registered ONNX version to start from (built by edgefleet's trainable "
                   "models).")
@click.option("--group", default=None, help="Train on the devices of this group.")
@click.option("--tag", "tags", multiple=True, help="Devices with this tag (repeatable; all "
              "must match).")
@click.option("--device", "devices", multiple=True, help="Train on this device (repeatable).")
@click.option("--rounds", type=click.IntRange(1), default=3, show_default=True)
@click.option("--local-epochs", type=click.IntRange(1), default=1, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=0.1, show_default=True,
              help="Learning rate on the devices.")
@click.option("--strategy", type=click.Choice(_STRATEGIES), default="fedavg",
              show_default=True, help="trimmed and krum are the robust aggregations.")
@click.option("--dp-clip", type=click.FloatRange(0, min_open=True), default=None,
              help="Central DP: clip each update to this L2 norm.")
@click.option("--dp-noise", type=click.FloatRange(0), default=None,
              help="Central DP: Gaussian noise multiplier (needs --dp-clip).")
@click.option("--holdout", required=True,
              help="Absolute path ON THE SERVER of an .npz with x and y (held-out set).")
@click.option("--margin", type=float, default=0.0, show_default=True,
              help="Accept when accuracy >= base accuracy + margin (may be negative).")
@click.option("--min-nodes", type=click.IntRange(1), default=2, show_default=True)
@click.option("--every", "every_s", type=click.FloatRange(60), default=None,
              help="Re-run the job this many seconds after it ended.")
@click.option("--new-version", default=None, help="Version to register (default "
              "<base>-fl<job id>).")
@click.option("--canary", "canary_json", default=None, metavar="JSON",
              help='When the result is accepted, roll its int8 version out: the fields of a '
                   'rollout create request except model/version, e.g. \'{"target": {"group": '
                   '"lab", "percent": 20}, "waves": [0.1, 1], "on_failure": "rollback"}\' '
                   "(docs/fljobs.md).")
@click.option("--wait", is_flag=True, help="Follow the job until it ends.")
@server_options
def run_command(*, group: str | None, tags: tuple[str, ...], devices: tuple[str, ...],
                dp_clip: float | None, dp_noise: float | None, canary_json: str | None,
                wait: bool, server_url: str, token: str, **fields: Any) -> None:
    """Schedule a federated training job; prints its id."""
    if (dp_noise is not None) and dp_clip is None:
        raise click.ClickException("--dp-noise needs --dp-clip")
    canary = None
    if canary_json is not None:
        try:
            canary = json.loads(canary_json)
        except ValueError as e:
            raise click.ClickException(f"--canary is not JSON: {e}") from e
        if not isinstance(canary, dict):
            raise click.ClickException("--canary must be a JSON object")
    cohort: dict[str, Any] = {}
    if group:
        cohort["group"] = group
    if tags:
        cohort["tags"] = list(tags)
    if devices:
        cohort["devices"] = list(devices)
    if not cohort:
        raise click.ClickException("name the cohort: --group, --tag or --device")
    body: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
    body["cohort"] = cohort
    if dp_clip is not None:
        body["dp"] = {"clipping_norm": dp_clip, "noise_multiplier": dp_noise or 0.0}
    if canary is not None:
        body["canary"] = canary
    job = post_json(api_url(server_url, "fl", "jobs"), token, body)
    click.echo(job["id"])
    if wait:
        _show(_follow(server_url, token, int(job["id"])))


def _follow(server_url: str, token: str, job_id: int) -> dict[str, Any]:
    while True:
        job = get_json(api_url(server_url, "fl", "jobs", str(job_id)), token)
        if job["status"] in _FINAL:
            return job
        click.echo(f"job {job_id}: {job['status']}/{job['phase']}, "
                   f"{max(len(job.get('rounds', [])) - 1, 0)} round(s) done", err=True)
        time.sleep(3.0)


@click.command("show")
@click.argument("job_id", type=click.IntRange(1))
@click.option("--watch", is_flag=True, help="Refresh every few seconds until it ends.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@server_options
def show_command(*, job_id: int, watch: bool, as_json: bool, server_url: str,
                 token: str) -> None:
    """Show a federated job: per-round metrics, accuracies, the registered version."""
    if watch:
        job = _follow(server_url, token, job_id)
    else:
        job = get_json(api_url(server_url, "fl", "jobs", str(job_id)), token)
    if as_json:
        click.echo(json.dumps(job, indent=2))
    else:
        _show(job)


@click.command("list")
@click.option("--status", type=click.Choice(_STATUSES), default=None)
@click.option("--model", default=None, help="Only jobs of this model.")
@server_options
def list_command(*, status: str | None, model: str | None, server_url: str,
                 token: str) -> None:
    """List federated jobs, newest first."""
    query = "&".join(f"{k}={v}" for k, v in (("status", status), ("model", model)) if v)
    url = api_url(server_url, "fl", "jobs") + (f"?{query}" if query else "")
    for j in get_json(url, token)["items"]:
        click.echo(f"{j['id']:>5}  {j['status']:<10} {j['model']}@{j['base_version']} -> "
                   f"{j.get('result_version') or '-'}  {j['spec'].get('strategy')}, "
                   f"{j['spec'].get('rounds')} round(s), {len(j['cohort'])} device(s)")


@click.command("cancel")
@click.argument("job_id", type=click.IntRange(1))
@server_options
def cancel_command(*, job_id: int, server_url: str, token: str) -> None:
    """Cancel a queued or running federated job (its Flower run is stopped)."""
    _show(post_json(api_url(server_url, "fl", "jobs", str(job_id), "cancel"), token, {}))


def register(cli: click.Group, groups: dict[str, click.Group]) -> None:
    """Attach the ``fl`` group."""

    @cli.group("fl")
    def fl() -> None:
        """Federated training jobs on device cohorts (the server's Flower SuperLink)."""

    for command in (run_command, show_command, list_command, cancel_command):
        fl.add_command(command)
    groups["fl"] = fl
