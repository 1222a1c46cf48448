"""amqtt 0.11 plugins that route every connect, publish, subscribe and delivery
through a :class:`BrokerAuth` object.

amqtt loads plugins from the broker config's ``plugins`` dict (dotted class path ->
options); the options fill the plugin's ``Config`` dataclass, which is how the live
``BrokerAuth`` object reaches the plugin (no entry points needed).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from amqtt.contexts import Action, BaseContext
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from .auth import BrokerAuth

logger = logging.getLogger(__name__)


def _auth_from(context: BaseContext) -> BrokerAuth:
    config: Any = context.config
    auth = getattr(config, "auth", None)
    if not isinstance(auth, BrokerAuth):
        raise TypeError("edgefleet broker plugin needs a BrokerAuth in its 'auth' option")
    return auth


class EdgefleetAuthPlugin(BaseAuthPlugin):
    """Password check through ``BrokerAuth.authenticate``; no anonymous access.

    Also refuses a CONNECT whose last-will topic the user may not publish to: amqtt
    publishes wills without a topic check, so a device could otherwise forge another
    device's ``status``.
    """

    @dataclass
    class Config:
        auth: Any = None

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self._auth = _auth_from(context)

    async def authenticate(self, *, session: Session) -> bool:
        username, password = session.username, session.password
        if not username or password is None:
            logger.info("MQTT connect refused: no username/password (client %s)", session.client_id)
            return False
        try:
            ok = await asyncio.to_thread(self._auth.authenticate, username, password)
        except Exception:
            logger.exception("BrokerAuth.authenticate failed for %r; refusing", username)
            return False
        if not ok:
            logger.info("MQTT connect refused: bad credentials for %r", username)
            return False
        if session.will_flag and not _check(self._auth.may_publish, username, session.will_topic):
            logger.info(
                "MQTT connect refused: %r may not use will topic %r", username, session.will_topic
            )
            return False
        return True


class EdgefleetTopicPlugin(BaseTopicPlugin):
    """Publish, subscribe and per-delivery (receive) checks through ``BrokerAuth``."""

    @dataclass
    class Config:
        auth: Any = None

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self._auth = _auth_from(context)

    async def topic_filtering(
        self,
        *,
        session: Session | None = None,
        topic: str | None = None,
        action: Action | None = None,
    ) -> bool:
        username = session.username if session is not None else None
        if not username or not topic:
            return False
        if action == Action.PUBLISH:
            allowed = _check(self._auth.may_publish, username, topic)
        elif action in (Action.SUBSCRIBE, Action.RECEIVE):
            allowed = _check(self._auth.may_subscribe, username, topic)
        else:
            allowed = False
        if not allowed:
            logger.info("MQTT %s refused for %r on %r", action, username, topic)
        return allowed


def _check(rule: Any, username: str, topic: str | None) -> bool:
    if not topic:
        return False
    try:
        return bool(rule(username, topic))
    except Exception:
        logger.exception("BrokerAuth rule failed for %r on %r; refusing", username, topic)
        return False
