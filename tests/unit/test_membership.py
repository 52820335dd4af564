"""Membership: liveness from heartbeats, driven by a fake clock (the time is an argument)."""

import pytest

from fabric.cluster.membership import Membership
from fabric.cluster.stats import NodeStats

LIVENESS_S = 3.0


def stats(name, busy=0):
    return NodeStats(node_id=name.encode(), name=name, control=f"tcp://{name}:1", pub=f"tcp://{name}:2", busy=busy)


def test_a_heartbeat_is_new_only_from_an_unknown_node_and_replaces_what_was_known():
    members = Membership(LIVENESS_S)
    assert members.observe(stats("a"), now=0.0) is True
    assert members.observe(stats("b"), now=0.5) is True
    assert members.observe(stats("a", busy=2), now=1.0) is False
    assert [s.busy for s in members.snapshot(now=1.0)] == [2, 0]


def test_a_node_expires_after_liveness_s_of_silence_counted_from_its_last_heartbeat():
    members = Membership(LIVENESS_S)
    members.observe(stats("a"), now=0.0)
    members.observe(stats("b"), now=0.0)
    members.observe(stats("a", busy=1), now=2.0)  # a heartbeat restarts a's silence
    assert members.expire(now=3.0) == []  # b silent for exactly liveness_s: not yet
    assert members.expire(now=3.5) == [stats("b")]
    assert members.expire(now=5.0) == []
    assert members.expire(now=5.5) == [stats("a", busy=1)]  # the last stats it sent
    assert members.snapshot(now=5.5) == [] and members.next_expiry() is None


def test_a_node_heard_again_after_expiring_is_new_again():
    members = Membership(LIVENESS_S)
    members.observe(stats("a"), now=0.0)
    members.expire(now=10.0)
    assert members.observe(stats("a"), now=11.0) is True
    assert members.expire(now=13.0) == []  # its silence counts from its return


def test_a_removed_node_is_gone_and_never_expires():
    members = Membership(LIVENESS_S)
    members.observe(stats("a"), now=0.0)
    members.observe(stats("b"), now=0.0)
    assert members.remove(b"a") == stats("a")
    assert members.remove(b"a") is None  # unknown: nothing to remove
    assert members.expire(now=10.0) == [stats("b")]
    assert members.observe(stats("a"), now=11.0) is True


def test_next_expiry_is_when_the_longest_silent_node_would_be_declared_dead():
    members = Membership(LIVENESS_S)
    assert members.next_expiry() is None
    members.observe(stats("a"), now=1.0)
    members.observe(stats("b"), now=2.0)
    assert members.next_expiry() == pytest.approx(4.0)
    members.observe(stats("a"), now=2.5)  # a speaks again: b is now the first to go
    assert members.next_expiry() == pytest.approx(5.0)
    members.remove(b"b")
    assert members.next_expiry() == pytest.approx(5.5)


def test_a_snapshot_says_how_old_each_nodes_last_heartbeat_is():
    members = Membership(LIVENESS_S)
    members.observe(stats("a"), now=1.0)
    members.observe(stats("b"), now=2.5)
    snapshot = members.snapshot(now=4.0)
    assert [(s.name, s.age_s) for s in snapshot] == [("a", pytest.approx(3.0)), ("b", pytest.approx(1.5))]
    assert [s.age_s for s in members.snapshot(now=5.0)] == [pytest.approx(4.0), pytest.approx(2.5)]
    assert members.nodes[b"a"].age_s == 0.0  # the stored stats are not aged in place
