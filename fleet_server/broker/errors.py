"""Errors raised by the embedded broker."""

from __future__ import annotations


class BrokerError(Exception):
    """The embedded MQTT broker could not start, or failed while running."""


class BrokerPortInUse(BrokerError):
    """The broker's listen address is already taken by another process."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(
            f"cannot start the MQTT broker: {host}:{port} is already in use "
            "(stop the other broker or choose another port)"
        )
        self.host = host
        self.port = port
