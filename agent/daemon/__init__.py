"""The device daemon: serves predictions locally, logs, samples and summarizes them.

Modules, each with one job:

* :mod:`.config`: ``agent.toml`` → frozen :class:`DaemonConfig` (validated, clear errors).
* :mod:`.predlog`: the hot path (one append to a bounded ring per prediction) and the
  background flusher that samples, batches and publishes prediction records.
* :mod:`.summarize`: per model version drift windows (vectorized, on the flusher thread).
* :mod:`.feedback`: SQLite (WAL) store of predictions and their true labels.
* :mod:`.stats`: per served version counters, latency percentiles, feedback accuracy,
  shadow agreement and process figures for heartbeats.
* :mod:`.shadow`: runs a shadow candidate on sampled inputs off the request path.
* :mod:`.desired`: the server's ``desired`` hint, parsed (it only wakes the updater).
* :mod:`.http_api`: the local HTTP API (127.0.0.1 or a unix socket), stdlib only.
* :mod:`.client`: a small Python client of that API.
* :mod:`.daemon`: :class:`Daemon` ties them together.

See docs/agent-daemon.md.
"""

from __future__ import annotations

from edgefleet.agent.daemon.errors import ConfigError, DaemonError

__all__ = ["ConfigError", "DaemonError"]
