"""Flower runtime: the edgefleet ServerApp/ClientApp and real SuperLink/SuperNode processes.

Built on flwr 1.41's Message API (``ClientApp`` with ``@train``/``@evaluate``,
``ServerApp`` with ``@main``, ``flwr.serverapp.strategy``); no simulation engine.

* ``apps``: ``client_app`` and ``server_app`` (component refs
  ``edgefleet.federated.flower.apps:client_app`` / ``:server_app``).
* ``config``: run-config keys, defaults and :class:`RunSettings`.
* ``rounds``: the server's round loop (failures, bytes, durations, checkpoints).
* ``checkpoint``: per-round weights + metrics; resume = a new run from the latest round.
* ``processes``: supervised SuperLink / SuperNodes and :class:`Federation`
  (``submit_run`` / ``wait_run``); ``control``: the Control API client.
* ``data``: a node's local ``.npz`` data; ``tls``: CA, server cert, node keys.

Import the submodules you need; this package imports nothing heavy by itself.
"""
