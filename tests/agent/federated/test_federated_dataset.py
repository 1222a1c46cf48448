"""Dataset export from a real feedback store, read back with the ClientApp's loader."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import numpy as np

from edgefleet.agent.daemon.feedback import FeedbackStore
from edgefleet.agent.federated.dataset import export_dataset
from edgefleet.agent.runtime import ModelRunner
from edgefleet.federated.flower.data import load_node_data
from tests.agent.federated.conftest import N_CLASSES, N_FEATURES, predict_and_label


def test_labelled_feedback_round_trips_through_the_client_apps_loader(
    tmp_path: Path, store: FeedbackStore, runner: ModelRunner
) -> None:
    stored = predict_and_label(store, runner, 30, seed=1)
    predict_and_label(store, runner, 5, seed=2, label=False)  # unlabelled: left out
    predict_and_label(store, runner, 7, model="other", seed=3)  # another model
    path = tmp_path / "fl" / "dataset.npz"

    stats = export_dataset(store, "mlp", path, max_examples=1000, clock=lambda: 123.0)

    assert (stats.n, stats.n_features, stats.skipped, stats.refreshed_at) == \
        (30, N_FEATURES, 0, 123.0)
    assert stats.classes == tuple(sorted({int(v) for v in stored.y}))
    with np.load(path) as raw:  # newest first, exactly the stored inputs and labels
        np.testing.assert_array_equal(raw["x"], stored.x[::-1])
        np.testing.assert_array_equal(raw["y"], stored.y[::-1])
    data = load_node_data(path, holdout_fraction=0.2, seed=0)
    assert data.n_total == 30 and data.y_holdout.shape == (6,)
    assert data.x_train.dtype == np.float32 and data.x_train.shape[1] == N_FEATURES
    # Local only, private: 0600, in a 0700 directory, no temp files left behind.
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["dataset.npz"]


def test_export_is_bounded_newest_first_and_refreshes(
    tmp_path: Path, store: FeedbackStore, runner: ModelRunner
) -> None:
    old = predict_and_label(store, runner, 10, seed=4)
    path = tmp_path / "dataset.npz"
    assert export_dataset(store, "mlp", path, max_examples=8).n == 8
    with np.load(path) as raw:
        np.testing.assert_array_equal(raw["x"], old.x[::-1][:8])

    new = predict_and_label(store, runner, 5, seed=5)
    stats = export_dataset(store, "mlp", path, max_examples=8)
    assert stats.n == 8 and stats.refreshed_at <= time.time()
    with np.load(path) as raw:  # the 5 new ones, then the 3 newest old ones
        np.testing.assert_array_equal(raw["x"][:5], new.x[::-1])
        np.testing.assert_array_equal(raw["x"][5:], old.x[::-1][:3])


def test_batch_predictions_give_one_row_each_and_unusable_labels_are_skipped(
    tmp_path: Path, store: FeedbackStore, runner: ModelRunner
) -> None:
    rng = np.random.default_rng(9)
    batch = rng.uniform(-1, 1, size=(3, N_FEATURES)).astype(np.float32)
    rows = [
        ("batch", {"input": batch}, [2, 0, 1]),  # 3 rows
        ("negative", {"input": batch[:1]}, -1),  # not a class index
        ("text", {"input": batch[:1]}, "cat"),
        ("boolean", {"input": batch[:1]}, True),
        ("short", {"input": batch}, [1, 2]),  # one label missing
        ("float", {"input": batch[1:2]}, 3.0),  # integral float: class 3
    ]
    for pid, inputs, _ in rows:
        store.add_many([(pid, "mlp", "1.0", time.time(), inputs, runner.predict(inputs))])
    for pid, _, label in rows:
        store.feedback(pid, label)

    stats = export_dataset(store, "mlp", tmp_path / "d.npz", max_examples=100)

    assert (stats.n, stats.skipped, stats.classes) == (4, 4, (0, 1, 2, 3))
    with np.load(tmp_path / "d.npz") as raw:
        np.testing.assert_array_equal(raw["y"], [3, 2, 0, 1])
        np.testing.assert_array_equal(raw["x"][1:], batch)


def test_an_empty_store_exports_an_empty_dataset(tmp_path: Path, store: FeedbackStore) -> None:
    stats = export_dataset(store, "mlp", tmp_path / "d.npz", max_examples=10)
    assert (stats.n, stats.classes) == (0, ())
    with np.load(tmp_path / "d.npz") as raw:
        assert raw["x"].shape[0] == 0 and raw["y"].shape == (0,)


def test_the_client_app_trains_on_the_exported_feedback_and_refuses_too_little(
    tmp_path: Path, store: FeedbackStore, runner: ModelRunner
) -> None:
    from flwr.app import ConfigRecord, Context, Message, MessageType, Metadata, RecordDict
    from flwr.app.message import make_message

    from edgefleet.federated.flower.apps import DATA_PATH_KEY, REFUSED_CODE, client_app
    from edgefleet.federated.flower.config import WEIGHT_KEY
    from edgefleet.federated.flower.rounds import to_array_record
    from edgefleet.federated.models import create

    predict_and_label(store, runner, 40, seed=7)
    path = tmp_path / "dataset.npz"
    export_dataset(store, "mlp", path, max_examples=1000)
    start = create("logreg", N_FEATURES, N_CLASSES).weights()

    def train(min_examples: int) -> Message:
        metadata = Metadata(run_id=1, message_id="m-1", src_node_id=0, dst_node_id=7,
                            reply_to_message_id="", group_id="1", created_at=time.time(),
                            ttl=600.0, message_type=MessageType.TRAIN)
        content = RecordDict({"arrays": to_array_record(start),
                              "config": ConfigRecord({"server-round": 1, "lr": 0.5})})
        context = Context(run_id=1, node_id=7, node_config={DATA_PATH_KEY: str(path)},
                          state=RecordDict(),
                          run_config={"n-features": N_FEATURES, "n-classes": N_CLASSES,
                                      "min-examples": min_examples})
        return client_app(make_message(metadata=metadata, content=content), context)

    reply = train(10)
    assert not reply.has_error(), reply.error.reason if reply.has_error() else ""
    metrics = reply.content.metric_records["metrics"]
    n_train, n_holdout = metrics[WEIGHT_KEY], metrics["holdout-examples"]
    assert isinstance(n_train, int) and isinstance(n_holdout, int)
    assert n_train + n_holdout == 40
    assert set(reply.content.array_records["arrays"].keys()) == set(start)  # weights only
    refused = train(41)
    assert refused.has_error() and refused.error.code == REFUSED_CODE
