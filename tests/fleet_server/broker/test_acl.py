"""The pure topic policy (acl.py): examples and properties."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from edgefleet.fleet_server.broker import acl

SERVER = "edgefleet-server"


def matches(topic_filter: str, topic: str) -> bool:
    """MQTT 3.1.1 topic matching (section 4.7), written independently of amqtt."""
    filter_levels, topic_levels = topic_filter.split("/"), topic.split("/")
    if topic.startswith("$") and filter_levels[0] in ("+", "#"):
        return False
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(topic_levels) or level not in ("+", topic_levels[index]):
            return False
    return len(filter_levels) == len(topic_levels)


def in_subtree(topic: str, device_id: str) -> bool:
    return topic.split("/")[:4] == ["edgefleet", "v1", "d", device_id]


device_ids = st.builds(
    str.__add__,
    st.sampled_from("aZ09"),
    st.text(alphabet="abz09._-", max_size=12),
)
level_alphabet = st.sampled_from(
    ["edgefleet", "v1", "d", "dev-a", "dev-b", "x", "", "+", "#", "$SYS", "dev-a+", "a#"]
)
levels = st.one_of(level_alphabet, st.text(alphabet="ab/+#-$ \x00", max_size=6))
raw_topics = st.lists(levels, min_size=1, max_size=7).map("/".join)
# Biased towards the interesting region: near, at and just inside a device's subtree.
topics = st.one_of(
    raw_topics,
    raw_topics.map(lambda rest: f"edgefleet/v1/d/{rest}"),
    raw_topics.map(lambda rest: f"edgefleet/v1/d/dev-a/{rest}"),
    raw_topics.map(lambda rest: f"edgefleet/v1/d/dev-a{rest}"),
)


@st.composite
def wildcarded(draw: st.DrawFn) -> str:
    """A topic under some device's subtree with random levels turned into wildcards."""
    parts = ["edgefleet", "v1", "d", draw(st.sampled_from(["dev-a", "dev-b"]))]
    parts += draw(st.lists(st.sampled_from(["status", "cmd", "x"]), max_size=3))
    index = draw(st.integers(0, len(parts)))
    if draw(st.booleans()):
        parts = [*parts[:index], "#"]
    elif index < len(parts):
        parts[index] = "+"
    return "/".join(parts)


topics = st.one_of(topics, wildcarded())
topic_names = topics.filter(lambda t: "+" not in t and "#" not in t and "\x00" not in t)


@settings(max_examples=300, deadline=None)
@given(device_ids, topics)
def test_a_device_never_publishes_outside_its_subtree(device_id: str, topic: str) -> None:
    topic = topic.replace("dev-a", device_id)
    if acl.may_publish(device_id, topic, server_user=SERVER):
        assert in_subtree(topic, device_id)
        assert "+" not in topic and "#" not in topic


@settings(max_examples=300, deadline=None)
@given(device_ids, topics, topic_names)
@example("dev-a", "edgefleet/v1/d/+/status", "edgefleet/v1/d/dev-b/status")
@example("dev-a", "edgefleet/v1/d/#", "edgefleet/v1/d/dev-b/status")
@example("dev-a", "edgefleet/v1/d/dev-a+/#", "edgefleet/v1/d/dev-ab/status")
def test_a_device_filter_never_matches_a_topic_outside_its_subtree(
    device_id: str, topic_filter: str, topic: str
) -> None:
    topic_filter = topic_filter.replace("dev-a", device_id)
    topic = topic.replace("dev-a", device_id)
    if acl.may_subscribe(device_id, topic_filter, server_user=SERVER):
        # No wildcard at or above the device level ...
        assert "+" not in topic_filter.split("/")[:4] and "#" not in topic_filter.split("/")[:4]
        # ... so whatever it matches is the device's own.
        if matches(topic_filter, topic):
            assert in_subtree(topic, device_id)


@settings(max_examples=100, deadline=None)
@given(device_ids, st.lists(st.text(alphabet="abc-_.09", min_size=1, max_size=8), max_size=4))
def test_everything_in_the_own_subtree_is_allowed(device_id: str, rest: list[str]) -> None:
    topic = "/".join([acl.device_prefix(device_id), *rest])
    assert acl.may_publish(device_id, topic, server_user=SERVER)
    assert acl.may_subscribe(device_id, topic, server_user=SERVER)
    assert acl.may_subscribe(device_id, topic + "/#", server_user=SERVER)
    assert acl.may_subscribe(device_id, topic + "/+", server_user=SERVER)


@settings(max_examples=100, deadline=None)
@given(topics)
def test_the_server_user_stays_under_the_root(topic: str) -> None:
    if acl.may_publish(SERVER, topic, server_user=SERVER):
        assert topic.split("/")[:2] == ["edgefleet", "v1"]
    if acl.may_subscribe(SERVER, topic, server_user=SERVER):
        assert topic.split("/")[:2] == ["edgefleet", "v1"]


@pytest.mark.parametrize(
    ("topic", "allowed"),
    [
        ("edgefleet/v1/d/dev-a/status", True),
        ("edgefleet/v1/d/dev-a", True),
        ("edgefleet/v1/d/dev-a/a/b/c", True),
        ("edgefleet/v1/d/dev-b/status", False),
        ("edgefleet/v1/d/dev-ab/status", False),  # a prefix of another id is not enough
        ("edgefleet/v1/d/dev-a+/status", False),
        ("edgefleet/v1/d/dev-a/+", False),  # wildcards are not topic names
        ("edgefleet/v1/d/dev-a/#", False),
        ("edgefleet/v1/d", False),
        ("edgefleet/v1/fleet", False),
        ("edgefleet/v2/d/dev-a/status", False),
        ("/edgefleet/v1/d/dev-a/status", False),
        ("$SYS/broker", False),
        ("", False),
        ("edgefleet/v1/d/dev-a/\x00", False),
    ],
)
def test_device_publish_examples(topic: str, allowed: bool) -> None:
    assert acl.may_publish("dev-a", topic, server_user=SERVER) is allowed


@pytest.mark.parametrize(
    ("topic_filter", "allowed"),
    [
        ("edgefleet/v1/d/dev-a/#", True),
        ("edgefleet/v1/d/dev-a/+", True),
        ("edgefleet/v1/d/dev-a/+/x", True),
        ("edgefleet/v1/d/dev-a/cmd", True),
        ("edgefleet/v1/d/+/cmd", False),
        ("edgefleet/v1/d/#", False),
        ("edgefleet/v1/#", False),
        ("#", False),
        ("+/v1/d/dev-a/cmd", False),
        ("edgefleet/v1/d/dev-b/#", False),
        ("edgefleet/v1/d/dev-a/#/x", False),  # malformed
        ("edgefleet/v1/d/dev-a/c#", False),
        ("edgefleet/v1/d/dev-a/+x", False),
    ],
)
def test_device_subscribe_examples(topic_filter: str, allowed: bool) -> None:
    assert acl.may_subscribe("dev-a", topic_filter, server_user=SERVER) is allowed


def test_server_user_examples() -> None:
    assert acl.may_subscribe(SERVER, "edgefleet/v1/#", server_user=SERVER)
    assert acl.may_subscribe(SERVER, "edgefleet/v1/d/+/status", server_user=SERVER)
    assert acl.may_publish(SERVER, "edgefleet/v1/d/dev-a/desired", server_user=SERVER)
    assert not acl.may_subscribe(SERVER, "#", server_user=SERVER)
    assert not acl.may_subscribe(SERVER, "+/v1/#", server_user=SERVER)
    assert not acl.may_publish(SERVER, "other/topic", server_user=SERVER)
    # The server's privileges come from its username, not from looking like a device.
    assert not acl.may_publish("edgefleet-server2", "edgefleet/v1/x", server_user=SERVER)


@pytest.mark.parametrize(
    "bad", ["", "a/b", "+", "#", "dev a", "-dev", ".x", "x" * 65, "dév", "a\x00"]
)
def test_invalid_device_ids_are_refused(bad: str) -> None:
    assert not acl.is_valid_device_id(bad)
    with pytest.raises(acl.InvalidDeviceId):
        acl.device_prefix(bad)
    assert not acl.may_publish(bad, f"edgefleet/v1/d/{bad}/status", server_user=SERVER)
    assert not acl.may_subscribe(bad, f"edgefleet/v1/d/{bad}/#", server_user=SERVER)


def test_device_topic_builds_single_level_channels() -> None:
    assert acl.device_topic("dev-a", "status") == "edgefleet/v1/d/dev-a/status"
    for channel in ("", "a/b", "+", "#"):
        with pytest.raises(ValueError):
            acl.device_topic("dev-a", channel)
