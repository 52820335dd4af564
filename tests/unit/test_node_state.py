"""The node's decisions: attachments, deaths, client liveness, peers, statistics."""

from fabric.cluster.stats import NodeStats
from fabric.node.state import NodeSettings, NodeState, describe_exit
from fabric.wire.protocol import Attach, Detach, Heartbeat, Hello, NodeLeaving, WorkerLost, WorkerReport

HELLO = Hello(b"c-1", "ipc:///v", "ipc:///s", 1024)
SETTINGS = NodeSettings(b"n-1", "alpha", "tcp://127.0.0.1:7100", "tcp://127.0.0.1:7101", 3, 100.0, 3.0)


def node_with_worker():
    state = NodeState(SETTINGS)
    state.worker_spawned(b"w-1", 10)
    state.worker_up(b"w-1")
    return state


def test_workers_attach_to_clients_in_either_order():
    state = NodeState(SETTINGS)
    state.worker_spawned(b"w-1", 10)
    out = state.client_hello(HELLO, now=0.0)
    assert [type(m) for _, m in out] == [Heartbeat]  # the worker is not up yet
    assert state.worker_up(b"w-1") == [(b"w-1", Attach(b"c-1", "ipc:///v", "ipc:///s", 3, b"n-1", 1024))]
    assert state.worker_up(b"w-1") == []  # a repeated WORKER_UP changes nothing


def test_hello_is_also_the_clients_heartbeat():
    state = node_with_worker()
    assert len(state.client_hello(HELLO, now=0.0)) == 2
    assert state.client_hello(HELLO, now=2.0) == []  # known: only marked alive
    assert state.expire_clients(now=4.9) == []
    assert state.expire_clients(now=5.1) == [(b"w-1", Detach(b"c-1"))]
    assert state.clients == {}


def test_death_is_reported_to_attached_clients_only():
    state = node_with_worker()
    state.client_hello(HELLO, now=0.0)
    assert state.worker_exited(b"w-1", -9) == [(b"c-1", WorkerLost(b"w-1", -9, "killed by signal SIGKILL"))]
    assert state.worker_exited(b"w-1", -9) == []


def test_goodbye_detaches():
    state = node_with_worker()
    state.client_hello(HELLO, now=0.0)
    assert state.client_goodbye(b"c-1") == [(b"w-1", Detach(b"c-1"))]
    assert state.client_goodbye(b"c-1") == []
    assert state.worker_exited(b"w-1", 0) == []


def test_leaving_tells_every_client():
    state = node_with_worker()
    state.client_hello(HELLO, now=0.0)
    assert state.leaving() == [(b"c-1", NodeLeaving(b"n-1"))]


def test_statistics_survive_worker_restarts():
    state = node_with_worker()
    state.worker_report(b"w-1", WorkerReport(10, 2, 0.5, True))
    stats = state.stats()
    assert (stats.workers, stats.busy, stats.done, stats.failed) == (1, 1, 10, 2)
    assert stats.per_worker[0].done == 10
    state.worker_exited(b"w-1", -9)
    state.worker_spawned(b"w-2", 11)
    state.worker_up(b"w-2")
    state.worker_report(b"w-2", WorkerReport(5, 0, 0.1, False))
    assert (state.stats().done, state.stats().failed, state.stats().workers) == (15, 2, 1)


def test_heartbeat_round_trips_through_its_info_map():
    state = node_with_worker()
    beat = state.heartbeat(now=0.0)
    assert NodeStats.from_info(beat.info) == state.stats()


def peer(name, control, pub, peers=()):
    return NodeStats(node_id=name.encode(), name=name, control=control, pub=pub, peers=peers)


def test_peers_spread_from_heartbeats():
    state = NodeState(SETTINGS)
    beta = peer("beta", "tcp://b:1", "tcp://b:2", peers=(("tcp://c:1", "tcp://c:2"), (SETTINGS.control, SETTINGS.pub)))
    assert state.peer_heard(beta, now=0.0) == [("tcp://b:1", "tcp://b:2"), ("tcp://c:1", "tcp://c:2")]
    assert state.peer_heard(beta, now=1.0) == [("tcp://c:1", "tcp://c:2")]  # until gamma is heard itself
    state.peer_heard(peer("gamma", "tcp://c:1", "tcp://c:2"), now=1.0)
    assert state.peer_heard(beta, now=2.0) == []
    assert {s.name for s in state.status(now=2.0)} == {"alpha", "beta", "gamma"}
    assert [s.name for s in state.peers.expire(now=4.5)] == ["gamma"]  # silent since 1.0


def test_own_heartbeat_is_not_a_peer():
    state = NodeState(SETTINGS)
    assert state.peer_heard(state.stats(), now=0.0) == []


def test_over_the_load_limit_takes_no_work():
    state = NodeState(NodeSettings(b"n-1", "alpha", "c", "p", 2, max_load=-1.0, liveness_s=3.0))
    state.sample_load(now=1.0)
    assert state.stats().accepting is False


def test_exit_descriptions():
    assert describe_exit(-11) == "killed by signal SIGSEGV"
    assert describe_exit(3) == "exited with code 3"
