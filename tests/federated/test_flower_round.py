"""Real Flower rounds: SuperLink + 3 SuperNodes (TLS, node auth), the edgefleet apps.

No simulation engine: the runs go through the SuperLink's Control API, the ServerApp and
ClientApps run in the processes Flower's SuperExec starts for them, and the ClientApps
train on per-node non-IID shards of sklearn digits.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import (
    ConfigRecord,
    Context,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)
from flwr.app.message import make_message

from edgefleet.federated.flower.appdir import pyproject_text
from edgefleet.federated.flower.apps import DATA_PATH_KEY, FAILED_CODE, REFUSED_CODE, client_app
from edgefleet.federated.flower.checkpoint import (
    FailedNode,
    RoundRecord,
    list_records,
    load_round,
    save_round,
)
from edgefleet.federated.flower.config import DEFAULT_RUN_CONFIG, WEIGHT_KEY, RunSettings
from edgefleet.federated.flower.data import write_node_data
from edgefleet.federated.flower.errors import CheckpointError, SettingsError
from edgefleet.federated.flower.processes import ManagedProcess, RestartPolicy, SuperNode
from edgefleet.federated.flower.rounds import from_array_record, resolve_start, to_array_record
from edgefleet.federated.flower.strategies import build_strategy
from edgefleet.federated.models import create

RUN_TIMEOUT_S = 400.0


def run_config(ckpt: Path, digits: Any, **overrides: Any) -> dict[str, Any]:
    config = {
        "num-rounds": 3,
        "strategy": "fedavg",
        "min-nodes": 3,
        "n-features": digits.n_features,
        "n-classes": digits.n_classes,
        "model-family": "logreg",
        "lr": 0.5,
        "local-epochs": 2,
        "batch-size": 32,
        "evaluate-every": 3,
        "round-timeout-s": 240.0,
        "checkpoint-dir": str(ckpt),
    }
    config.update(overrides)
    return config


def central_accuracy(weights: dict[str, np.ndarray], digits: Any) -> float:
    model = create("logreg", digits.n_features, digits.n_classes)
    model.set_weights(weights)
    return float(model.evaluate(digits.x_test, digits.y_test).accuracy)


def wait_for_log(node: SuperNode, text: str, *, after: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        data = node.process.log_path.read_bytes()[after:]
        if text.encode() in data:
            return
        time.sleep(0.05)
    raise AssertionError(f"{node.name} never logged {text!r}:\n{node.process.log_tail()}")


@dataclass(frozen=True)
class FedAvgRun:
    run_id: int
    ckpt: Path


@pytest.fixture(scope="module")
def fedavg_run(flower: Any, tmp_path_factory: pytest.TempPathFactory) -> FedAvgRun:
    """Three FedAvg rounds over the three nodes, evaluated federatedly after round 3."""
    ckpt = tmp_path_factory.mktemp("fedavg") / "ckpt"
    fed = flower.federation
    run_id = fed.submit_run(None, run_config(ckpt, flower.data))
    fed.wait_run(run_id, RUN_TIMEOUT_S)
    return FedAvgRun(run_id, ckpt)


@pytest.mark.timeout(900)
def test_fedavg_rounds_improve_the_global_model_and_checkpoint_every_round(
    flower: Any, fedavg_run: FedAvgRun
) -> None:
    digits, ckpt = flower.data, fedavg_run.ckpt
    records = list_records(ckpt)
    assert [r.round for r in records] == [0, 1, 2, 3]
    everyone = sorted(flower.node_ids.values())
    n_train = sum(len(y) for y in digits.node_y)
    for record in records[1:]:
        assert (ckpt / f"round-{record.round:04d}.npz").exists()
        assert record.run_id == fedavg_run.run_id
        assert record.status == "aggregated"
        assert record.participating_nodes == everyone
        assert record.failed_nodes == [] and record.skipped_nodes == []
        # Each node trains on all but its held-out share (20 %).
        assert 0.75 * n_train < record.examples < 0.85 * n_train
        assert record.bytes_sent > 0 and record.bytes_received > 0
        assert record.duration_s > 0
        assert {"train-loss", "train-accuracy", "global-accuracy"} <= set(record.train_metrics)
    assert records[1].loss is None  # federated evaluation only after round 3
    final = records[-1]
    assert final.evaluate_nodes == everyone
    assert final.accuracy is not None and final.accuracy > 0.5
    assert final.settings["strategy"] == "fedavg" and final.dp is None

    base = central_accuracy(load_round(ckpt, 0).weights, digits)
    trained = central_accuracy(load_round(ckpt, 3).weights, digits)
    # Non-IID shards: only a model that learned from every node's classes gets here.
    assert trained > base + 0.3, (base, trained)
    print(f"\nround wall times (s): {[r.duration_s for r in records[1:]]}; "
          f"central accuracy {base:.3f} -> {trained:.3f}")


@pytest.mark.timeout(900)
def test_a_resumed_run_survives_a_killed_supernode(
    flower: Any, fedavg_run: FedAvgRun, tmp_path: Path
) -> None:
    """Resume rounds 4-5 from the 3-round checkpoint as a new run; crash a node in round 4.

    The resumed run switches to FedProx with central DP (clipping + Gaussian noise): a
    resume takes only the weights from the checkpoint.
    """
    digits, fed = flower.data, flower.federation
    ckpt = tmp_path / "ckpt"
    shutil.copytree(fedavg_run.ckpt, ckpt)
    victim = fed.nodes["node1"]
    victim_id = flower.node_ids["node1"]
    restarts_before = victim.process.restarts
    offset = victim.process.log_path.stat().st_size
    config = run_config(ckpt, digits, **{
        "num-rounds": 5, "resume": True, "evaluate-every": 0, "min-nodes": 2,
        "round-timeout-s": 20.0, "strategy": "fedprox", "proximal-mu": 0.05,
        "dp-clipping-norm": 5.0, "dp-noise-multiplier": 0.001,
    })
    run_id = fed.submit_run(None, config)
    # Crash the node after it took round 4's training message, before it replies.
    wait_for_log(victim, "Received successfully", after=offset, timeout_s=120)
    victim.kill()
    fed.wait_run(run_id, RUN_TIMEOUT_S)

    round4, round5 = (load_round(ckpt, r).record for r in (4, 5))
    # Resumed: numbering continues and the nodes got the round-3 weights, not a fresh model.
    assert round4.run_id == round5.run_id == run_id
    assert round4.resumed_from == 3
    assert round4.train_metrics["global-accuracy"] > 0.5
    assert round4.strategy == "fedprox" and round4.settings["proximal_mu"] == 0.05
    assert round4.dp is not None and round4.dp["clipping_norm"] == 5.0
    assert round4.dp["noise_stddev"] == pytest.approx(0.001 * 5.0 / 2)
    # The crash is recorded; the others' updates are aggregated; round 5 skips the node.
    failed = {f.node_id: f for f in round4.failed_nodes}
    assert victim_id in failed, round4.failed_nodes
    assert failed[victim_id].phase == "train" and failed[victim_id].code is None
    assert victim_id not in round4.participating_nodes
    assert round4.status == "aggregated" and len(round4.participating_nodes) >= 1
    assert round5.skipped_nodes == [victim_id]
    assert round5.status == "aggregated" and len(round5.participating_nodes) >= 2
    # The supervisor restarts the crashed node. With node auth it keeps its node ID, and
    # the SuperLink re-admits it once the dead process's heartbeat lease ran out (<= 60 s).
    assert victim.process.restarts > restarts_before
    base = central_accuracy(load_round(ckpt, 0).weights, digits)
    assert central_accuracy(load_round(ckpt, 5).weights, digits) > base + 0.3
    print(f"\nround wall times with a crash (s): {[round4.duration_s, round5.duration_s]}; "
          f"round 4 failures: {round4.failed_nodes}")


def test_an_unregistered_supernode_is_rejected(flower: Any) -> None:
    rogue = flower.rogue
    deadline = time.monotonic() + 60
    while rogue.process.running and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not rogue.process.running, "the SuperLink accepted an unregistered SuperNode"
    assert rogue.node_id is None
    assert "Failed to activate SuperNode" in rogue.process.log_tail()
    online = {n.node_id for n in flower.federation.online_nodes()}
    assert online <= set(flower.node_ids.values())


# -- the same components without processes: apps, strategies, settings, checkpoints ------


def incoming(content: RecordDict, message_type: str, *, node_id: int = 7) -> Message:
    """A message as the SuperNode hands it to the ClientApp."""
    metadata = Metadata(run_id=1, message_id="m-1", src_node_id=0, dst_node_id=node_id,
                        reply_to_message_id="", group_id="1", created_at=time.time(),
                        ttl=600.0, message_type=message_type)
    return make_message(metadata=metadata, content=content)


def reply_from(node_id: int, weights: dict[str, np.ndarray], n: int) -> Message:
    """A training reply as the ServerApp pulls it."""
    metadata = Metadata(run_id=1, message_id=f"r-{node_id}", src_node_id=node_id,
                        dst_node_id=0, reply_to_message_id=f"m-{node_id}", group_id="1",
                        created_at=time.time(), ttl=600.0, message_type=MessageType.TRAIN)
    content = RecordDict({"arrays": to_array_record(weights),
                          "metrics": MetricRecord({WEIGHT_KEY: n})})
    return make_message(metadata=metadata, content=content)


def node_context(data_path: Path, **run_config: Any) -> Context:
    config = {"n-features": 64, "n-classes": 10, **run_config}
    return Context(run_id=1, node_id=7, node_config={DATA_PATH_KEY: str(data_path)},
                   state=RecordDict(), run_config=config)


def train_message(weights: dict[str, np.ndarray], **config: Any) -> Message:
    content = RecordDict({"arrays": to_array_record(weights),
                          "config": ConfigRecord({"server-round": 1, "local-epochs": 1,
                                                  "lr": 0.5, "batch-size": 32, **config})})
    return incoming(content, MessageType.TRAIN)


def test_client_app_trains_on_local_data_and_replies_with_weights_and_metrics(
    digits: Any, tmp_path: Path
) -> None:
    path = tmp_path / "node.npz"
    write_node_data(path, digits.node_x[0], digits.node_y[0])
    start = create("logreg", 64, 10).weights()
    reply = client_app(train_message(start, **{"proximal-mu": 0.1}), node_context(path))
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    weights = from_array_record(reply.content.array_records["arrays"])
    assert weights.keys() == start.keys()
    assert any(not np.array_equal(weights[k], start[k]) for k in start)
    metrics = reply.content.metric_records["metrics"]
    n = len(digits.node_y[0])
    assert metrics[WEIGHT_KEY] + metrics["holdout-examples"] == n
    assert metrics["holdout-accuracy"] > metrics["global-accuracy"]

    evaluation = client_app(
        incoming(RecordDict({"arrays": to_array_record(weights)}), MessageType.EVALUATE),
        node_context(path),
    )
    eval_metrics = evaluation.content.metric_records["metrics"]
    assert eval_metrics[WEIGHT_KEY] == metrics["holdout-examples"]
    assert eval_metrics["accuracy"] == pytest.approx(metrics["holdout-accuracy"])


def test_client_app_refuses_with_too_few_examples_and_reports_broken_data(
    digits: Any, tmp_path: Path
) -> None:
    small = tmp_path / "small.npz"
    write_node_data(small, digits.node_x[0][:5], digits.node_y[0][:5])
    start = create("logreg", 64, 10).weights()
    refused = client_app(train_message(start), node_context(small, **{"min-examples": 10}))
    assert refused.has_error() and refused.error.code == REFUSED_CODE
    assert refused.error.reason.startswith("refused: 5 labelled examples")

    # the device's own minimum binds too (the stricter of the node's and the run's)
    strict = node_context(small, **{"min-examples": 2})
    strict.node_config["min-examples"] = 20
    refused = client_app(train_message(start), strict)
    assert refused.has_error() and refused.error.code == REFUSED_CODE
    assert "need 20" in refused.error.reason

    missing = client_app(train_message(start), node_context(tmp_path / "nope.npz"))
    assert missing.has_error() and missing.error.code == FAILED_CODE
    assert "nope.npz" in missing.error.reason


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("fedavg", (1 * 10 + 2 * 10 + 3 * 10 + 4 * 10 + 100 * 60) / 100),  # weighted mean
        ("fedprox", (1 * 10 + 2 * 10 + 3 * 10 + 4 * 10 + 100 * 60) / 100),
        ("fedtrimmedavg", 3.0),  # beta 0.2 of 5 cuts 1 and 100
        ("krum", None),  # one of the honest updates, never the outlier
        ("fedadam", None),  # an adaptive step from 0 toward the mean
    ],
)
def test_strategies_aggregate_node_updates(strategy: str, expected: float | None) -> None:
    settings = RunSettings.from_run_config(
        {"strategy": strategy, "n-features": 4, "n-classes": 3, "krum-byzantine": 1},
        require_checkpoint_dir=False,
    )
    built, dp = build_strategy(settings)
    assert dp is None
    zeros = {"linear.weight": np.zeros((4, 3), np.float32), "linear.bias": np.zeros(3, np.float32)}
    if strategy == "fedadam":  # FedOpt computes its step from the arrays it last sent
        built.current_arrays = {k: v.copy() for k, v in zeros.items()}
    values, counts = [1.0, 2.0, 3.0, 4.0, 100.0], [10, 10, 10, 10, 60]
    replies = [reply_from(i, {k: np.full_like(v, x) for k, v in zeros.items()}, n)
               for i, (x, n) in enumerate(zip(values, counts, strict=True))]
    arrays, _ = built.aggregate_train(1, replies)
    assert arrays is not None
    result = from_array_record(arrays)
    assert result.keys() == zeros.keys()
    mean = float(result["linear.weight"].mean())
    if expected is not None:
        assert mean == pytest.approx(expected)
    elif strategy == "krum":
        assert mean in values[:4]
    else:
        assert 0.0 < mean <= settings.server_lr * 1.01


def test_central_dp_clips_updates_and_records_its_parameters() -> None:
    settings = RunSettings.from_run_config(
        {"n-features": 4, "n-classes": 3, "dp-clipping-norm": 1.0,
         "dp-noise-multiplier": 0.5, "min-nodes": 2},
        require_checkpoint_dir=False,
    )
    built, dp = build_strategy(settings)
    assert dp is not None and dp["clipping_norm"] == 1.0 and dp["noise_multiplier"] == 0.5
    assert dp["noise_stddev"] == pytest.approx(0.25)
    zeros = {"w": np.zeros(100, np.float32)}
    messages = [reply_from(i, {"w": np.full(100, 50.0, np.float32)}, 10) for i in range(2)]
    built.current_arrays = to_array_record(zeros)
    arrays, _ = built.aggregate_train(1, messages)
    assert arrays is not None
    update = from_array_record(arrays)["w"]
    # Clipped to norm 1 (mean 0.1 per coordinate) plus N(0, 0.25) noise: far below 50.
    assert abs(float(update.mean())) < 0.5
    assert 0.1 < float(update.std()) < 0.5


def test_run_settings_validate_and_the_app_project_declares_every_key() -> None:
    with pytest.raises(SettingsError, match="unknown run-config keys: bogus"):
        RunSettings.from_run_config({"bogus": 1})
    with pytest.raises(SettingsError, match="unknown strategy"):
        RunSettings.from_run_config({"strategy": "fedsgd", "n-features": 2, "n-classes": 2},
                                    require_checkpoint_dir=False)
    with pytest.raises(SettingsError, match="num-rounds must be an integer"):
        RunSettings.from_run_config({"num-rounds": "3"})
    with pytest.raises(SettingsError, match="checkpoint-dir must be an absolute path"):
        RunSettings.from_run_config({"n-features": 2, "n-classes": 2})
    project = tomllib.loads(pyproject_text())
    app = project["tool"]["flwr"]["app"]
    assert app["config"] == DEFAULT_RUN_CONFIG
    assert app["components"] == {"serverapp": "edgefleet.federated.flower.apps:server_app",
                                 "clientapp": "edgefleet.federated.flower.apps:client_app"}


def test_checkpoints_round_trip_and_refuse_to_mix_runs(tmp_path: Path) -> None:
    weights = {"linear.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
               "linear.bias": np.ones(3, np.float32)}
    record = RoundRecord(round=2, run_id=9, status="aggregated", strategy="fedavg",
                         participating_nodes=[1, 2], failed_nodes=[FailedNode(3, "train", "x")],
                         examples=10, bytes_sent=100, bytes_received=80, duration_s=1.5)
    save_round(tmp_path, weights, record)
    loaded = load_round(tmp_path)
    assert loaded.round == 2 and loaded.record == record
    assert all(np.array_equal(loaded.weights[k], weights[k]) for k in weights)
    settings = RunSettings.from_run_config(
        {"n-features": 3, "n-classes": 3, "checkpoint-dir": str(tmp_path)}
    )
    with pytest.raises(SettingsError, match="already holds checkpoints up to round 2"):
        resolve_start(settings)
    resumed = resolve_start(dataclasses.replace(settings, resume=True))
    assert resumed.first_round == 3 and resumed.resumed_from == 2
    with pytest.raises(CheckpointError):
        load_round(tmp_path / "empty")


def test_a_fresh_run_can_start_at_a_later_round_from_given_weights(tmp_path: Path) -> None:
    """What the fleet server does to resume a job from its registry checkpoint."""
    weights = {"linear.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
               "linear.bias": np.ones(3, np.float32)}
    np.savez(tmp_path / "round-2.npz", **weights)
    config: dict[str, Any] = {"n-features": 3, "n-classes": 3, "num-rounds": 5,
                              "checkpoint-dir": str(tmp_path / "attempt-02"),
                              "init-weights": str(tmp_path / "round-2.npz"),
                              "start-round": 3}
    start = resolve_start(RunSettings.from_run_config(config))
    assert start.first_round == 3 and start.resumed_from == 2
    assert all(np.array_equal(start.weights[k], weights[k]) for k in weights)
    for bad, message in (({"start-round": 6}, "start-round must be in"),
                         ({"start-round": 0}, "start-round must be in"),
                         ({"init-weights": ""}, "needs init-weights"),
                         ({"resume": True}, "exclude each other")):
        with pytest.raises(SettingsError, match=message):
            RunSettings.from_run_config({**config, **bad})
    save_round(tmp_path / "attempt-02", weights, RoundRecord(
        round=3, run_id=1, status="aggregated", strategy="fedavg", participating_nodes=[],
        failed_nodes=[], examples=0, bytes_sent=0, bytes_received=0, duration_s=0.0))
    with pytest.raises(SettingsError, match="needs an empty directory"):
        resolve_start(RunSettings.from_run_config(config))


def test_managed_process_restarts_with_backoff_and_stops_its_whole_group(
    tmp_path: Path,
) -> None:
    crashing = ManagedProcess(
        "crasher", [sys.executable, "-c", "import sys; print('up'); sys.exit(3)"],
        env=os.environ, log_path=tmp_path / "crasher.log",
        restart=RestartPolicy(max_restarts=2, initial_backoff_s=0.1, max_backoff_s=0.2),
    )
    crashing.start()
    deadline = time.monotonic() + 30
    while crashing.restarts < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert crashing.restarts == 2 and not crashing.running  # gave up after max_restarts
    assert crashing.log_path.read_text().count("up") == 3
    crashing.stop()

    # A child with a grandchild (like a SuperNode and its SuperExec): stop() ends both.
    script = ("import subprocess, sys, time; "
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              "print(p.pid, flush=True); time.sleep(60)")
    parent = ManagedProcess("parent", [sys.executable, "-c", script], env=os.environ,
                            log_path=tmp_path / "parent.log")
    parent.start()
    deadline = time.monotonic() + 30
    while not parent.current_log().strip().splitlines()[1:] and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = int(parent.current_log().strip().splitlines()[-1])
    parent.stop(grace_s=5)
    assert not parent.running
    deadline = time.monotonic() + 10
    while Path(f"/proc/{grandchild}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    status = Path(f"/proc/{grandchild}/status")
    assert not status.exists() or "zombie" in status.read_text()


def test_a_cohort_limits_the_nodes_strategies_see() -> None:
    from edgefleet.federated.flower.rounds import CohortGrid

    class Grid:
        def get_node_ids(self) -> list[int]:
            return [1, 2, 3, 18446744073709551615]

        def run_id(self) -> int:
            return 9

    settings = RunSettings.from_run_config(
        {"n-features": 4, "n-classes": 3, "node-ids": "3, 18446744073709551615"},
        require_checkpoint_dir=False)
    assert settings.cohort == frozenset({3, 18446744073709551615})
    cohort = CohortGrid(Grid(), settings.cohort)  # type: ignore[arg-type]
    assert cohort.get_node_ids() == [3, 18446744073709551615]
    assert cohort.run_id() == 9  # everything else is the real grid's
    everyone = RunSettings.from_run_config({"n-features": 4, "n-classes": 3},
                                           require_checkpoint_dir=False)
    assert everyone.cohort is None
    with pytest.raises(SettingsError, match="node-ids"):
        RunSettings.from_run_config({"n-features": 4, "n-classes": 3, "node-ids": "1;2"},
                                    require_checkpoint_dir=False)
