"""The federated round: the running agent daemons train a new model version on their own
labelled feedback, and the fleet server registers it only if it beats the base version.

Each agent's local application labels what it asked about (``POST /v1/predict``, then
``POST /v1/feedback`` with the true labels), and each device sees its own mix of digits
(non-IID: mostly the classes of its own group, ``NODE_CLASS_GROUPS``). The agents'
``[federated]`` table (:func:`edgefleet.tools.demo.fleet.agent_toml`) has them export that
feedback, register their SuperNode keys with the fleet server (device-signed ``POST
/device/fl-node``) and start their SuperNodes; the demo then schedules a job with ``edgefleet
fl run``, follows its rounds, and runs the registered float and int8 artifacts in the agent
runtime (``edgefleet agent predict``) on the server's held-out set.
"""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.tools.demo.core import Demo, DemoError
from edgefleet.tools.demo.fleet import FLEET_GROUP, Agent, Fleet
from edgefleet.tools.modelgen.digits import NODE_CLASS_GROUPS

FL_MODEL = "digits"
FL_BASE_VERSION = "2.0.0"
FL_ROUNDS = 2
EXAMPLES_PER_DEVICE = 300  # labelled digits each device holds (a few hundred)
FEEDBACK_BATCH = 25  # digits per predict call of the labelling application
LAB_EXAMPLES = 60  # the base model's central training set
LAB_CLASSES = (0, 1, 2, 3, 4, 5)  # ... which never saw a 6, 7, 8 or 9
NODES_TIMEOUT_S = 150.0  # SuperLink start + key registration + SuperNode: 45 s seen, loaded
JOB_TIMEOUT_S = 480.0  # two rounds: ~40 s idle, up to 3 min on a loaded 2-core machine
TRAINING_LOAD_PAUSE_S = 1.0  # the load generator's pause while the devices train
_FINAL = ("succeeded", "rejected", "failed", "cancelled")


@dataclass(frozen=True)
class FlData:
    """What the round trains on and is judged by."""

    device_x: list[np.ndarray]  # per agent: its digits (float32 [N, 64])
    device_y: list[np.ndarray]  # ... and their true labels
    holdout: Path  # .npz x, y on the server: the job's held-out set
    holdout_x: Path  # the same x as .npy, for `edgefleet agent predict`
    holdout_y: np.ndarray
    base_model: Path  # the logistic regression to start from (ONNX)
    base_accuracy: float


def federated_data_steps(demo: Demo, fleet: Fleet) -> FlData:
    """Register the base model and let each device's application label its own digits.

    Runs before the rollouts: from then on the agents export that feedback, register their
    SuperNode keys and start their SuperNodes on their own, while the rollouts run.
    """
    demo.step("For federated training later: a base model that can be trained on the devices")
    data = _prepare(demo, len(fleet.agents))
    demo.cli("model", "push", str(data.base_model), "--name", FL_MODEL, "--version",
             FL_BASE_VERSION, "--metadata", str(data.base_model.with_suffix(".json")),
             env=demo.cli_env)

    demo.step("Each device's application labels what it asked about: local, non-IID data "
              "that never leaves the device (the agents join the federation meanwhile)")
    for i, agent in enumerate(fleet.agents):
        x, y, group = data.device_x[i], data.device_y[i], NODE_CLASS_GROUPS[i]
        _label(agent, x, y)
        share = float(np.isin(y, group).mean())
        demo.show(f"{agent.name}: {len(y)} digits labelled through POST /v1/predict + "
                  f"/v1/feedback, {share:.0%} of them {', '.join(map(str, group))}")
    return data


def federated_steps(demo: Demo, fleet: Fleet, data: FlData) -> dict[str, Any]:
    """The federated round on the running agents; returns the finished job."""
    # Training shares the small machine with the devices' traffic: slow it to a trickle.
    fleet.load_pause_s = TRAINING_LOAD_PAUSE_S
    demo.show(f"(the load generator slows down to one batch per agent every "
              f"{TRAINING_LOAD_PAUSE_S:.0f} s while the devices train)")
    demo.step("The agents export their feedback, register their SuperNode keys with the "
              "fleet server and start their SuperNodes")
    nodes = _wait_for_nodes(demo, fleet)
    federation = demo.api("GET", "/fl/federation")
    demo.show(f"the server's SuperLink: {federation.get('superlink')} (TLS, SuperNode "
              f"authentication {'on' if federation.get('supernode_auth') else 'off'})")
    for agent in fleet.agents:
        fed = nodes[agent.name]
        demo.show(f"{agent.name}: SuperNode {fed['state']}, node id {fed['node_id']}, "
                  f"{fed['examples']} labelled examples exported for it")

    demo.step(f"Schedule a federated job on group {FLEET_GROUP}: {FL_ROUNDS} FedAvg rounds, "
              "registered only if it beats the base on the server's held-out set")
    out = demo.cli("fl", "run", "--model", FL_MODEL, "--base-version", FL_BASE_VERSION,
                   "--group", FLEET_GROUP, "--rounds", str(FL_ROUNDS), "--local-epochs", "2",
                   "--lr", "0.5", "--strategy", "fedavg", "--min-nodes",
                   str(len(fleet.agents)), "--holdout", str(data.holdout), env=demo.cli_env)
    job_id = int(out.splitlines()[0])
    job = _watch_job(demo, job_id)
    demo.cli("fl", "show", str(job_id), env=demo.cli_env)
    if job["status"] not in ("succeeded", "rejected"):
        raise DemoError(f"federated job {job_id} ended {job['status']}: "
                        f"{job.get('error') or 'no error given'}")
    result = job.get("result") or {}
    if job["status"] == "rejected":
        demo.show(f"rejected: held-out accuracy {result.get('accuracy')} does not beat the "
                  f"base's {result.get('base_accuracy')}; nothing was registered")
        return job
    _result_steps(demo, job, data)
    return job


def _prepare(demo: Demo, n_devices: int) -> FlData:
    """Non-IID shards for the devices, the server's held-out set, the lab-trained base."""
    from edgefleet.federated.models import create, to_onnx
    from edgefleet.tools.modelgen.digits import non_iid_shards

    if n_devices != len(NODE_CLASS_GROUPS):
        raise DemoError(f"the federated round needs {len(NODE_CLASS_GROUPS)} devices")
    folder = demo.work / "federated"
    folder.mkdir(parents=True, exist_ok=True)
    shards = non_iid_shards(0)
    device_x = [x[:EXAMPLES_PER_DEVICE] for x in shards.node_x]
    device_y = [y[:EXAMPLES_PER_DEVICE] for y in shards.node_y]
    # The lab's examples: from what no device holds, and only of digits 0-5.
    lab_x = np.concatenate([x[EXAMPLES_PER_DEVICE:] for x in shards.node_x])
    lab_y = np.concatenate([y[EXAMPLES_PER_DEVICE:] for y in shards.node_y])
    keep = np.flatnonzero(np.isin(lab_y, LAB_CLASSES))
    pick = np.random.default_rng(1).choice(keep, size=LAB_EXAMPLES, replace=False)
    base = create("logreg", lab_x.shape[1], 10)
    base.fit(lab_x[pick], lab_y[pick], epochs=5, lr=0.5)
    accuracy = float(base.evaluate(shards.x_test, shards.y_test).accuracy)
    base_model = folder / f"digits-{FL_BASE_VERSION}.onnx"
    base_model.write_bytes(to_onnx(base))
    base_model.with_suffix(".json").write_text(json.dumps({
        "description": f"logistic regression trained in the lab on {LAB_EXAMPLES} examples "
                       f"of digits {LAB_CLASSES[0]}-{LAB_CLASSES[-1]}",
        "metrics": {"accuracy": round(accuracy, 4)}, "training_run": "lab-1"}))
    holdout = folder / "holdout.npz"
    np.savez(holdout, x=shards.x_test, y=shards.y_test)
    holdout_x = folder / "holdout_x.npy"
    np.save(holdout_x, shards.x_test)
    demo.show(f"{FL_MODEL} {FL_BASE_VERSION}: {base_model.name}, a logistic regression (small "
              f"enough to train on a device) trained in the lab on {LAB_EXAMPLES} examples of "
              f"digits {LAB_CLASSES[0]}-{LAB_CLASSES[-1]} only: held-out accuracy "
              f"{accuracy:.1%}")
    demo.show(f"held-out set on the server: {holdout} ({len(shards.y_test)} digits no device "
              "holds)")
    return FlData(device_x, device_y, holdout, holdout_x, shards.y_test, base_model, accuracy)


def _label(agent: Agent, x: np.ndarray, y: np.ndarray) -> None:
    """The device's application: predict a batch, then send back its true labels."""
    for start in range(0, len(y), FEEDBACK_BATCH):
        rows, labels = x[start:start + FEEDBACK_BATCH], y[start:start + FEEDBACK_BATCH]
        answer = _post(agent, "/v1/predict",
                       {"model": "digits", "inputs": {"input": rows.tolist()}})
        _post(agent, "/v1/feedback", {"id": answer["id"], "label": labels.tolist()})


def _post(agent: Agent, path: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(  # noqa: S310 - the agent's loopback URL
        f"{agent.url}{path}", method="POST", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - the agent's loopback URL
            return json.loads(response.read())
    except OSError as e:
        raise DemoError(f"{agent.name}: POST {path} failed: {e}") from None


def _health(agent: Agent) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"{agent.url}/v1/health", timeout=10) as response:  # noqa: S310 - the agent's loopback URL
            return dict(json.loads(response.read()))
    except OSError:
        return {}


def _wait_for_nodes(demo: Demo, fleet: Fleet) -> dict[str, dict[str, Any]]:
    """Each agent's ``/v1/health`` ``federated`` once its SuperNode is in (node id known);
    prints each change of an agent's federated state on the way."""
    demo.say("   (watching each agent's GET /v1/health \"federated\")")
    start = time.monotonic()
    last: dict[str, str] = {}
    ready: dict[str, dict[str, Any]] = {}
    while len(ready) < len(fleet.agents):
        for agent in fleet.agents:
            if agent.name in ready:
                continue
            if agent.proc.poll() is not None:
                raise DemoError(f"the agent {agent.name} exited; see {agent.log}")
            fed = _health(agent).get("federated") or {}
            line = f"{fed.get('state')}" + (f" ({fed['reason']})" if fed.get("reason") else "")
            if fed.get("state") == "running" and fed.get("node_id") is not None:
                line = f"running as node {fed['node_id']}"
                ready[agent.name] = fed
            if line != last.get(agent.name):
                demo.show(f"{time.monotonic() - start:5.1f} s  {agent.name}: {line}")
                last[agent.name] = line
        if len(ready) < len(fleet.agents):
            if time.monotonic() - start > NODES_TIMEOUT_S:
                missing = [a for a in fleet.agents if a.name not in ready]
                raise DemoError(
                    f"the SuperNodes of {', '.join(a.name for a in missing)} did not join "
                    f"after {NODES_TIMEOUT_S:.0f} s (last: {last}); see "
                    f"{missing[0].log.parent / 'state' / 'federated' / 'logs'}")
            time.sleep(0.5)
    return ready


def _watch_job(demo: Demo, job_id: int) -> dict[str, Any]:
    """Poll the job until it ends; print its phase changes and each finished round."""
    demo.say(f"   (watching job {job_id}: what `edgefleet fl show {job_id} --watch` follows)")

    def lines(job: dict[str, Any]) -> dict[str, str]:
        phase = f"{job['status']}" + (f"/{job['phase']}" if job.get("phase") else "")
        return {"phase": f"job {job_id}: {phase}",
                **{f"round {r['round']}": _round_line(r)
                   for r in job.get("rounds", []) if r["round"] > 0}}

    return demo.watch(f"/fl/jobs/{job_id}", lines, lambda job: job["status"] in _FINAL,
                      JOB_TIMEOUT_S, f"federated job {job_id}")


def _round_line(r: dict[str, Any]) -> str:
    train = r.get("train_metrics") or {}
    return (f"round {r['round']}/{FL_ROUNDS} {r['status']}: "
            f"{len(r['participating_nodes'])} nodes, {len(r['failed_nodes'])} failed, "
            f"{r['examples']} examples, loss {_fmt(r.get('loss'))}, accuracy "
            f"{_fmt(r.get('accuracy'))} (federated evaluation on the nodes' held-out "
            f"shares), train loss {_fmt(train.get('train-loss'))}, "
            f"{r['duration_s']:.1f} s")


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def _result_steps(demo: Demo, job: dict[str, Any], data: FlData) -> None:
    version = str(job["result_version"])
    result = job.get("result") or {}
    demo.step(f"The registered result: {FL_MODEL} {version} with its lineage, and its int8 "
              "child")
    record = demo.api("GET", f"/models/{FL_MODEL}/versions/{version}")
    lineage = record.get("lineage") or {}
    demo.show(f"{FL_MODEL} {version}: stage {record.get('stage')}, parent "
              f"{record.get('parent')}, accuracy {record['metrics'].get('accuracy'):.3f} "
              f"(base {record['metrics'].get('base_accuracy'):.3f})")
    for key in ("training_run", "federated_round", "base_version", "strategy",
                "participants", "examples", "flower_runs"):
        if key in lineage:
            demo.show(f"  lineage {key}: {lineage[key]}")
    int8 = f"{version}-int8"
    int8_record = demo.api("GET", f"/models/{FL_MODEL}/versions/{int8}", quiet=True)
    demo.show(f"{FL_MODEL} {int8}: parent {int8_record.get('parent')}, quantization "
              f"{int8_record.get('quantization') or lineage.get('quantization') or '-'}, "
              f"accuracy {_fmt(result.get('int8_accuracy'))} (the server's quantization gate)")

    demo.step("Both artifacts run in the agent runtime: download them, predict the held-out "
              "digits")
    folder = demo.work / "federated"
    for v in (FL_BASE_VERSION, version, int8):
        path = folder / f"digits-{v}.downloaded.onnx"
        demo.download(f"/models/{FL_MODEL}/versions/{v}/artifact", path)
        out = json.loads(demo.cli("agent", "predict", "--model", str(path), "--input",
                                  str(data.holdout_x), show=False))
        accuracy = float(np.mean(np.asarray(out["label"]) == data.holdout_y))
        demo.show(f"{FL_MODEL} {v}: held-out accuracy {accuracy:.1%} "
                  f"({len(data.holdout_y)} digits, agent runtime)")
