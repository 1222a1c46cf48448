"""Fixtures for the embedded broker tests: a real EmbeddedBroker on a free loopback port
and real paho-mqtt clients that are closed after each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from edgefleet.fleet_server.broker import EmbeddedBroker
from tests.fleet_server.broker.helpers import PASSWORDS, Client, ClientFactory, DictAuth


@pytest.fixture
def auth() -> DictAuth:
    return DictAuth(PASSWORDS)


@pytest.fixture
def broker(auth: DictAuth) -> Iterator[EmbeddedBroker]:
    embedded = EmbeddedBroker("127.0.0.1", 0, auth)
    embedded.start()
    try:
        yield embedded
    finally:
        embedded.stop()


@pytest.fixture
def client(broker: EmbeddedBroker) -> Iterator[ClientFactory]:
    """``client("dev-a")`` -> a connected paho client with that user's password;
    ``client("dev-a", password="x", connect=False)`` for refusals."""
    made: list[Client] = []

    def factory(
        username: str | None,
        password: str | None = None,
        *,
        connect: bool = True,
        **options: object,
    ) -> Client:
        if password is None and username is not None:
            password = PASSWORDS.get(username)
        made.append(Client(broker.port, username, password, **options))  # type: ignore[arg-type]
        return made[-1].connect() if connect else made[-1]

    yield factory
    for each in made:
        each.close()
