"""Helpers of the daemon tests: model files, reference profiles, agent.toml writers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.agent.daemon.config import DaemonConfig, load_config
from edgefleet.agent.drift import ReferenceProfile
from edgefleet.agent.runtime import load_model
from edgefleet.tools.modelgen import onnx_models
from edgefleet.tools.modelgen.digits import build_digits_models


@dataclass(frozen=True)
class Models:
    mlp: Path  # input [N, 16] float32 -> probabilities [N, 4]
    mlp_profile: Path
    digits: Path  # input [N, 64] -> label int64 [N], probabilities [N, 10]
    digits_x: np.ndarray
    digits_y: np.ndarray


def build_models(root: Path) -> Models:
    mlp = root / "mlp.onnx"
    onnx_models.mlp(mlp, (16, 32, 4), seed=3)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(3000, 16)).astype(np.float32)
    with load_model(mlp) as runner:
        y = runner.predict({"input": x})["probabilities"]
    profile = ReferenceProfile.build(x, [f"f{i}" for i in range(16)], y,
                                     [f"p{i}" for i in range(4)])
    profile_path = root / "mlp.profile.json"
    profile_path.write_text(json.dumps(profile.to_dict()))
    art = build_digits_models(root / "digits", hidden=(16,))
    return Models(mlp, profile_path, art.float_model, np.load(art.eval_x),
                  np.load(art.eval_y))


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str | Path):
        return json.dumps(str(v))
    return repr(v)


def write_config(path: Path, top: dict[str, Any], models: list[dict[str, Any]],
                 tables: dict[str, dict[str, Any]] | None = None) -> Path:
    lines = [f"{k} = {toml_value(v)}" for k, v in top.items()]
    for name, table in (tables or {}).items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    for m in models:
        lines.append("[[models]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in m.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def daemon_config(tmp: Path, models: Models, *, listen: str = "127.0.0.1:0",
                  mlp: dict[str, Any] | None = None, telemetry: bool = False,
                  **top: Any) -> DaemonConfig:
    """A config serving ``mlp`` (with drift profile) and ``digits``."""
    mlp_table = {"name": "mlp", "path": models.mlp, "version": "1.0.0",
                 "reference_profile": models.mlp_profile, "sample_rate": 0.0,
                 **(mlp or {})}
    digits = {"name": "digits", "path": models.digits, "version": "2.0.0",
              "sample_rate": 0.0}
    return load_config(write_config(
        tmp / "agent.toml",
        {"state_dir": tmp / "state", "listen": listen, "flush_interval_s": 0.05, **top},
        [mlp_table, digits], {"telemetry": {"enabled": telemetry}}))
