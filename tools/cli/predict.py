"""``edgefleet agent predict``: run a model once on inputs from a file or stdin.

Prints one JSON object (output name → nested lists) on stdout. Every failure (a bad
input file, invalid JSON, a model that cannot load, input that does not fit) is one line
on stderr and a non-zero exit code.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click


def register(cli: click.Group, groups: dict[str, click.Group]) -> None:
    """Attach ``predict`` to the ``agent`` group."""
    groups["agent"].add_command(predict_cmd)


_SUFFIXES = (".npy", ".npz", ".json")


@click.command("predict")
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path),
              help="The model file (.onnx or .tflite).")
@click.option("--input", "input_spec", required=True, metavar="INPUT",
              help="A .npy (single-input model), .npz or .json file, or '-' for JSON on stdin.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Intra-op threads (default: the runtime's choice).")
def predict_cmd(*, model_path: Path, input_spec: str, threads: int | None) -> None:
    """Run MODEL on INPUT and print the outputs as one JSON object.

    JSON input (a file or stdin) is an object mapping each input name to nested lists
    of numbers. The output maps each output name to nested lists.
    """
    from edgefleet.agent.runtime import RunnerOptions, load_model
    from edgefleet.agent.runtime.errors import RuntimeFault
    from edgefleet.tools.errors import ToolError

    try:
        inputs = _read_inputs(input_spec)
        with _native_info_filtered(), load_model(
            model_path, RunnerOptions(intra_op_threads=threads)
        ) as runner:
            outputs = runner.predict(inputs)
    except (ToolError, RuntimeFault) as exc:
        raise click.ClickException(str(exc).splitlines()[0]) from exc
    click.echo(json.dumps({name: _jsonable(value) for name, value in outputs.items()}))


def _read_inputs(spec: str) -> Any:
    from edgefleet.tools.arrays import load_arrays, parse_json_arrays
    from edgefleet.tools.errors import ToolInputError

    if spec == "-":
        text = click.get_text_stream("stdin").read()
        return parse_json_arrays(text, "stdin")
    path = Path(spec)
    if path.suffix.lower() not in _SUFFIXES:
        raise ToolInputError(
            f"{path}: unsupported input file type {path.suffix or '(none)'!r}; "
            "use .npy, .npz, .json or '-' for JSON on stdin"
        )
    return load_arrays(path)


def _jsonable(value: Any) -> Any:
    """numpy → plain Python; NaN/inf become null so the output stays valid JSON."""
    import numpy as np

    array = np.asarray(value)
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not finite.all():
            boxed = array.astype(object)
            boxed[~finite] = None
            return boxed.tolist()
    return array.tolist()


@contextlib.contextmanager
def _native_info_filtered() -> Iterator[None]:
    """Drop the runtimes' native ``INFO:`` lines from stderr, keep everything else.

    LiteRT's C++ logger writes "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
    straight to file descriptor 2 and offers no Python switch; the command promises
    nothing but one error line on stderr, so native output is captured meanwhile and
    replayed without its INFO lines.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (embedded use): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().splitlines(keepends=True)
                    if not line.startswith(b"INFO: ")]
            if kept:
                os.write(2, b"".join(kept))
