"""Membership: liveness from heartbeats, driven by a fake clock (the time is an argument)."""

import pytest

from fabric.cluster.membership import Membership
from fabric.cluster.stats import NodeStats

INTERVAL_S = 1.0
LIVENESS_S = 3.0


def stats(name, busy=0):
    return NodeStats(node_id=name.encode(), name=name, control=f"tcp://{name}:1", pub=f"tcp://{name}:2", busy=busy)


def regular(members, name, until, start=0.0):
    """Heartbeats of ``name`` every interval from ``start`` to ``until``."""
    t = start
    while t <= until + 1e-9:
        members.observe(stats(name), now=t)
        t += INTERVAL_S


def test_a_heartbeat_is_new_only_from_an_unknown_node_and_replaces_what_was_known():
    members = Membership(INTERVAL_S, LIVENESS_S)
    assert members.observe(stats("a"), now=0.0) is True
    assert members.observe(stats("b"), now=0.5) is True
    assert members.observe(stats("a", busy=2), now=1.0) is False
    assert [s.busy for s in members.snapshot(now=1.0)] == [2, 0]


def test_a_node_with_regular_heartbeats_expires_liveness_s_after_its_last_one():
    members = Membership(INTERVAL_S, LIVENESS_S)
    regular(members, "a", until=10.0)
    members.observe(stats("b"), now=10.0)  # heard once: the interval is taken as the heartbeat interval
    assert members.next_expiry() == pytest.approx(10.0 + LIVENESS_S)
    assert members.expire(now=12.9) == []
    lost = members.expire(now=13.1)
    assert sorted(s.name for s in lost) == ["a", "b"] and [s.age_s for s in lost] == [pytest.approx(3.1)] * 2
    assert members.snapshot(now=13.1) == [] and members.next_expiry() is None


def test_a_node_whose_heartbeats_jitter_is_given_longer_before_it_is_declared_dead():
    members = Membership(INTERVAL_S, LIVENESS_S)
    t = 0.0
    for i in range(60):  # a starved node: beats 0.3 to 2.2 s apart
        t += (0.3, 2.2)[i % 2]
        members.observe(stats("busy"), now=t)
    regular(members, "idle", until=t, start=t - 59)
    assert members.expire(now=t + LIVENESS_S + 0.1) == [stats("idle")]
    assert members.expire(now=t + LIVENESS_S + 1.0) == []  # a 2.2 s gap is usual for it: 3.1 s is not yet death
    assert members.phi(b"busy", t + LIVENESS_S) < members.phi(b"busy", t + LIVENESS_S + 1.0)
    deadline = members.next_expiry()
    assert t + LIVENESS_S + 1.0 < deadline <= t + LIVENESS_S + 5.612 * INTERVAL_S  # bounded by max_std_s
    assert members.expire(now=deadline + 0.01) == [stats("busy")]


def test_a_node_heard_again_after_expiring_is_new_again_and_its_silence_is_forgotten():
    members = Membership(INTERVAL_S, LIVENESS_S)
    regular(members, "a", until=5.0)
    assert members.expire(now=20.0) == [stats("a")]
    assert members.observe(stats("a"), now=21.0) is True
    assert members.next_expiry() == pytest.approx(21.0 + LIVENESS_S)  # the 16 s gap is not in its history


def test_a_removed_node_is_gone_and_never_expires():
    members = Membership(INTERVAL_S, LIVENESS_S)
    members.observe(stats("a"), now=0.0)
    members.observe(stats("b"), now=0.0)
    assert members.remove(b"a") == stats("a")
    assert members.remove(b"a") is None  # unknown: nothing to remove
    assert members.expire(now=10.0) == [stats("b")]
    assert members.observe(stats("a"), now=11.0) is True


def test_next_expiry_is_when_the_first_node_would_be_declared_dead():
    members = Membership(INTERVAL_S, LIVENESS_S)
    assert members.next_expiry() is None
    members.observe(stats("a"), now=1.0)
    members.observe(stats("b"), now=2.0)
    assert members.next_expiry() == pytest.approx(1.0 + LIVENESS_S)
    members.remove(b"a")
    assert members.next_expiry() == pytest.approx(2.0 + LIVENESS_S)


def test_a_snapshot_says_how_old_each_nodes_last_heartbeat_is():
    members = Membership(INTERVAL_S, LIVENESS_S)
    members.observe(stats("a"), now=1.0)
    members.observe(stats("b"), now=2.5)
    snapshot = members.snapshot(now=4.0)
    assert [(s.name, s.age_s) for s in snapshot] == [("a", pytest.approx(3.0)), ("b", pytest.approx(1.5))]
    assert [s.age_s for s in members.snapshot(now=5.0)] == [pytest.approx(4.0), pytest.approx(2.5)]
    assert members.nodes[b"a"].age_s == 0.0  # the stored stats are not aged in place
