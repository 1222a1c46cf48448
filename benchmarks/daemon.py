"""(e) The agent daemon's hot path: logging + sampling + summarizing per prediction.

Same model, same inputs, same process: the bare ``runner.predict`` against
``Daemon.predict`` (prediction log ring, sampling, hashed inputs, drift summarizing and
the feedback store behind it, with publishing captured in memory). Goal: ≤ 15 µs p50
added per prediction. The amortized figure also counts the flusher thread's work.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from benchmarks.figures import Figure, Goal
from benchmarks.settings import Settings
from edgefleet.agent.daemon.config import load_config
from edgefleet.agent.daemon.daemon import Daemon
from edgefleet.agent.drift import ReferenceProfile
from edgefleet.agent.runtime import load_model
from edgefleet.tools.modelgen import onnx_models

HOT_PATH_GOAL_US = 15.0


def _p50(samples: list[float]) -> float:
    return float(np.percentile(samples, 50)) * 1e6


def bench_daemon_hot_path(n: int = 20_000, store: bool = True) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = root / "mlp.onnx"
        onnx_models.mlp(model, (16, 32, 4), seed=3)
        rng = np.random.default_rng(0)
        ref_x = rng.uniform(-1, 1, (3000, 16)).astype(np.float32)
        with load_model(model) as r:
            ref_y = r.predict({"input": ref_x})["probabilities"]
        profile = root / "p.json"
        profile.write_text(json.dumps(ReferenceProfile.build(
            ref_x, [f"f{i}" for i in range(16)], ref_y, [f"p{i}" for i in range(4)]).to_dict()))
        (root / "agent.toml").write_text(
            f'state_dir = "{root / "state"}"\nlisten = "127.0.0.1:0"\nring_size = {n + 10}\n'
            f'flush_interval_s = 0.25\n[telemetry]\nenabled = false\n[[models]]\n'
            f'name = "mlp"\npath = "{model}"\nversion = "1"\nreference_profile = "{profile}"\n'
            f'sample_rate = 0.01\nlow_confidence = 0.3\ninputs = "hash"\n')
        xs = [{"input": rng.uniform(-1, 1, (1, 16)).astype(np.float32)} for _ in range(n)]
        runner = load_model(model)
        for x in xs[:500]:
            runner.predict(x)
        bare = []
        t_bare = time.perf_counter()
        for x in xs:
            t0 = time.perf_counter()
            runner.predict(x)
            bare.append(time.perf_counter() - t0)
        t_bare = time.perf_counter() - t_bare
        runner.close()
        sent: list[object] = []
        daemon = Daemon(load_config(root / "agent.toml"))
        daemon.start()
        try:
            plog = daemon.predlog
            assert plog is not None
            plog.publish = lambda _ch, body: sent.append(body) or 0
            if not store:
                plog.store = None
            for x in xs[:500]:
                daemon.predict("mlp", x)
            plog.flush()
            full = []
            t_full = time.perf_counter()
            for x in xs:
                t0 = time.perf_counter()
                daemon.predict("mlp", x)
                full.append(time.perf_counter() - t0)
            t_flush = time.perf_counter()
            plog.flush()
            plog.close_window()
            end = time.perf_counter()
            t_full, t_flush = end - t_full, end - t_flush
            # flusher work alone, on a full ring (no concurrency): per prediction
            for x in xs:
                daemon.predict("mlp", x)
            t0 = time.perf_counter()
            plog.flush()
            flush_only = (time.perf_counter() - t0) / n * 1e6
        finally:
            daemon.stop()
    return {
        "bare_p50_us": _p50(bare),
        "daemon_p50_us": _p50(full),
        "added_p50_us": _p50(full) - _p50(bare),
        "added_amortized_us": (t_full - t_bare) / n * 1e6,
        "flusher_us_per_prediction": flush_only,
        "records_published": float(sum(len(b["records"]) for b in sent if "records" in b)),
    }


def run(workdir: Path, settings: Settings) -> Iterator[Figure]:
    """Yield the daemon's hot-path figure."""
    n = 2_000 if settings.heavy_iterations < Settings().heavy_iterations else 20_000
    res = bench_daemon_hot_path(n=n, store=True)
    yield Figure(
        key="daemon.hot-path",
        label="agent daemon: added per prediction over the bare runner, p50",
        value=res["added_p50_us"], unit="µs", goal=HOT_PATH_GOAL_US, direction=Goal.AT_MOST,
        detail=(f"bare {res['bare_p50_us']:.1f} µs, daemon {res['daemon_p50_us']:.1f} µs, "
                f"{n} calls; amortized with the flusher {res['added_amortized_us']:.1f} µs, "
                f"flusher alone {res['flusher_us_per_prediction']:.1f} µs per prediction"),
    )
