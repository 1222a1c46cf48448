"""Wiring ingestion to the server: reference profiles from the registry, inventory into
the devices component, the running handle, and the read queries of the API."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edgefleet.agent.drift import DriftError, ReferenceProfile
from edgefleet.fleet_server.ingest.bodies import ReferenceLookup
from edgefleet.fleet_server.ingest.pipeline import Reason
from edgefleet.fleet_server.ingest.subscriber import DEFAULT_CLIENT_ID, MqttSubscriber
from edgefleet.fleet_server.ingest.writer import (
    COUNTER_NAMES,
    REJECTED_PREFIX,
    IngestConfig,
    Ingester,
    InventoryHook,
)
from edgefleet.fleet_server.services import Services
from edgefleet.fleet_server.storage import Store

log = logging.getLogger(__name__)

EXTRAS_KEY = "ingest"
UNKNOWN_TTL_S = 10.0
_DIGEST = re.compile(r"[0-9a-f]{16,64}")  # ReferenceProfile.digest: hex


def model_reference_profiles(db: Any, model: str) -> dict[str, ReferenceProfile]:
    """Every usable reference profile of ``model``'s registry versions, by digest (read
    from the registry's table; empty without a registry in the database)."""
    if not db["registry_versions"].exists():
        return {}
    profiles: dict[str, ReferenceProfile] = {}
    for version, raw in db.execute("SELECT version, reference_profile FROM registry_versions"
                                   " WHERE model = ? AND reference_profile IS NOT NULL"
                                   " AND reference_profile != ''", [model]).fetchall():
        try:
            data = json.loads(raw)
            if data:
                profile = ReferenceProfile.from_dict(data)
                profiles.setdefault(profile.digest, profile)
        except (ValueError, DriftError) as e:
            log.warning("registry %s %s: unusable reference profile: %s", model, version, e)
    return profiles


class CachedReferences:
    """A :data:`ReferenceLookup` that caches found profiles (registry versions are
    immutable) and remembers misses for ``unknown_ttl_s``.

    ``by_digest(model, digest)`` finds a profile of any version of ``model`` by its digest:
    devices bin every version's drift windows on the profile of the release they were set
    up with, so a window of a newer version may carry an older version's binning.
    """

    def __init__(self, fetch: ReferenceLookup, unknown_ttl_s: float = UNKNOWN_TTL_S,
                 clock: Callable[[], float] = time.monotonic, *,
                 fetch_model: Callable[[str], dict[str, ReferenceProfile]] | None = None
                 ) -> None:
        self._fetch = fetch
        self._fetch_model = fetch_model
        self._ttl = unknown_ttl_s
        self._clock = clock
        self._found: dict[tuple[str, str], ReferenceProfile] = {}
        self._missing: dict[tuple[str, str], float] = {}
        self._by_digest: dict[tuple[str, str], ReferenceProfile] = {}
        self._model_read: dict[str, float] = {}  # model -> when its profiles may be re-read
        self._lock = threading.Lock()

    def by_digest(self, model: str, digest: str) -> ReferenceProfile | None:
        """The profile of some version of ``model`` whose digest is ``digest``.

        The model's profiles are read at most once per ``unknown_ttl_s`` whatever digests
        devices send (a device cannot make the writer re-read the registry per message).
        """
        if _DIGEST.fullmatch(digest) is None:
            return None
        key = (model, digest)
        with self._lock:
            if key in self._by_digest:
                return self._by_digest[key]
            if self._fetch_model is None or self._model_read.get(model, -1.0) > self._clock():
                return None
        found = self._fetch_model(model)
        with self._lock:
            if len(self._model_read) > 10_000:
                self._model_read.clear()
            self._model_read[model] = self._clock() + self._ttl
            self._by_digest.update({(model, d): p for d, p in found.items()})
            return self._by_digest.get(key)

    def __call__(self, model: str, version: str) -> ReferenceProfile | None:
        key = (model, version)
        with self._lock:
            if key in self._found:
                return self._found[key]
            if self._missing.get(key, -1.0) > self._clock():
                return None
        profile = self._fetch(model, version)
        with self._lock:
            if profile is None:
                if len(self._missing) > 10_000:
                    self._missing.clear()
                self._missing[key] = self._clock() + self._ttl
            else:
                self._found[key] = profile
        return profile


def registry_references(services: Services) -> ReferenceLookup:
    """Reference profiles of registry versions (``reference_profile`` as written by
    ``ReferenceProfile.to_dict()``); None for unknown versions or unusable profiles."""
    from edgefleet.fleet_server.registry.api import registry_service
    from edgefleet.fleet_server.registry.errors import NotFoundError

    def fetch(model: str, version: str) -> ReferenceProfile | None:
        try:
            record = registry_service(services).get_version(model, version)
        except NotFoundError:
            return None
        raw = record.get("reference_profile")
        if not raw:
            return None
        try:
            return ReferenceProfile.from_dict(raw)
        except DriftError as e:
            log.warning("registry %s %s: unusable reference profile: %s", model, version, e)
            return None

    return CachedReferences(fetch, fetch_model=lambda model: model_reference_profiles(
        services.store.db, model))


def device_inventory_hook(services: Services) -> InventoryHook:
    """Birth inventory into ``DeviceService.update_inventory`` for enrolled, active devices
    (messages of unknown devices are still ingested, their inventory kept by ingest)."""
    from edgefleet.fleet_server.devices.service import device_service

    devices = device_service(services)
    update = getattr(devices, "update_inventory", None)

    def hook(device_id: str, inventory: Mapping[str, Any]) -> None:
        if update is not None and devices.is_active(device_id):
            update(device_id, inventory)

    return hook


@dataclass
class IngestionHandle:
    """The running ingestion of one server: stop it with :meth:`stop`."""

    ingester: Ingester
    subscriber: MqttSubscriber

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop receiving, write what is queued, stop the writer (idempotent)."""
        self.subscriber.stop()
        self.ingester.stop(timeout_s)

    def wait_connected(self, timeout_s: float = 10.0) -> bool:
        """True once the subscription to the device topics is active."""
        return self.subscriber.subscribed.wait(timeout_s)


def start_ingestion(services: Services, broker_url: str, username: str | None,
                    password: str | None, *, config: IngestConfig | None = None,
                    reference: ReferenceLookup | None = None,
                    client_id: str = DEFAULT_CLIENT_ID,
                    persistent: bool = True) -> IngestionHandle:
    """Start the writer thread and the MQTT subscriber; returns at once (the connection
    is made, and re-made, in the background).

    The handle is kept in ``services.extras["ingest"]`` for the stats API.

    Raises:
        IngestConfigError: bad broker URL or settings.
    """
    ingester = Ingester(services.store,
                        reference if reference is not None else registry_references(services),
                        config=config, on_inventory=device_inventory_hook(services))
    subscriber = MqttSubscriber(ingester, broker_url, username, password,
                                client_id=client_id, persistent=persistent)
    ingester.start()
    subscriber.start()
    handle = IngestionHandle(ingester, subscriber)
    services.extras[EXTRAS_KEY] = handle
    return handle


# -- reads (API) -------------------------------------------------------------------------


def ingest_stats(store: Store, handle: IngestionHandle | None = None) -> dict[str, Any]:
    """Counters (persisted, plus the live ones of a running handle), gaps and devices."""
    values = {r["name"]: int(r["value"]) for r in store.db["ingest_counters"].rows}
    if handle is not None:
        for name, value in handle.ingester.live_counters().items():
            values[name] = values.get(name, 0) + value
    by_reason = {reason.value: values.get(REJECTED_PREFIX + reason.value, 0)
                 for reason in Reason}
    seq = store.db.execute(
        "SELECT COUNT(*), COALESCE(SUM(gaps), 0), COALESCE(SUM(duplicates), 0) "
        "FROM ingest_seq").fetchone()
    missing = sum(_missing(r) for r in store.db["ingest_seq"].rows_where(
        select="floor, seen, max_seq"))
    out: dict[str, Any] = {name: values.get(name, 0) for name in COUNTER_NAMES}
    out["rejected"] = {"total": sum(by_reason.values()), "by_reason": by_reason}
    out["devices"] = int(seq[0])
    out["gaps"] = {"given_up": int(seq[1]), "missing": missing,
                   "total": int(seq[1]) + missing}
    out["running"] = handle is not None
    out["connected"] = bool(handle is not None and handle.subscriber.connected.is_set())
    out["queue_depth"] = handle.ingester.queue_depth if handle is not None else 0
    return out


def _missing(row: Mapping[str, Any]) -> int:
    intervals = json.loads(row["seen"])
    top = max(int(row["max_seq"]), int(row["floor"]))
    return top - int(row["floor"]) - sum(hi - lo + 1 for lo, hi in intervals)


def device_telemetry(store: Store, device_id: str) -> dict[str, Any] | None:
    """Presence, inventory, last heartbeat, latency per model and seq accounting of one
    device; None when nothing was ever ingested from it."""
    db = store.db
    presence = next(iter(db["ingest_presence"].rows_where("device_id = ?", [device_id])), None)
    seq = next(iter(db["ingest_seq"].rows_where("device_id = ?", [device_id])), None)
    if presence is None and seq is None:
        return None
    latency = [{"model": r["model"], "predictions": r["predictions"], "p50_ms": r["p50_ms"],
                "p95_ms": r["p95_ms"], "ts": r["ts"], "updated_at": r["updated_at"]}
               for r in db["ingest_latency"].rows_where("device_id = ?", [device_id],
                                                        order_by="model")]
    p = presence or {}
    return {
        "device_id": device_id,
        "presence": {"state": p.get("state"), "changed_at": p.get("state_changed_at"),
                     "last_seen_at": p.get("last_seen_at"),
                     "last_seen_ts": p.get("last_seen_ts")},
        "inventory": json.loads(p["inventory"]) if p.get("inventory") else None,
        "birth_at": p.get("birth_at"),
        "heartbeat": ({"body": json.loads(p["heartbeat"]), "received_at": p["heartbeat_at"],
                       "ts": p["heartbeat_ts"]} if p.get("heartbeat") else None),
        "latency": latency,
        "sequence": ({"max_seq": seq["max_seq"], "last_bd": seq["last_bd"],
                      "accepted": seq["accepted"], "duplicates": seq["duplicates"],
                      "gaps": seq["gaps"], "missing": _missing(seq)}
                     if seq is not None else None),
    }


def known_device(store: Store, device_id: str) -> bool:
    """Whether any message of ``device_id`` was ever accepted."""
    return bool(store.db["ingest_seq"].count_where("device_id = ?", [device_id]))


def device_predictions(store: Store, device_id: str, *, model: str | None, limit: int,
                       offset: int) -> tuple[list[dict[str, Any]], int]:
    """Stored prediction samples of a device, newest first."""
    where, args = "device_id = ?", [device_id]
    if model is not None:
        where += " AND model = ?"
        args.append(model)
    table = store.db["ingest_predictions"]
    total = table.count_where(where, args)
    rows = table.rows_where(where, args, order_by="id DESC", limit=limit, offset=offset)
    return [{"id": r["id"], "model": r["model"], "version": r["version"], "seq": r["seq"],
             "ts": r["ts"], "received_at": r["received_at"],
             "record": json.loads(r["record"])} for r in rows], total
