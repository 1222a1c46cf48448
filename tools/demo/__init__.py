"""The edgefleet demo (``edgefleet demo``): one narrated run through everything that exists today.

It runs the real ``edgefleet`` commands a user would type (echoed as ``$ edgefleet ...``)
and the real JSON API calls, on real parts: a digits classifier trained with
scikit-learn, onnxruntime, a fleet server process with its embedded MQTT broker, and a
device that enrolls over HTTP and connects to the broker with its own credentials, then
a small fleet of ``edgefleet agent run`` daemons serving a load generator, sending their
telemetry through the embedded broker and taking two staged rollouts: one that completes
and one that the output-drift gate stops at the canary and rolls back; then those agents
train a new model version in a federated round on their own labelled feedback (real
Flower SuperLink and SuperNodes), which the server registers with its lineage.
Nothing is mocked; a failing step stops the demo with the command's own error, and every
process the demo started is stopped (SIGTERM) before it returns.
"""


from __future__ import annotations

import tempfile
from pathlib import Path

from edgefleet.tools.demo.core import Demo, DemoError, DemoOptions, Say, free_port
from edgefleet.tools.demo.federated import federated_data_steps, federated_steps
from edgefleet.tools.demo.fleet import agent_fleet, fleet_release_steps
from edgefleet.tools.demo.models import model_steps
from edgefleet.tools.demo.rollouts import rollout_steps
from edgefleet.tools.demo.server import audit_step, fleet_server, fleet_steps, wait_for_interrupt

__all__ = ["DemoError", "DemoOptions", "free_port", "run_demo"]


def run_demo(options: DemoOptions, say: Say) -> Path:
    """Run the whole demo, narrating through ``say``; return the work folder.

    Raises:
        DemoError: a step failed (its command's error is in the message).
    """
    work = options.workdir or Path(tempfile.mkdtemp(prefix="edgefleet-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    demo = Demo(work, say)
    say(f"edgefleet demo: working in {work}")
    models = model_steps(demo)
    with fleet_server(demo, options) as server_dir:
        fleet_steps(demo, server_dir, models)
        releases = fleet_release_steps(demo, server_dir, models)
        with agent_fleet(demo, releases) as fleet:
            fl_data = federated_data_steps(demo, fleet)
            rollout_steps(demo, fleet, releases)
            federated_steps(demo, fleet, fl_data)
            audit_step(demo)
            if options.keep_running:
                say(f"\nThe fleet server keeps running at {demo.api_url} (API tokens in "
                    f"{work}/api-token-*), and so do the agents at "
                    f"{', '.join(a.url for a in fleet.agents)}. Ctrl-C stops them all.")
                wait_for_interrupt()
    say("\nDemo finished: every step above ran on real parts.")
    return work
