"""``edgefleet model inspect | quantize | bench``: thin wrappers over the model tools.

Library errors (``ToolError``, the runtime's ``RuntimeFault``) become one-line
``click.ClickException`` messages and a non-zero exit code.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click


@contextmanager
def _library_errors() -> Iterator[None]:
    """Turn the libraries' errors into one-line click errors."""
    from edgefleet.agent.runtime.errors import RuntimeFault
    from edgefleet.tools.errors import ToolError

    try:
        yield
    except (ToolError, RuntimeFault) as exc:
        raise click.ClickException(str(exc).splitlines()[0]) from exc


def _emit(data: dict[str, Any]) -> None:
    click.echo(json.dumps(data, indent=2))


def register(cli: click.Group, groups: dict[str, click.Group]) -> None:
    """Attach the model tools to the ``model`` group."""
    model = groups["model"]
    model.add_command(inspect_cmd)
    model.add_command(quantize_cmd)
    model.add_command(bench_cmd)


@click.command("inspect")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def inspect_cmd(*, file: Path, as_json: bool) -> None:
    """Show a model's signature, operators, size and quantization.

    FILE is an .onnx or .tflite model. Quantized tensors are listed with their scales
    and zero points; per-channel tensors with their channel axis.
    """
    from edgefleet.tools.inspect_model import inspect_model

    with _library_errors():
        info = inspect_model(file)
    if as_json:
        _emit(info.to_dict())
    else:
        click.echo(info.to_text())


@click.command("quantize")
@click.argument("source", metavar="IN", type=click.Path(path_type=Path))
@click.argument("destination", metavar="OUT", type=click.Path(path_type=Path))
@click.option("--mode", type=click.Choice(["dynamic", "static"]), default="dynamic",
              show_default=True, help="Dynamic: weights only; static: activations too.")
@click.option("--calibration", type=click.Path(path_type=Path),
              help="Calibration samples (.npy, or .npz per input); required for static.")
@click.option("--eval", "eval_x", type=click.Path(path_type=Path),
              help="Evaluation inputs (.npy/.npz): compare outputs with the float model.")
@click.option("--labels", type=click.Path(path_type=Path),
              help="Class labels for --eval (.npy): compare accuracy.")
@click.option("--max-accuracy-drop", type=float, default=1.0, show_default=True,
              help="Refuse to write OUT if accuracy falls by more points than this.")
@click.option("--max-output-error", type=float, default=None,
              help="Refuse to write OUT if any output differs by more than this.")
@click.option("--per-channel", is_flag=True, help="One scale per output channel of weights.")
@click.option("--weight-type", type=click.Choice(["int8", "uint8"]), default="int8",
              show_default=True, help="Integer type of the quantized weights.")
@click.option("--activation-type", type=click.Choice(["int8", "uint8"]), default="uint8",
              show_default=True, help="Integer type of the activations (static mode).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def quantize_cmd(
    *,
    source: Path,
    destination: Path,
    mode: str,
    calibration: Path | None,
    eval_x: Path | None,
    labels: Path | None,
    max_accuracy_drop: float,
    max_output_error: float | None,
    per_channel: bool,
    weight_type: str,
    activation_type: str,
    as_json: bool,
) -> None:
    """Quantize the ONNX model IN to 8-bit integers and write it to OUT.

    With --eval (and --labels) the quantized model is compared with the float model;
    OUT is written only if the accuracy drop stays within --max-accuracy-drop points
    (and the output error within --max-output-error when given).
    """
    from edgefleet.tools.errors import AccuracyGateError
    from edgefleet.tools.quantize import IntType, QuantizeOptions, QuantMode, quantize_model

    options = QuantizeOptions(
        mode=QuantMode(mode),
        weight_type=IntType(weight_type),
        activation_type=IntType(activation_type),
        per_channel=per_channel,
        max_accuracy_drop=max_accuracy_drop,
        max_output_error=max_output_error,
    )
    try:
        with _library_errors():
            report = quantize_model(source, destination, options, calibration=calibration,
                                    eval_x=eval_x, eval_y=labels)
    except click.ClickException as exc:
        cause = exc.__cause__
        if isinstance(cause, AccuracyGateError) and not as_json:
            click.echo(cause.report.to_text(), err=True)
        raise
    if as_json:
        _emit(report.to_dict())
    else:
        click.echo(report.to_text())


@click.command("bench")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--iterations", "-n", type=click.IntRange(min=1), default=200,
              show_default=True, help="Timed calls.")
@click.option("--duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Run for this many seconds instead of --iterations.")
@click.option("--warmup", type=click.IntRange(min=0), default=20, show_default=True,
              help="Untimed calls first.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Size of a dynamic batch dimension.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Intra-op threads (default: the runtime's choice).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def bench_cmd(
    *,
    file: Path,
    iterations: int,
    duration: float | None,
    warmup: int,
    batch: int,
    threads: int | None,
    as_json: bool,
) -> None:
    """Measure latency (p50/p95/p99) and throughput of a model on random inputs.

    Inputs match the model's signature (a dynamic batch dimension becomes --batch).
    Progress is shown on stderr; the result goes to stdout.
    """
    from edgefleet.tools.bench import BenchOptions, bench_model

    with _library_errors():
        options = BenchOptions(iterations=iterations, duration_s=duration, warmup=warmup,
                               batch=batch, threads=threads)
        steps = 1000
        stderr = click.get_text_stream("stderr")
        bar: Any
        with click.progressbar(length=steps, label="benchmarking", file=stderr) as bar:
            result = bench_model(file, options, _bar_progress(bar, steps))
    if as_json:
        _emit(result.to_dict())
    else:
        click.echo(result.to_text())


def _bar_progress(bar: Any, steps: int) -> Callable[[float], None]:
    done = [0]

    def update(fraction: float) -> None:
        target = int(fraction * steps)
        if target > done[0]:
            bar.update(target - done[0])
            done[0] = target

    return update
