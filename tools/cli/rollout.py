"""``edgefleet rollout``: create, watch and steer staged rollouts over the server's API."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from edgefleet.tools.cli._api import api_url, get_json, post_json, server_options

_STATUSES = ("running", "paused", "completed", "rolled_back", "aborted")
_FINISHED = ("completed", "rolled_back", "aborted")


def _gate_line(gate: dict[str, Any]) -> str:
    value = "-" if gate.get("value") is None else f"{gate['value']:.4g}"
    limit = "-" if gate.get("threshold") is None else f"{gate['threshold']:.4g}"
    return f"  {gate['name']:<22} {gate['status']:<12} {value:>10} / {limit:<8} {gate['detail']}"


def _show(rollout: dict[str, Any]) -> None:
    click.echo(f"rollout {rollout['id']} {rollout['name']!r}: {rollout['model']} "
               f"{rollout.get('from_version') or '(any)'} -> {rollout['version']} "
               f"[{rollout['status']}]")
    for wave in rollout.get("waves", []):
        states = ", ".join(f"{k} {v}" for k, v in sorted(wave["devices"].items())) or "-"
        click.echo(f"  wave {wave['index']}: {wave['size']} device(s) "
                   f"(cumulative {wave['cumulative']}), {wave['state']}: {states}")
    if rollout.get("gates"):
        click.echo("gates (value / threshold):")
        for gate in rollout["gates"]:
            click.echo(_gate_line(gate))


@click.command("create")
@click.option("--model", required=True, help="Model name in the registry.")
@click.option("--version", "version", required=True,
              help="Version to roll out (stage staging or production, release published).")
@click.option("--from-version", default=None, help="Version the devices run now (default: any).")
@click.option("--group", default=None, help="Target the devices of this group.")
@click.option("--tag", "tags", multiple=True, help="Target devices with this tag (repeatable; "
              "all must match).")
@click.option("--device", "devices", multiple=True, help="Target this device (repeatable).")
@click.option("--percent", type=click.FloatRange(0, 100, min_open=True), default=100.0,
              show_default=True, help="Random share of the matching devices.")
@click.option("--waves", default="0.01,0.1,0.5,1", show_default=True,
              help="Cumulative fractions of the devices after each wave.")
@click.option("--bake", "bake_s", type=click.FloatRange(0), default=600.0, show_default=True,
              help="Seconds each wave bakes before its gates are judged.")
@click.option("--max-extension", "max_extension_s", type=click.FloatRange(0), default=3600.0,
              show_default=True, help="Longest wait for enough data after the bake time.")
@click.option("--on-failure", type=click.Choice(["pause", "rollback"]), default="pause",
              show_default=True, help="What a failed gate does.")
@click.option("--gates", "gates_json", default=None,
              help='Gate thresholds as JSON, e.g. \'{"max_output_psi": 0.1}\'.')
@click.option("--shadow", "shadow_rate", type=click.FloatRange(0, 1, min_open=True),
              default=None, help="Run the candidate in shadow on this share of inputs "
              "on the devices not yet in a wave.")
@click.option("--name", default="", help="A name for the console.")
@server_options
def create_command(*, server_url: str, token: str, gates_json: str | None, waves: str,
                   group: str | None, tags: tuple[str, ...], devices: tuple[str, ...],
                   percent: float, shadow_rate: float | None, **fields: Any) -> None:
    """Start a rollout; prints its id and first wave."""
    try:
        fractions = [float(x) for x in waves.split(",") if x.strip()]
    except ValueError as e:
        raise click.ClickException(f"--waves must be comma-separated numbers: {e}") from e
    target: dict[str, Any] = {"percent": percent}
    if group:
        target["group"] = group
    if tags:
        target["tags"] = list(tags)
    if devices:
        target["devices"] = list(devices)
    body: dict[str, Any] = {k: v for k, v in fields.items() if v not in (None, "")}
    body |= {"target": target, "waves": fractions}
    if gates_json:
        try:
            body["gates"] = json.loads(gates_json)
        except ValueError as e:
            raise click.ClickException(f"--gates is not JSON: {e}") from e
    if shadow_rate is not None:
        body["shadow"] = {"sample_rate": shadow_rate}
    rollout = post_json(api_url(server_url, "rollouts"), token, body)
    click.echo(rollout["id"])
    _show(rollout)


@click.command("list")
@click.option("--status", type=click.Choice(_STATUSES), default=None)
@server_options
def list_command(*, status: str | None, server_url: str, token: str) -> None:
    """List rollouts, newest first."""
    url = api_url(server_url, "rollouts") + (f"?status={status}" if status else "")
    for r in get_json(url, token)["items"]:
        click.echo(f"{r['id']:>5}  {r['status']:<12} {r['model']} {r['version']}  wave "
                   f"{r['wave'] + 1}/{r['wave_count']}  {r['devices']} device(s)  {r['name']}")


@click.command("show")
@click.argument("rollout_id", type=click.IntRange(1))
@click.option("--watch", is_flag=True, help="Refresh every few seconds until it ends.")
@click.option("--decisions", "show_decisions", is_flag=True, help="Print the decision log.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@server_options
def show_command(*, rollout_id: int, watch: bool, show_decisions: bool, as_json: bool,
                 server_url: str, token: str) -> None:
    """Show a rollout: waves, device states, gates beside their thresholds."""
    while True:
        rollout = get_json(api_url(server_url, "rollouts", str(rollout_id)), token)
        if as_json:
            click.echo(json.dumps(rollout, indent=2))
        else:
            _show(rollout)
        if not watch or rollout["status"] in _FINISHED:
            break
        time.sleep(3.0)
    if show_decisions:
        log = get_json(api_url(server_url, "rollouts", str(rollout_id), "decisions")
                       + "?limit=500", token)
        for d in log["items"]:
            click.echo(f"{d['at']}  wave {d['wave']}  {d['action']:<9} {d['actor']}: "
                       f"{d['reason']}")


def _action_command(action: str, help_text: str) -> click.Command:
    @click.command(action, help=help_text)
    @click.argument("rollout_id", type=click.IntRange(1))
    @click.option("--reason", default="", help="Why (kept in the decision and audit logs).")
    @server_options
    def command(*, rollout_id: int, reason: str, server_url: str, token: str) -> None:
        body = {"reason": reason} if reason else {}
        rollout = post_json(api_url(server_url, "rollouts", str(rollout_id), action),
                            token, body)
        _show(rollout)

    return command


def register(cli: click.Group, groups: dict[str, click.Group]) -> None:
    """Attach the ``rollout`` group."""

    @cli.group("rollout")
    def rollout() -> None:
        """Staged rollouts: canary waves gated on install health and model quality."""

    for command in (create_command, list_command, show_command):
        rollout.add_command(command)
    for action, help_text in (
        ("pause", "Pause a running rollout."),
        ("resume", "Resume a paused rollout (the wave's bake time starts over)."),
        ("promote", "Skip the rest of the current wave's bake time."),
        ("abort", "End a rollout; devices keep what they were assigned."),
        ("rollback", "Assign every touched device its previous bundle again."),
    ):
        rollout.add_command(_action_command(action, help_text))
    groups["rollout"] = rollout
