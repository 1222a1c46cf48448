"""Embedded MQTT broker (amqtt, in-process) and the topic policy it enforces.

``acl`` holds the pure topic rules (the same policy an external Mosquitto enforces with
``pattern readwrite edgefleet/v1/d/%u/#``, see docs/broker.md); ``embedded`` runs amqtt
on its own thread; ``hardened`` and ``plugins`` adapt amqtt to the :class:`BrokerAuth`
hook. Importing this package does
not import amqtt (a [server] extra) until a broker starts.
"""

from .auth import BrokerAuth
from .embedded import EmbeddedBroker
from .errors import BrokerError, BrokerPortInUse

__all__ = ["BrokerAuth", "BrokerError", "BrokerPortInUse", "EmbeddedBroker"]
