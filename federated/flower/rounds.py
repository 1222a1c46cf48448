"""The server's round loop: Flower strategies, our own bookkeeping and checkpoints.

``Strategy.start`` in Flower runs all rounds in one call and keeps only aggregated metrics.
Fleet rounds need more per round (which nodes took part, which failed and why, bytes,
duration) and a checkpoint after every round, so this loop drives the same strategy
methods (``configure_train`` / ``aggregate_train`` / ``configure_evaluate`` /
``aggregate_evaluate``) itself. Nodes that reply with an error, or not at all within
``round-timeout-s``, are recorded as failed and left out of the aggregate.

Straggler cooldown: the SuperLink only notices a dead SuperNode when its heartbeat lease
runs out (2 x 30 s in Flower 1.41), and until then keeps listing it as connected. A node
that did not reply in time therefore sits out the next ``straggler-cooldown-rounds``
rounds (recorded as ``skipped_nodes``) instead of costing every round a full timeout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from edgefleet.federated.flower.checkpoint import (
    FailedNode,
    RoundRecord,
    latest_round,
    load_round,
    load_weights,
    save_round,
)
from edgefleet.federated.flower.config import WEIGHT_KEY, RunSettings
from edgefleet.federated.flower.errors import RunError, SettingsError
from edgefleet.federated.flower.strategies import build_strategy

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.2  # Flower's own send_and_receive sleeps 3 s between pulls


@dataclass
class PhaseOutcome:
    """Replies of one phase (train or evaluate), split into usable and failed."""

    replies: list[Message] = field(default_factory=list)
    failed: list[FailedNode] = field(default_factory=list)
    bytes_sent: int = 0
    bytes_received: int = 0


@dataclass
class _RunContext:
    grid: Grid
    strategy: Strategy
    settings: RunSettings
    run_id: int
    dp: dict[str, Any] | None
    resumed_from: int | None
    timed_out: dict[int, int] = field(default_factory=dict)  # node ID -> last round

    def cooling_down(self, server_round: int) -> set[int]:
        """Nodes that timed out within the last ``straggler-cooldown-rounds`` rounds."""
        window = self.settings.straggler_cooldown_rounds
        return {n for n, r in self.timed_out.items() if server_round - r <= window}


@dataclass(frozen=True)
class StartPoint:
    """Where a run starts: the weights and the first round to run."""

    weights: dict[str, np.ndarray]
    first_round: int
    resumed_from: int | None


def to_array_record(weights: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Weights keyed by ONNX initializer name -> Flower ArrayRecord (same keys)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in weights.items()})


def from_array_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Inverse of :func:`to_array_record`."""
    return {k: np.asarray(v.numpy()) for k, v in record.items()}


def resolve_start(settings: RunSettings) -> StartPoint:
    """Initial weights: the latest checkpoint (resume), a weights file, or a fresh model.

    With ``start-round`` N > 1 the run continues a job elsewhere (the fleet server resumes
    from its registry checkpoint): ``init-weights`` are the weights after round N - 1, the
    first round run is N and no round 0 is written.

    Raises:
        SettingsError: a fresh run was pointed at a directory that already has rounds.
        CheckpointError: the checkpoint or weights file cannot be read.
    """
    directory = Path(settings.checkpoint_dir)
    last = latest_round(directory)
    if settings.start_round > 1:
        if last is not None:
            raise SettingsError(f"{directory} already holds checkpoints up to round {last}; "
                                "a run with start-round needs an empty directory")
        previous = settings.start_round - 1
        return StartPoint(load_weights(Path(settings.init_weights)), settings.start_round,
                          previous)
    if settings.resume and last is not None:
        checkpoint = load_round(directory, last)
        return StartPoint(checkpoint.weights, last + 1, last)
    if last is not None:
        raise SettingsError(
            f"{directory} already holds checkpoints up to round {last}; "
            "set resume=true to continue from them or use an empty directory"
        )
    if settings.init_weights:
        return StartPoint(load_weights(Path(settings.init_weights)), 1, None)
    from edgefleet.federated.models import create

    model = create(
        settings.model_family,
        settings.n_features,
        settings.n_classes,
        hidden=settings.hidden,
        seed=settings.seed,
    )
    return StartPoint(model.weights(), 1, None)


class CohortGrid:
    """A Grid whose ``get_node_ids`` lists only the cohort's connected nodes; everything
    else is the wrapped Grid's. Nodes outside the cohort are never asked to train."""

    def __init__(self, grid: Grid, cohort: frozenset[int]) -> None:
        self._grid = grid
        self._cohort = cohort

    def get_node_ids(self) -> list[int]:
        return [n for n in self._grid.get_node_ids() if n in self._cohort]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def wait_for_nodes(
    grid: Grid, minimum: int, timeout_s: float, *, sleep: Callable[[float], None] = time.sleep
) -> list[int]:
    """Block until ``minimum`` nodes are connected; their IDs.

    Raises:
        RunError: not enough nodes within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= minimum:
            return nodes
        if time.monotonic() >= deadline:
            raise RunError(f"only {len(nodes)} of {minimum} required nodes connected "
                           f"after {timeout_s:.0f} s")
        sleep(1.0)


def exchange(
    grid: Grid,
    messages: Iterable[Message],
    *,
    phase: str,
    timeout_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> PhaseOutcome:
    """Push ``messages``, pull replies until all arrived or ``timeout_s`` passed."""
    outcome = PhaseOutcome()
    messages = list(messages)
    if not messages:
        return outcome
    outcome.bytes_sent = sum(_array_bytes(m) for m in messages)
    destinations = [m.metadata.dst_node_id for m in messages]
    ids = list(grid.push_messages(messages))
    pending: dict[str, int] = {}
    for message_id, node_id in zip(ids, destinations, strict=True):
        if message_id:
            pending[message_id] = node_id
        else:
            outcome.failed.append(FailedNode(node_id, phase, "message could not be pushed"))
    deadline = time.monotonic() + timeout_s
    while pending:
        for reply in grid.pull_messages(list(pending)):
            reply_to = reply.metadata.reply_to_message_id
            if reply_to not in pending:
                continue
            node_id = pending.pop(reply_to)
            if reply.has_error():
                outcome.failed.append(
                    FailedNode(node_id, phase, reply.error.reason or "error", reply.error.code)
                )
            else:
                outcome.replies.append(reply)
                outcome.bytes_received += _array_bytes(reply)
        if not pending or time.monotonic() >= deadline:
            break
        sleep(POLL_INTERVAL_S)
    for node_id in pending.values():
        outcome.failed.append(FailedNode(node_id, phase, f"no reply within {timeout_s:g} s"))
    return outcome


def run_rounds(grid: Grid, settings: RunSettings, *, run_id: int) -> list[RoundRecord]:
    """Run the configured rounds, checkpointing after each; the records written.

    Raises:
        RunError: not enough nodes connected in time (earlier rounds stay checkpointed).
        SettingsError, CheckpointError: bad configuration or checkpoint directory.
    """
    directory = Path(settings.checkpoint_dir)
    start = resolve_start(settings)
    strategy, dp = build_strategy(settings)
    records: list[RoundRecord] = []
    if start.resumed_from is None:
        initial = RoundRecord(
            round=0, run_id=run_id, status="initial", strategy=settings.strategy.value,
            participating_nodes=[], failed_nodes=[], examples=0, bytes_sent=0,
            bytes_received=0, duration_s=0.0, dp=dp, settings=settings.to_dict(),
            started_at=time.time(),
        )
        save_round(directory, start.weights, initial)
    arrays = to_array_record(start.weights)
    cohort = settings.cohort
    if cohort is not None:  # strategies sample from the grid: show them the cohort only
        grid = cast(Grid, CohortGrid(grid, cohort))
    ctx = _RunContext(grid, strategy, settings, run_id, dp, start.resumed_from)
    for server_round in range(start.first_round, settings.num_rounds + 1):
        record, arrays = _one_round(ctx, arrays, server_round)
        save_round(directory, from_array_record(arrays), record)
        records.append(record)
        logger.info("round %d: %s, %d ok, %d failed, %.1f s", server_round, record.status,
                    len(record.participating_nodes), len(record.failed_nodes), record.duration_s)
    return records


def _one_round(
    ctx: _RunContext, arrays: ArrayRecord, server_round: int
) -> tuple[RoundRecord, ArrayRecord]:
    grid, strategy, settings = ctx.grid, ctx.strategy, ctx.settings
    started_at, t0 = time.time(), time.monotonic()
    wait_for_nodes(grid, settings.min_nodes, settings.node_wait_s)
    train_config = ConfigRecord(
        {"local-epochs": settings.local_epochs, "lr": settings.lr,
         "batch-size": settings.batch_size}
    )
    skip = ctx.cooling_down(server_round)
    messages = list(strategy.configure_train(server_round, arrays, train_config, grid))
    skipped = sorted(m.metadata.dst_node_id for m in messages if m.metadata.dst_node_id in skip)
    train = exchange(
        grid, [m for m in messages if m.metadata.dst_node_id not in skip],
        phase="train", timeout_s=settings.round_timeout_s,
    )
    usable, malformed = _split_malformed(train.replies, "train", need_arrays=True)
    train.failed.extend(malformed)
    status, train_metrics = "skipped", None
    if len(usable) >= settings.min_replies:
        new_arrays, train_metrics = strategy.aggregate_train(server_round, usable)
        if new_arrays is not None:
            arrays, status = new_arrays, "aggregated"
    evaluate = PhaseOutcome()
    eval_usable: list[Message] = []
    eval_metrics = None
    if settings.evaluates_after(server_round):
        eval_messages = strategy.configure_evaluate(server_round, arrays, ConfigRecord(), grid)
        evaluate = exchange(
            grid, [m for m in eval_messages if m.metadata.dst_node_id not in skip],
            phase="evaluate", timeout_s=settings.round_timeout_s,
        )
        eval_usable, malformed = _split_malformed(evaluate.replies, "evaluate",
                                                  need_arrays=False)
        evaluate.failed.extend(malformed)
        if eval_usable:
            eval_metrics = strategy.aggregate_evaluate(server_round, eval_usable)
    for failure in train.failed + evaluate.failed:
        if failure.code is None:  # never replied: probably gone
            ctx.timed_out[failure.node_id] = server_round
    eval_dict = _metrics_dict(eval_metrics)
    record = RoundRecord(
        round=server_round,
        run_id=ctx.run_id,
        status=status,
        strategy=settings.strategy.value,
        participating_nodes=sorted(m.metadata.src_node_id for m in usable),
        failed_nodes=train.failed + evaluate.failed,
        examples=int(sum(_weight(m) for m in usable)) if status == "aggregated" else 0,
        bytes_sent=train.bytes_sent + evaluate.bytes_sent,
        bytes_received=train.bytes_received + evaluate.bytes_received,
        duration_s=round(time.monotonic() - t0, 3),
        train_metrics=_metrics_dict(train_metrics),
        evaluate_metrics=eval_dict,
        evaluate_nodes=sorted(m.metadata.src_node_id for m in eval_usable),
        skipped_nodes=skipped,
        loss=eval_dict.get("loss"),
        accuracy=eval_dict.get("accuracy"),
        dp=ctx.dp,
        settings=settings.to_dict(),
        started_at=started_at,
        resumed_from=ctx.resumed_from,
    )
    return record, arrays


def _split_malformed(
    replies: list[Message], phase: str, *, need_arrays: bool
) -> tuple[list[Message], list[FailedNode]]:
    """Keep replies Flower's strategies can aggregate; the rest are node failures."""
    usable, failed = [], []
    for reply in replies:
        content = reply.content
        ok = len(content.metric_records) == 1 and WEIGHT_KEY in next(
            iter(content.metric_records.values()), {}
        )
        if need_arrays:
            ok = ok and len(content.array_records) == 1
        if ok:
            usable.append(reply)
        else:
            failed.append(FailedNode(reply.metadata.src_node_id, phase, "malformed reply"))
    return usable, failed


def _weight(reply: Message) -> float:
    metrics = next(iter(reply.content.metric_records.values()))
    return float(metrics[WEIGHT_KEY])  # type: ignore[arg-type]


def _array_bytes(message: Message) -> int:
    if message.has_error():
        return 0
    return sum(record.count_bytes() for record in message.content.array_records.values())


def _metrics_dict(metrics: MetricRecord | None) -> dict[str, float]:
    if metrics is None:
        return {}
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
