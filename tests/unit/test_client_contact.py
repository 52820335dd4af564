"""First contact: a client fails fast when every node refuses its handshake, or
when none answers at all, and recovers when a node speaks (fake clock, no sockets)."""

from test_cluster_view import heartbeat

from fabric.client.cluster_view import ClusterView
from fabric.errors import AuthenticationError, NoNodesError


def make_view(refused=()):
    return ClusterView(1.0, 3.0, 30.0, lambda: "the handshake with tcp://a:1 failed: keys differ",
                       lambda: refused, first_contact_s=2.0)


def test_every_known_node_refusing_is_definitive():
    refused = {"tcp://a:1": "keys differ"}
    view = make_view(refused)
    view.seed("tcp://a:1")
    view.seed("tcp://b:1")
    assert view.tick(0.0, 0, lambda: True).unreachable is None  # b has not refused (yet)
    refused["tcp://b:1"] = "keys differ"
    error = view.check_contact(0.1)
    assert isinstance(error, AuthenticationError) and "keys differ" in str(error)
    assert view.unreachable is error
    assert view.check_contact(0.2) is None  # said once; the state stays
    view.heartbeat(heartbeat("a"), 0.3)  # the key was fixed: a node speaks
    assert view.unreachable is None


def test_no_answer_within_the_first_contact_timeout():
    view = make_view()
    view.seed("tcp://a:1")
    assert view.tick(0.0, 0, lambda: False).unreachable is None
    assert view.next_deadline() <= 2.0
    assert view.tick(1.9, 0, lambda: False).unreachable is None
    error = view.tick(2.0, 0, lambda: False).unreachable
    assert type(error) is NoNodesError and "no node answered at tcp://a:1 within 2 s" in str(error)


def test_a_node_that_answered_once_is_waited_for_by_connect_timeout():
    view = make_view()
    view.seed("tcp://a:1")
    view.tick(0.0, 0, lambda: False)
    view.heartbeat(heartbeat("a"), 0.5)
    assert view.tick(10.0, 0, lambda: False).unreachable is None  # expired, but it answered once


def test_the_first_contact_timeout_never_exceeds_connect_timeout():
    assert ClusterView(1.0, 3.0, 1.5, first_contact_s=5.0).first_contact_s == 1.5
