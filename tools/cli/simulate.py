"""``edgefleet simulate``: thousands of simulated devices on the real MQTT contract.

A thin layer over :mod:`edgefleet.tools.simulate`: parse the options, build the fleet,
print progress to stderr, stop cleanly (every device DISCONNECTs) on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from edgefleet.tools.simulate import FleetStats


def register(cli: click.Group, groups: dict[str, click.Group]) -> None:
    """Attach ``simulate`` at the top level."""
    cli.add_command(simulate_cmd)


def _progress(devices: int) -> Callable[[FleetStats], None]:
    last: list[tuple[float, int]] = []

    def show(stats: FleetStats) -> None:
        rate = 0.0
        if last:
            t0, n0 = last[0]
            if stats.elapsed_s > t0:
                rate = (stats.published - n0) / (stats.elapsed_s - t0)
        last[:] = [(stats.elapsed_s, stats.published)]
        versions = " ".join(f"{v}:{n}" for v, n in stats.versions.items())
        line = (f"[{stats.elapsed_s:7.1f} s] connected {stats.connected}/{devices}  "
                f"versions {versions}  installing {stats.installing}  "
                f"installed {stats.installs}  failed {stats.failures}  "
                f"sent {stats.published} ({rate:,.0f} msg/s)  acked {stats.acked}")
        if stats.errors:
            line += f"  errors: {'; '.join(stats.errors)}"
        click.echo(line, err=True)

    return show


@click.command("simulate")
@click.option("--broker", "broker_url", required=True, metavar="mqtt://HOST:PORT",
              help="The MQTT broker the fleet server listens to.")
@click.option("--devices", type=click.IntRange(min=1), required=True,
              help="How many devices (one MQTT connection each).")
@click.option("--prefix", default="sim", show_default=True,
              help="Device ids are PREFIX-00000, PREFIX-00001, ...")
@click.option("--first", type=click.IntRange(min=0), default=0, show_default=True,
              help="Number of the first device (to split a fleet over processes).")
@click.option("--model", required=True, help="The model every device serves.")
@click.option("--version", "version", required=True, help="The version served at start.")
@click.option("--password-file", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="JSON object {device_id: broker password}.")
@click.option("--ids-from-passwords", is_flag=True,
              help="The device ids are the keys of --password-file (in file order: ids the "
              "server assigned at enrollment) instead of PREFIX-NNNNN.")
@click.option("--password", default=None,
              help="One broker password for every device (else none).")
@click.option("--heartbeat-s", type=click.FloatRange(min=0.1), default=30.0,
              show_default=True, help="Seconds between heartbeats.")
@click.option("--window-s", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="Seconds per drift window.")
@click.option("--install-delay-s", type=click.FloatRange(min=0.0), default=1.0,
              show_default=True, help="From the desired hint to committed (or rollback).")
@click.option("--rate", "predictions_per_s", type=click.FloatRange(min=0.0, min_open=True),
              default=2.0, show_default=True, help="Simulated predictions per second per "
              "device (counters and rows per drift window).")
@click.option("--reference", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Drift reference profile (JSON; a bundle manifest or registry version "
              "holding reference_profile works too). Default: the simulator's synthetic "
              "profile. The server accepts drift windows only for its own profile.")
@click.option("--no-drift", is_flag=True, help="Send no drift windows.")
@click.option("--bad-version", multiple=True, metavar="V[:shift=S]",
              help="Outputs of version V shifted by S reference std (default 2.0). Repeatable.")
@click.option("--fail-version", multiple=True, metavar="V",
              help="Installing V fails at warm-up; the device rolls back. Repeatable.")
@click.option("--latency-factor", multiple=True, metavar="V:F",
              help="Latency of version V multiplied by F. Repeatable.")
@click.option("--qos", type=click.Choice(["0", "1"]), default="1", show_default=True,
              help="QoS of every publish (the agent uses 1).")
@click.option("--connect-batch", type=click.IntRange(min=1), default=200, show_default=True,
              help="Connection attempts outstanding at once.")
@click.option("--duration-s", type=click.FloatRange(min=0.0, min_open=True), default=None,
              help="Stop after this long (default: until Ctrl-C or SIGTERM).")
@click.option("--progress-s", type=click.FloatRange(min=0.1), default=5.0,
              show_default=True, help="Seconds between progress lines on stderr.")
def simulate_cmd(**options: Any) -> None:
    """Simulate a fleet: N devices, one MQTT connection each, all in this process.

    Each device connects (client id = username = device id, a retained `status` will),
    sends `birth`, a retained `status online`, heartbeats, drift windows of the version
    it serves, and follows `desired` hints through the update states to `committed` (or
    a rollback for --fail-version). Every connection sits on one `selectors` selector,
    driven by the project's own MQTT 3.1.1 codec: no thread per device. Ctrl-C or
    SIGTERM disconnects every device cleanly.
    """
    from edgefleet.tools.simulate import (
        LIBRARY,
        DeviceConfig,
        Fleet,
        FleetConfig,
        SimulateError,
        WindowSource,
        default_reference,
    )
    from edgefleet.tools.simulate.fleet import raise_nofile_limit
    from edgefleet.tools.simulate.spec import (
        load_passwords,
        parse_broker_url,
        parse_faults,
        read_reference,
    )

    o = options
    try:
        host, port = parse_broker_url(o["broker_url"])
        faults = parse_faults(o["bad_version"], o["fail_version"], o["latency_factor"])
        passwords = load_passwords(o["password_file"]) if o["password_file"] else None
        if o["ids_from_passwords"] and passwords is None:
            raise click.UsageError("--ids-from-passwords needs --password-file")
        ids = tuple(passwords) if o["ids_from_passwords"] and passwords else ()
        device = DeviceConfig(
            model=o["model"], version=o["version"], heartbeat_s=o["heartbeat_s"],
            window_s=o["window_s"], install_delay_s=o["install_delay_s"],
            predictions_per_s=o["predictions_per_s"], faults=faults, qos=int(o["qos"]))
        windows = None
        if not o["no_drift"]:
            reference = (read_reference(o["reference"]) if o["reference"]
                         else default_reference())
            windows = WindowSource(reference, lambda v: device.fault(v).output_shift,
                                   rows=max(1, round(o["predictions_per_s"] * o["window_s"])))
        limit = raise_nofile_limit(o["devices"] + 1)
        fleet = Fleet(FleetConfig(host, port, o["devices"], prefix=o["prefix"],
                                  first=o["first"], password=o["password"],
                                  passwords=passwords, ids=ids, connect_batch=o["connect_batch"]),
                      device, windows)
    except SimulateError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"simulating {o['devices']} devices ({fleet.devices[0].device_id}...) on "
               f"{o['devices']} MQTT connections to {host}:{port} in one process with "
               f"{LIBRARY}; RLIMIT_NOFILE {limit}", err=True)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        fleet.stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    started = time.monotonic()
    try:
        stats = fleet.run(o["duration_s"], progress=_progress(o["devices"]),
                          progress_every_s=o["progress_s"])
    except SimulateError as e:
        raise click.ClickException(str(e)) from None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    elapsed = time.monotonic() - started
    versions = ", ".join(f"{v}: {n}" for v, n in stats.versions.items())
    click.echo(f"{stats.devices} devices, {stats.connects} connects, {stats.drops} drops; "
               f"sent {stats.published} messages in {elapsed:.1f} s "
               f"({stats.published / elapsed if elapsed else 0:,.0f} msg/s), "
               f"{stats.acked} acked; installs {stats.installs}, failed installs "
               f"{stats.failures}; versions {versions}")
    sys.stdout.flush()
