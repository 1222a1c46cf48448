"""FastClient: buffered reads, batched PUBACKs and joined writes, against a real Mosquitto."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edgefleet.agent.telemetry.transport import BufferedSocket, FastClient
from tests.conftest import find_mosquitto, free_port, wait_for_port


def test_buffered_socket_serves_small_reads_from_one_recv() -> None:
    a, b = socket.socketpair()
    try:
        wrapped = BufferedSocket(b)
        a.sendall(b"\x40\x02\x00\x01" + b"\x40\x02\x00\x02")
        time.sleep(0.05)
        assert wrapped.recv(1) == b"\x40"
        assert wrapped.pending() == 7  # the rest came with the first recv
        assert wrapped.recv(1) == b"\x02"
        assert wrapped.recv(2) == b"\x00\x01"
        assert wrapped.recv(10) == b"\x40\x02\x00\x02"  # a short read, as from a socket
        assert wrapped.pending() == 0
        assert wrapped.fileno() == b.fileno() and wrapped.raw is b
        a.close()
        assert wrapped.recv(1) == b""  # end of stream passes through
    finally:
        b.close()


def _more(items: list[int], than: int) -> bool:
    return len(items) > than


def _wait(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class _Subscriber:
    """A persistent-session FastClient subscriber with manual acks."""

    def __init__(self, mosquitto: Any, client_id: str, topic: str) -> None:
        self.mids: list[int] = []
        self.payloads: list[bytes] = []
        self.subscribed = threading.Event()
        self.client = FastClient(CallbackAPIVersion.VERSION2, client_id=client_id,
                                 clean_session=False)
        self.client.manual_ack_set(True)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.connect(mosquitto.host, mosquitto.port)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        self.mids.append(msg.mid)
        self.payloads.append(bytes(msg.payload))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_batched_pubacks_settle_the_messages_at_the_broker(mosquitto: Any) -> None:
    """Messages acknowledged with ack_many are not delivered again to the persistent
    session (without the PUBACKs the broker re-sends them on reconnect)."""
    name = f"t/{uuid.uuid4().hex[:8]}"
    client_id = f"fast-{uuid.uuid4().hex[:8]}"
    sub = _Subscriber(mosquitto, client_id, f"{name}/#")
    publisher = FastClient(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    published: list[int] = []
    publisher.on_publish = lambda c, u, mid, *a: published.append(mid)
    publisher.connect(mosquitto.host, mosquitto.port)
    publisher.loop_start()
    try:
        for i in range(300):  # joined into few writes by the publisher
            publisher.publish(f"{name}/x", f"{i}".encode(), qos=1)
        assert _wait(lambda: len(published) == 300), "not every publish was PUBACKed"
        # the broker sends a window of messages at a time: acknowledge as they come
        done = 0
        while len(set(sub.payloads)) < 300:
            assert _wait(partial(_more, sub.mids, done)), "the broker stopped delivering"
            upto = len(sub.mids)
            sub.client.ack_many(sub.mids[done:upto])
            done = upto
        time.sleep(0.3)
        sub.client.ack_many(sub.mids[done:])
        time.sleep(0.3)
        sub.close()
        again = _Subscriber(mosquitto, client_id, f"{name}/#")
        try:
            time.sleep(1.0)
            assert again.payloads == []
        finally:
            again.close()
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        cleaner = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                              clean_session=True)
        cleaner.connect(mosquitto.host, mosquitto.port)
        cleaner.disconnect()


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A CA-less self-signed certificate for 127.0.0.1: (cert, key) PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_tls_connection_through_the_read_buffer(tmp_path: Path) -> None:
    """Over TLS the buffer sits on the SSL socket: many small packets in both directions."""
    cert, key = _self_signed(tmp_path)
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                    f"certfile {cert}\nkeyfile {key}\nmax_queued_messages 0\n"
                    f"log_dest file {tmp_path / 'mosquitto.log'}\n"
                    # as root Mosquitto drops to user "mosquitto", who cannot read the key
                    + ("user root\n" if os.geteuid() == 0 else ""))
    proc = subprocess.Popen([find_mosquitto(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port)
        got: list[bytes] = []
        acked: list[int] = []
        ready = threading.Event()
        client = FastClient(CallbackAPIVersion.VERSION2, client_id=f"tls-{uuid.uuid4().hex[:8]}")
        client.tls_set(ca_certs=str(cert))
        client.on_message = lambda c, u, m: got.append(bytes(m.payload))
        client.on_publish = lambda c, u, mid, *a: acked.append(mid)
        client.on_subscribe = lambda *a: ready.set()
        client.on_connect = lambda c, *a: c.subscribe("tls/#", qos=1)
        client.connect("127.0.0.1", port)
        client.loop_start()
        try:
            assert ready.wait(10)
            for i in range(500):
                client.publish("tls/x", f"{i}".encode(), qos=1)
            assert _wait(lambda: len(acked) == 500 and len(got) == 500)
            assert got == [f"{i}".encode() for i in range(500)]
        finally:
            client.disconnect()
            client.loop_stop()
    finally:
        proc.terminate()
        proc.wait(10)
