"""The client's decisions about nodes, driven with fake heartbeats and a fake clock.

:class:`ClusterView` decides whom to greet, which nodes are lost, back from the
dead or paused, and when queued work has waited too long for a worker; the
I/O loop only performs its :class:`Actions`.  No socket is opened here.
"""

from dataclasses import replace

import pytest
from test_ventilator import map_batch

from fabric.client.cluster_view import Actions, ClusterView
from fabric.client.ventilator import Ventilator
from fabric.cluster.stats import NodeStats
from fabric.errors import NoNodesError

INTERVAL_S = 1.0
LIVENESS_S = 3.0
TIMEOUT_S = 30.0


def heartbeat(name, *, accepting=True, peers=(), workers=2):
    """``peers``: the members its news reports alive."""
    return NodeStats(node_id=name.encode(), name=name, control=f"tcp://{name}:1", pub=f"tcp://{name}:2",
                     workers=workers, accepting=accepting,
                     news=tuple((f"tcp://{p}:1", f"tcp://{p}:2", 1, True) for p in peers))


def make_view(refusals=str):
    return ClusterView(INTERVAL_S, LIVENESS_S, TIMEOUT_S, refusals)


def never_asked():
    raise AssertionError("has_pending asked while workers are attached")


def test_a_seed_is_greeted_and_asked_for_its_members_once_and_the_members_it_lists_are_greeted():
    view = make_view()
    first = view.seed("tcp://a:1")
    assert first.greet == first.survey == ("tcp://a:1",)
    assert view.seed("tcp://a:1") == Actions()  # known: its DEALER exists
    listed = view.members_listed([heartbeat("a"), heartbeat("b"), heartbeat("c")])
    assert listed.greet == ("tcp://b:1", "tcp://c:1") and not listed.members_changed  # greeted, not yet heard
    assert view.control_of(b"b") is None


def test_a_heartbeat_greets_its_node_and_the_peers_it_names_once():
    view = make_view()
    assert view.seed("tcp://a:1").greet == ("tcp://a:1",)
    actions = view.heartbeat(heartbeat("a", peers=["b", "c"]), now=0.0)
    assert actions.greet == ("tcp://b:1", "tcp://c:1")
    assert actions.members_changed and not actions.rejoin and not actions.lost
    again = view.heartbeat(heartbeat("a", peers=["b", "c"]), now=0.5)
    assert (again.greet, again.members_changed) == ((), False)
    assert view.control_of(b"a") == "tcp://a:1" and view.control_of(b"b") is None  # b: greeted, not yet heard


def test_a_stall_of_the_client_is_no_nodes_silence():
    view = make_view()
    view.heartbeat(heartbeat("a"), now=0.0)
    view.tick(0.0, 2, never_asked)
    actions = view.tick(5.0, 2, never_asked)  # the next HELLO was due at 1.0: the client was stalled 4 s
    assert not actions.lost and actions.greet  # a is asked again, and judged from now
    assert view.next_deadline() == pytest.approx(1.0 + 4.0 + 1.0)  # the next HELLO; a's expiry is at 3.0 + 4.0
    assert not view.tick(6.0, 2, never_asked).lost
    assert view.tick(7.05, 2, never_asked).lost == ((b"a", "node a silent for 7.0 s, declared dead"),)


def test_members_reported_alive_in_a_nodes_news_are_greeted_and_dead_ones_are_not():
    view = make_view()
    news = (("tcp://d:1", "tcp://d:2", 7, True), ("tcp://e:1", "tcp://e:2", 7, False))
    assert view.heartbeat(replace(heartbeat("a"), news=news), now=0.0).greet == ("tcp://a:1", "tcp://d:1")


def test_every_node_is_greeted_each_interval_and_the_deadline_says_when():
    view = make_view()
    view.seed("tcp://a:1")
    view.heartbeat(heartbeat("b"), now=0.0)
    assert view.tick(0.0, workers=2, has_pending=never_asked).greet == ("tcp://a:1", "tcp://b:1")
    assert view.next_deadline() == INTERVAL_S
    assert view.tick(0.5, workers=2, has_pending=never_asked).greet == ()
    assert view.tick(INTERVAL_S, workers=2, has_pending=never_asked).greet == ("tcp://a:1", "tcp://b:1")


def test_a_silent_node_is_lost_after_the_liveness_timeout():
    view = make_view()
    view.heartbeat(heartbeat("a"), now=0.0)
    for t in (0.0, 1.0, 2.0):  # HELLO on time: a had every chance to answer
        view.tick(t, 2, never_asked)
    view.heartbeat(heartbeat("b"), now=2.0)
    view.tick(2.5, 2, never_asked)
    assert [(n.name, n.age_s) for n in view.nodes(2.5)] == [("a", 2.5), ("b", 0.5)]
    # a's expiry (3.0: regular heartbeats so far) comes before the next HELLO (3.5)
    assert view.next_deadline() == pytest.approx(LIVENESS_S)
    assert not view.tick(LIVENESS_S - 0.01, 2, never_asked).lost
    actions = view.tick(LIVENESS_S + 0.01, 2, never_asked)
    assert actions.lost == ((b"a", "node a silent for 3.0 s, declared dead"),) and actions.members_changed
    assert [n.name for n in view.nodes(LIVENESS_S + 0.01)] == ["b"]
    assert view.reported_workers() == 2


def test_a_node_back_from_the_dead_is_told_goodbye_then_hello_once():
    view = make_view()
    view.heartbeat(heartbeat("a"), now=0.0)
    assert view.tick(LIVENESS_S + 1, 2, never_asked).lost
    back = view.heartbeat(heartbeat("a"), now=LIVENESS_S + 2)
    assert back.rejoin == ("tcp://a:1",) and back.members_changed
    assert back.greet == ()  # its DEALER is still connected
    assert view.heartbeat(heartbeat("a"), now=LIVENESS_S + 3).rejoin == ()


def test_a_node_that_left_is_lost_at_once_and_not_treated_as_back_from_the_dead():
    view = make_view()
    view.heartbeat(heartbeat("a"), now=0.0)
    actions = view.node_left(b"a")
    assert actions.lost == ((b"a", "node a left"),) and actions.members_changed
    assert view.control_of(b"a") is None
    assert view.node_left(b"unknown").lost == ((b"unknown", "node ? left"),)  # its workers may have attached
    assert view.heartbeat(heartbeat("a"), now=1.0).rejoin == ()


def test_a_node_over_its_load_limit_is_paused_until_it_accepts_again():
    view = make_view()
    assert view.heartbeat(heartbeat("a"), now=0.0).pause == ()
    assert view.heartbeat(heartbeat("a", accepting=False), now=1.0).pause == (b"a",)
    assert view.heartbeat(heartbeat("a", accepting=False), now=2.0).pause == ()  # said once
    resumed = view.heartbeat(heartbeat("a"), now=3.0)
    assert (resumed.pause, resumed.resume) == ((), (b"a",))
    assert view.heartbeat(heartbeat("b", accepting=False), now=3.0).pause == (b"b",)  # new and loaded


def test_a_paused_node_that_is_lost_and_returns_accepting_gets_batches_again():
    # The view says "pause" once; the ventilator forgets the pause with the node, so a
    # node that returns accepting (nothing to say: new nodes start accepting) is served.
    view, vent = make_view(), Ventilator()
    vent.worker_ready(b"w1", 1, b"a")
    for node_id in view.heartbeat(heartbeat("a", accepting=False), now=0.0).pause:
        vent.pause(node_id)
    vent.enqueue(map_batch(range(2)))
    assert list(vent.dispatch()) == []
    for node_id, _ in view.node_left(b"a").lost:
        vent.node_lost(node_id)
    returned = view.heartbeat(heartbeat("a"), now=1.0)
    assert (returned.pause, returned.resume) == ((), ())
    vent.worker_ready(b"w1", 1, b"a")
    assert [w for w, _, _ in vent.dispatch()] == [b"w1"]


def test_queued_work_without_a_worker_fails_after_the_connect_timeout():
    view = make_view()  # once a node has answered: before, first contact decides (test_client_contact)
    view.seed("tcp://a:1")
    view.heartbeat(heartbeat("a"), now=0.0)
    view.tick(0.0, workers=0, has_pending=lambda: True)
    assert view.next_deadline() == INTERVAL_S  # the next HELLO comes before the timeout
    view.tick(0.5, workers=0, has_pending=lambda: True)
    assert view.starved_since == 0.0
    assert view.tick(TIMEOUT_S, 0, lambda: True).starved is None  # waited exactly the timeout: not yet
    error = view.tick(TIMEOUT_S + 0.01, 0, lambda: True).starved
    assert isinstance(error, NoNodesError)
    assert "no worker was reachable for 30 s (nodes tried: tcp://a:1); start a node" in str(error)
    assert view.starved_since is None  # failed once; work queued later waits afresh


def test_the_starvation_clock_restarts_when_a_worker_attaches_or_the_queue_empties():
    view = make_view()
    view.heartbeat(heartbeat("a"), now=0.0)
    view.tick(0.0, 0, lambda: True)
    view.tick(TIMEOUT_S - 1, 2, never_asked)  # a worker attached: has_pending is not even asked
    assert view.starved_since is None
    view.tick(TIMEOUT_S, 0, lambda: True)
    assert view.starved_since == TIMEOUT_S
    assert view.tick(TIMEOUT_S + 10, 0, lambda: False).starved is None and view.starved_since is None
    assert view.tick(TIMEOUT_S * 3, 0, lambda: True).starved is None  # the clock started again


def test_a_refused_handshake_names_the_cluster_key():
    view = make_view(refusals=lambda: "the handshake with tcp://a:1 failed (the two sides' cluster keys differ)")
    view.seed("tcp://a:1")
    view.heartbeat(heartbeat("a"), now=0.0)  # then restarted with another key
    view.tick(0.0, 0, lambda: True)
    error = view.tick(TIMEOUT_S + 1, 0, lambda: True).starved
    assert error is not None
    assert str(error).endswith("cluster keys differ): check the cluster key (key_file)")


def test_heartbeats_never_bring_the_deadline_forward():
    # The loop recomputes its deadline only after a tick: a node heard of expires
    # liveness_s later, after the next HELLO (due within heartbeat_interval_s).
    view = make_view()
    view.heartbeat(heartbeat("a"), now=0.0)
    view.tick(0.0, 2, never_asked)
    before = view.next_deadline()
    view.heartbeat(heartbeat("a"), now=0.5)
    view.heartbeat(heartbeat("b"), now=0.9)
    view.node_left(b"a")
    assert view.next_deadline() == before == INTERVAL_S
