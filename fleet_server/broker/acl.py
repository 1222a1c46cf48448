"""Pure MQTT topic rules for the edgefleet broker policy (no I/O).

Policy (DESIGN.md, "MQTT contract"):

* every topic lives under ``edgefleet/v1``;
* a device authenticates with ``username == device_id`` and may publish and subscribe
  only inside ``edgefleet/v1/d/{device_id}/`` (the subtree itself and below);
* the server's own service user may publish and subscribe anywhere under
  ``edgefleet/v1/``.

Subscription filters are checked as *filters*: a device filter must not contain a
wildcard at or above its own subtree level (``edgefleet/v1/d/+/status`` and ``#`` are
refused), but wildcards inside its subtree (``edgefleet/v1/d/dev-1/#``) are fine.
The same functions drive the embedded broker and the generated Mosquitto ACL, so the
two brokers enforce one policy.
"""

from __future__ import annotations

import re

TOPIC_ROOT = "edgefleet/v1"
DEVICE_PREFIX = f"{TOPIC_ROOT}/d"

# Letters, digits, '.', '_', '-'; must start with a letter or digit; at most 64 chars.
# No '/', '+', '#', '$', whitespace or NUL: the id is used as a topic level and as a
# Mosquitto ACL %u substitution.
_DEVICE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_TOPIC_BYTES = 65535


class InvalidDeviceId(ValueError):
    """A device id that cannot be used as a single MQTT topic level."""


def is_valid_device_id(device_id: str) -> bool:
    """True when ``device_id`` is safe as one topic level and as a broker username."""
    return _DEVICE_ID_RE.fullmatch(device_id) is not None


def validate_device_id(device_id: str) -> str:
    """Return ``device_id`` unchanged if valid.

    Raises:
        InvalidDeviceId: the id is empty, too long or has characters outside
            ``[A-Za-z0-9._-]`` (or does not start with a letter or digit).
    """
    if not is_valid_device_id(device_id):
        raise InvalidDeviceId(
            f"invalid device id {device_id!r}: use 1-64 characters from [A-Za-z0-9._-], "
            "starting with a letter or digit"
        )
    return device_id


def device_prefix(device_id: str) -> str:
    """The topic prefix a device owns: ``edgefleet/v1/d/{device_id}``.

    Raises:
        InvalidDeviceId: see :func:`validate_device_id`.
    """
    return f"{DEVICE_PREFIX}/{validate_device_id(device_id)}"


def device_topic(device_id: str, channel: str) -> str:
    """``edgefleet/v1/d/{device_id}/{channel}`` for a single-level channel name.

    Raises:
        InvalidDeviceId: bad device id.
        ValueError: the channel is empty or contains '/', '+', '#'.
    """
    if not channel or any(c in channel for c in "/+#\x00"):
        raise ValueError(f"invalid channel {channel!r}")
    return f"{device_prefix(device_id)}/{channel}"


def _is_valid_topic_name(topic: str) -> bool:
    """An MQTT topic *name* (what a PUBLISH carries): no wildcards, no NUL."""
    return (
        bool(topic)
        and len(topic.encode("utf-8")) <= MAX_TOPIC_BYTES
        and not any(c in topic for c in "+#\x00")
    )


def _is_valid_filter(topic_filter: str) -> bool:
    """An MQTT topic *filter* (SUBSCRIBE): '+' and '#' only as whole levels, '#' last."""
    if not topic_filter or "\x00" in topic_filter:
        return False
    if len(topic_filter.encode("utf-8")) > MAX_TOPIC_BYTES:
        return False
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def _within(topic_or_filter: str, prefix: str) -> bool:
    """True when the levels of ``prefix`` match literally at the start.

    The prefix itself counts as inside, as with MQTT's ``prefix/#`` (and Mosquitto's
    ``pattern readwrite edgefleet/v1/d/%u/#``). Wildcards in the checked string can
    only appear after the prefix levels, because those are compared as plain strings.
    """
    return topic_or_filter == prefix or topic_or_filter.startswith(prefix + "/")


def may_publish(username: str, topic: str, *, server_user: str) -> bool:
    """Whether ``username`` may PUBLISH to the topic name ``topic`` (or set it as will)."""
    if not _is_valid_topic_name(topic):
        return False
    if username == server_user:
        return _within(topic, TOPIC_ROOT)
    if not is_valid_device_id(username):
        return False
    return _within(topic, device_prefix(username))


def may_subscribe(username: str, topic_filter: str, *, server_user: str) -> bool:
    """Whether ``username`` may SUBSCRIBE with ``topic_filter`` (a concrete topic name
    is also a valid filter, so this also answers "may receive a message on topic")."""
    if not _is_valid_filter(topic_filter):
        return False
    if username == server_user:
        return _within(topic_filter, TOPIC_ROOT)
    if not is_valid_device_id(username):
        return False
    return _within(topic_filter, device_prefix(username))
