"""``edgefleet agent update``: run the over-the-air updater of this device."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import click


def _describe(event: dict[str, Any]) -> str | None:
    kind = event.get("type")
    bundle = f" [{event['bundle']}]" if event.get("bundle") else ""
    if kind == "update_state":
        error = f": {event['error']}" if event.get("error") else ""
        return f"{event.get('from')} -> {event.get('to')}{bundle}{error}"
    if kind == "update_resumed":
        return f"resuming an interrupted update in {event.get('state')}{bundle}"
    if kind == "update_error":
        return f"error in {event.get('state')}{bundle}: {event.get('error')}"
    return None


def _echo_event(event: dict[str, Any]) -> None:
    line = _describe(event)
    if line is not None:
        click.echo(line)


@click.command("update")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The enrolled state directory (default: $EDGEFLEET_STATE_DIR, "
                   "/var/lib/edgefleet as root, else ~/.local/state/edgefleet).")
@click.option("--once", is_flag=True, help="Check once, install or roll back, and exit.")
@click.option("--interval", "interval_s", type=click.FloatRange(min=1.0), default=60.0,
              show_default=True, help="Seconds between update checks.")
def update_command(*, state_dir: Path | None, once: bool, interval_s: float) -> None:
    """Install the model the fleet server assigns to this device, verified and atomically.

    Checks the server's signed update repositories every --interval seconds (or once with
    --once), downloads the assigned bundle (resuming interrupted downloads), verifies it,
    warms the new model up and swaps it in, or rolls back. Prints every state change;
    events also go to the server. Ctrl-C or SIGTERM stops after the current step.
    """
    from edgefleet.agent.enroll import default_state_dir
    from edgefleet.agent.update.agent_loop import AgentSetupError, UpdateAgent

    target = state_dir if state_dir is not None else default_state_dir()
    try:
        agent = UpdateAgent.from_state_dir(target, check_interval_s=interval_s,
                                           listeners=[_echo_event])
    except AgentSetupError as e:
        raise click.ClickException(str(e)) from e
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        click.echo(f"stopping ({signal.Signals(signum).name})", err=True)
        stop.set()

    # --once: Ctrl-C interrupts at once (every step is persisted; the next run resumes)
    signals = (signal.SIGTERM,) if once else (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, on_signal) for sig in signals}
    try:
        if once:
            record = agent.run_once()
            click.echo(f"state: {record.state.value}"
                       + (f" (last error: {record.error})" if record.error else ""))
        else:
            click.echo(f"checking for updates every {interval_s:g} s; Ctrl-C stops")
            agent.run_forever(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        agent.close()
        if agent.reporter.pending():
            click.echo(f"{agent.reporter.pending()} events not delivered yet "
                       "(kept; sent on the next run)", err=True)


def register(cli: click.Group, groups: dict[str, click.Group]) -> None:
    """Attach ``agent update``."""
    groups["agent"].add_command(update_command)
