"""The Flower apps of edgefleet: ``client_app`` (runs on each SuperNode) and ``server_app``.

Component references for the app project: ``edgefleet.federated.flower.apps:client_app``
and ``edgefleet.federated.flower.apps:server_app``.

ClientApp (Message API):

* ``train``: reads the node's labelled data from the ``data-path`` node config (an
  ``.npz`` with ``x``/``y``), evaluates the received global weights on its held-out
  share, trains locally (FedProx's proximal term when the server sends ``proximal-mu``)
  and replies with the new weights and metrics only, never data. Metrics: ``num-examples``
  (training examples; the aggregation weight), ``train-loss``, ``train-accuracy``,
  ``global-loss``/``global-accuracy`` (received model on the held-out share),
  ``holdout-loss``/``holdout-accuracy`` (trained model on it), ``holdout-examples``.
* ``evaluate``: the received weights on the held-out share: ``num-examples``, ``loss``,
  ``accuracy``.
* A node with fewer than ``min-examples`` labelled examples refuses: it replies with a
  Flower ``Error`` (code :data:`REFUSED_CODE`, reason starting with ``refused:``), which
  the server records as a failed node for that round. Broken data or weights give an
  error reply with :data:`FAILED_CODE`.

ServerApp: validates the run config and runs :func:`~.rounds.run_rounds`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from edgefleet.federated.flower.config import WEIGHT_KEY, RunSettings
from edgefleet.federated.flower.data import NodeData, load_node_data
from edgefleet.federated.flower.errors import FlowerRuntimeError, NodeDataError

if TYPE_CHECKING:
    from edgefleet.federated.models import TrainableModel

logger = logging.getLogger(__name__)

#: Error code of a refusal (Flower's ErrorCode.MOD_FAILED_PRECONDITION).
REFUSED_CODE = 6
#: Error code of a node-side failure (Flower's ErrorCode.CLIENT_APP_RAISED_EXCEPTION).
FAILED_CODE = 2
#: Node-config key holding the path of the node's labelled data (.npz with x and y).
DATA_PATH_KEY = "data-path"

client_app = ClientApp()
server_app = ServerApp()


class _Refusal(FlowerRuntimeError):
    """The node declines the round (not enough data)."""


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received weights on the node's local data."""
    try:
        settings, data = _node_setup(context)
        from edgefleet.federated.flower.rounds import from_array_record, to_array_record

        model = _model(settings)
        global_weights = from_array_record(msg.content.array_records["arrays"])
        model.set_weights(global_weights)
        before = model.evaluate(data.x_holdout, data.y_holdout)
        config = msg.content.config_records["config"]
        mu = _number(config, "proximal-mu", 0.0)
        server_round = int(_number(config, "server-round", 0))
        fit = model.fit(
            data.x_train,
            data.y_train,
            epochs=int(_number(config, "local-epochs", settings.local_epochs)),
            lr=_number(config, "lr", settings.lr),
            batch_size=int(_number(config, "batch-size", settings.batch_size)),
            proximal_mu=mu,
            global_weights=global_weights if mu > 0.0 else None,
            rng=np.random.default_rng([settings.seed, server_round, context.node_id % 2**32]),
        )
        after = model.evaluate(data.x_holdout, data.y_holdout)
    except _Refusal as e:
        return Message(Error(code=REFUSED_CODE, reason=f"refused: {e}"), reply_to=msg)
    except Exception as e:  # any node-side failure becomes an error reply, never a crash
        logger.exception("train failed")
        return Message(Error(code=FAILED_CODE, reason=f"failed: {e}"), reply_to=msg)
    metrics = MetricRecord(
        {
            WEIGHT_KEY: int(data.y_train.shape[0]),
            "train-loss": float(fit.loss),
            "train-accuracy": float(fit.accuracy),
            "global-loss": float(before.loss),
            "global-accuracy": float(before.accuracy),
            "holdout-loss": float(after.loss),
            "holdout-accuracy": float(after.accuracy),
            "holdout-examples": int(data.y_holdout.shape[0]),
        }
    )
    content = RecordDict({"arrays": to_array_record(model.weights()), "metrics": metrics})
    return Message(content, reply_to=msg)


@client_app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received weights on the node's held-out share."""
    try:
        settings, data = _node_setup(context)
        from edgefleet.federated.flower.rounds import from_array_record

        model = _model(settings)
        model.set_weights(from_array_record(msg.content.array_records["arrays"]))
        result = model.evaluate(data.x_holdout, data.y_holdout)
    except _Refusal as e:
        return Message(Error(code=REFUSED_CODE, reason=f"refused: {e}"), reply_to=msg)
    except Exception as e:
        logger.exception("evaluate failed")
        return Message(Error(code=FAILED_CODE, reason=f"failed: {e}"), reply_to=msg)
    metrics = MetricRecord(
        {WEIGHT_KEY: int(result.n), "loss": float(result.loss), "accuracy": float(result.accuracy)}
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the configured rounds with per-round checkpoints."""
    from edgefleet.federated.flower.rounds import run_rounds

    settings = RunSettings.from_run_config(context.run_config)
    run_rounds(grid, settings, run_id=context.run_id)


def _number(config: ConfigRecord, key: str, default: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise NodeDataError(f"train config {key!r} is not a number: {value!r}")
    return float(value)


def _node_setup(context: Context) -> tuple[RunSettings, NodeData]:
    settings = RunSettings.from_run_config(context.run_config, require_checkpoint_dir=False)
    path = context.node_config.get(DATA_PATH_KEY)
    if not isinstance(path, str) or not path:
        raise NodeDataError(f"node config has no {DATA_PATH_KEY!r}")
    # The device's own limits bind too: the stricter minimum, the device's held-out share.
    node_min = context.node_config.get("min-examples")
    node_holdout = context.node_config.get("holdout-fraction")
    minimum = max(settings.min_examples,
                  int(node_min) if isinstance(node_min, int | float) else 0)
    holdout = (float(node_holdout) if isinstance(node_holdout, int | float)
               and 0.0 < float(node_holdout) < 1.0 else settings.holdout_fraction)
    data = load_node_data(Path(path), holdout_fraction=holdout, seed=settings.seed)
    if data.n_total < minimum or data.y_holdout.shape[0] == 0:
        raise _Refusal(f"{data.n_total} labelled examples, need {minimum}")
    return settings, data


def _model(settings: RunSettings) -> TrainableModel:
    from edgefleet.federated.models import create

    return create(settings.model_family, settings.n_features, settings.n_classes,
                  hidden=settings.hidden, seed=settings.seed)
