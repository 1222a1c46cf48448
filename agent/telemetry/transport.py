"""A paho-mqtt 2.x ``Client`` that reads the socket in large chunks and acks in batches.

Why: paho reads every packet with three or four ``recv`` calls (type byte, length bytes,
body) after a ``select``, and writes every PUBACK with its own ``send``. Each of those
system calls releases the GIL, and getting it back waits for whichever other thread
holds it (up to ``sys.getswitchinterval()``, 5 ms) — so a process whose other threads
are busy (the ingestion writer, an agent's producers) receives far fewer messages per
second than paho alone could. Measured on the ingestion benchmark (docs/benchmarks.md,
docs/ingest.md).

* :class:`BufferedSocket` wraps the connected socket: one ``recv`` of up to 64 KiB is
  served to paho's small reads from memory, and ``pending()`` reports the buffered
  bytes, the hook paho already uses for TLS, so its loop does not wait in ``select``
  while packets are buffered.
* :class:`FastClient.loop_read` keeps reading while whole packets are buffered (bounded
  per call, so writes and keepalives are still serviced), handing the GIL over every
  ``YIELD_EVERY`` packets: without a system call in between, other threads (an
  in-process broker's event loop) would otherwise wait up to the switch interval.
* :meth:`FastClient.ack_many` queues the PUBACKs of many messages as one write.
* Writes: queued packets that need no bookkeeping after their write (everything but
  QoS 0 publishes and DISCONNECT) go out joined, up to 64 KiB per ``send``; a packet
  queued behind others does not write another wake-up byte to paho's loop (the one
  written for the first still stands: the loop writes until the queue is empty).

Only how bytes move changes; packets, callbacks and states are paho's own. The
overridden methods (``_create_socket``, ``loop_read``, ``_packet_queue``,
``_packet_write``) and the attributes they use (``_sock``, ``_out_packet``,
``_sockpairW``) are paho 2.2 internals: this module is the one place that depends on
them (tests/agent/telemetry/test_transport.py exercises each path against Mosquitto,
TLS included).
"""

from __future__ import annotations

import contextlib
import struct
import time
from collections.abc import Iterable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

_READ_CHUNK = 64 * 1024
#: Packets handled per ``loop_read`` at most (then writes, keepalive, stop requests).
_MAX_PACKETS_PER_READ = 2000
#: Packets handled between two voluntary GIL hand-overs (``time.sleep(0)``).
YIELD_EVERY = 64
_PUBACK = 0x40
_PUBLISH = 0x30
_DISCONNECT = 0xE0
_WRITE_CHUNK = 64 * 1024


class BufferedSocket:
    """A socket (or TLS socket) whose reads are served from a 64 KiB buffer."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    @property
    def raw(self) -> Any:
        """The wrapped socket."""
        return self._sock

    def recv(self, n: int) -> bytes:
        pos, buf = self._pos, self._buf
        if pos >= len(buf):
            data = self._sock.recv(max(n, _READ_CHUNK))
            if len(data) <= n:
                return bytes(data)
            self._buf, self._pos = data, n
            return bytes(data[:n])
        end = min(pos + n, len(buf))
        self._pos = end
        return buf[pos:end]

    def pending(self) -> int:
        """Bytes readable without touching the network (buffered here or in TLS)."""
        inner = getattr(self._sock, "pending", None)
        return len(self._buf) - self._pos + (inner() if inner is not None else 0)

    def fileno(self) -> int:
        return int(self._sock.fileno())

    def __getattr__(self, name: str) -> Any:  # send, close, setblocking, settimeout...
        return getattr(self._sock, name)


class FastClient(paho.Client):
    """``paho.Client`` with buffered reads and batched PUBACKs (see the module doc)."""

    def _create_socket(self) -> Any:
        return BufferedSocket(super()._create_socket())

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = super().loop_read(max_packets)
        budget = _MAX_PACKETS_PER_READ
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and budget > 0:
            sock = self._sock
            if not isinstance(sock, BufferedSocket) or sock.pending() <= 0:
                break
            rc = super().loop_read(1)
            budget -= 1
            if budget % YIELD_EVERY == 0:
                time.sleep(0)
        return rc

    def _packet_queue(self, command: int, packet: bytes | bytearray, mid: int, qos: int,
                      info: paho.MQTTMessageInfo | None = None) -> MQTTErrorCode:
        # paho 2.2's _packet_queue, waking the loop only for the first queued packet
        queue = self._out_packet
        queue.append({"command": command, "mid": mid, "qos": qos, "pos": 0,
                      "to_process": len(packet), "packet": packet, "info": info})
        if self._sockpairW is not None and len(queue) == 1:
            with contextlib.suppress(BlockingIOError):
                self._sockpairW.send(b"0")
        if self._thread is None and self._on_socket_register_write is None \
                and self._in_callback_mutex.acquire(False):
            self._in_callback_mutex.release()
            return self.loop_write()
        self._call_socket_register_write()
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _packet_write(self) -> MQTTErrorCode:
        queue = self._out_packet
        parts: list[bytes | bytearray] = []
        size = 0
        while size < _WRITE_CHUNK:
            try:
                head = queue.popleft()
            except IndexError:
                break
            command = head["command"] & 0xF0
            if head["pos"] or command == _DISCONNECT or (command == _PUBLISH
                                                         and head["qos"] == 0):
                queue.appendleft(head)  # written (and accounted for) by paho itself
                break
            parts.append(head["packet"])
            size += len(head["packet"])
        if len(parts) == 1:
            queue.appendleft({"command": _PUBACK, "mid": 0, "qos": 1, "pos": 0,
                              "to_process": size, "packet": parts[0], "info": None})
        elif parts:
            queue.appendleft({"command": _PUBACK, "mid": 0, "qos": 1, "pos": 0,
                              "to_process": size, "packet": b"".join(parts), "info": None})
        return super()._packet_write()

    def raw_socket(self) -> Any:
        """The connected socket itself (not the read buffer around it), or None."""
        sock = self._sock
        return sock.raw if isinstance(sock, BufferedSocket) else sock

    def ack_many(self, mids: Iterable[int]) -> MQTTErrorCode:
        """Acknowledge QoS 1 messages (``manual_ack`` mode) with one queued write."""
        packet = b"".join(struct.pack("!BBH", _PUBACK, 2, mid) for mid in mids)
        if not packet:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return self._packet_queue(_PUBACK, packet, 0, 0)
