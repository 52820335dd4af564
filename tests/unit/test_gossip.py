"""Gossip: member table, news and whom to watch, driven without sockets or clocks."""

import collections

from fabric.cluster.gossip import FANOUT_RING, LONG_LINKS, MAX_NEWS, TOMBSTONE_S, Gossip, Member


def ctl(i):
    return f"tcp://10.0.0.{i}:1"


def pub(i):
    return f"tcp://10.0.0.{i}:2"


def test_a_later_version_wins_and_at_the_same_version_dead_wins():
    g = Gossip(ctl(0), pub(0))
    assert g.learn((ctl(1), pub(1), 5, True), now=0.0) is True
    assert g.learn((ctl(1), pub(1), 4, False), now=1.0) is False  # older: ignored
    assert g.learn((ctl(1), pub(1), 5, False), now=2.0) is True  # same version, dead: the watcher saw no more
    assert g.learn((ctl(1), pub(1), 5, True), now=3.0) is False  # cannot undo it at that version
    assert g.learn((ctl(1), pub(1), 6, True), now=4.0) is True  # it spoke again: reinstated
    assert g.members[ctl(1)].alive and g.members[ctl(1)].version == 6


def test_hearing_a_node_directly_beats_any_report_of_its_death():
    g = Gossip(ctl(0), pub(0))
    g.learn((ctl(1), pub(1), 9, False), now=0.0)
    assert g.heard(ctl(1), pub(1), 0, now=1.0) is True  # a PEER_HELLO carries no version
    assert g.members[ctl(1)].alive and g.members[ctl(1)].version == 10


def test_a_report_of_this_node_dead_asks_for_a_refutation():
    g = Gossip(ctl(0), pub(0))
    assert g.learn((ctl(0), pub(0), 3, False), now=0.0) is False and g.refuted
    assert ctl(0) not in g.members


def test_news_rides_on_a_bounded_number_of_heartbeats_and_at_most_max_news_at_once():
    g = Gossip(ctl(0), pub(0))
    for i in range(1, 50):
        g.learn((ctl(i), pub(i), 1, True), now=0.0)
    first = g.outgoing()
    assert len(first) == MAX_NEWS
    sent = collections.Counter()
    for _ in range(100):
        sent.update(c for c, _, _, _ in g.outgoing())
    sent.update(c for c, _, _, _ in first)
    assert set(sent) == {ctl(i) for i in range(1, 50)}
    assert max(sent.values()) == g.retransmits() and not g.news


def test_a_node_watches_its_ring_successors_and_a_few_rendezvous_picks_whatever_n():
    for n in (2, 5, 100, 1000):
        g = Gossip(ctl(0), pub(0))
        for i in range(1, n):
            g.learn((f"tcp://h{i:04d}:1", f"tcp://h{i:04d}:2", 1, True), now=0.0)
        watched = g.watched()
        assert len(watched) == min(n - 1, FANOUT_RING + LONG_LINKS) and len(set(watched)) == len(watched)
        ring = sorted([*(c for c, _ in g.alive()), ctl(0)])
        at = ring.index(ctl(0))
        assert watched[:FANOUT_RING] == [ring[(at + k) % n] for k in range(1, min(FANOUT_RING, n - 1) + 1)]


def test_a_rendezvous_pick_changes_only_when_it_dies():
    g = Gossip(ctl(0), pub(0))
    for i in range(1, 200):
        g.learn((ctl(i), pub(i), 1, True), now=0.0)
    before = g.watched()
    spare = next(c for c, _ in g.alive() if c not in before)
    g.declare_dead(spare, now=1.0)
    assert g.watched() == before
    g.declare_dead(before[-1], now=1.0)
    after = g.watched()
    assert after[:-1] == before[:-1] and after[-1] != before[-1]


def test_tombstones_are_purged_after_a_while():
    g = Gossip(ctl(0), pub(0))
    g.learn((ctl(1), pub(1), 1, True), now=0.0)
    g.declare_dead(ctl(1), now=10.0)
    assert g.purge(now=10.0 + TOMBSTONE_S / 2) == []
    assert [m.pub for m in g.purge(now=10.0 + TOMBSTONE_S + 1)] == [pub(1)] and not g.members


def test_news_of_a_death_reaches_every_node_of_400_in_logarithmic_rounds_with_bounded_in_degree():
    """Each round every node publishes its outgoing news to the nodes watching it."""
    n = 400
    nodes = [Gossip(ctl(i) + f"{i}", pub(i) + f"{i}") for i in range(n)]
    for g in nodes:
        for other in nodes:
            if other is not g:
                g.members[other.control] = Member(other.pub, 1, True, 0.0)
    watchers = collections.defaultdict(list)
    for g in nodes:
        for control in g.watched():
            watchers[control].append(g)
    assert max(len(w) for w in watchers.values()) <= 12 and min(len(w) for w in watchers.values()) >= FANOUT_RING
    victim = nodes[0].control
    for w in watchers[victim]:
        w.declare_dead(victim, now=1.0)
    rounds = 0
    while not all(g.control == victim or not g.members[victim].alive for g in nodes):
        rounds += 1
        assert rounds < 20, "news did not spread"
        outgoing = {g.control: g.outgoing() for g in nodes}
        for control, news in outgoing.items():
            for w in watchers[control]:
                for item in news:
                    w.learn(item, now=1.0 + rounds)
    assert rounds <= 10  # a ring alone would need n / FANOUT_RING = 200
