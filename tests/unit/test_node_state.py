"""The node's decisions, driven with fake readings and a fake clock: attachments,
deaths and restarts, client liveness, peers, worker health, load, cache writes."""

from dataclasses import replace

from fabric.cluster.stats import NodeStats
from fabric.config import NodeSettings
from fabric.node.health import Kill, WorkerReading, describe_exit
from fabric.node.state import (
    HEALTH_CHECK_S,
    STORE_FLUSH_BATCH,
    STORE_IDLE_S,
    STORE_MAX_PENDING,
    STORE_MAX_PENDING_BYTES,
    Bound,
    Greet,
    MachineLoad,
    NodeState,
    Publish,
    Send,
    Spawn,
    Subscribe,
    Terminate,
    Unsubscribe,
)
from fabric.node.store import StoreStats
from fabric.wire.protocol import (
    Attach,
    Detach,
    Heartbeat,
    Hello,
    NodeLeaving,
    PeerHello,
    RecycleWorker,
    Shutdown,
    Status,
    StatusReply,
    Stop,
    WorkerLost,
    WorkerReport,
)

HELLO = Hello(b"c-1", "ipc:///v", "ipc:///s", 1024)
SETTINGS = NodeSettings(name="alpha", workers=2, prefetch=3, memory_limit_mb=100, liveness_s=3.0)
BOUND = Bound(b"n-1", "tcp://127.0.0.1:7100", "tcp://127.0.0.1:7101")
MB = 1 << 20
RUNNING = WorkerReading(stopped=False, rss=50 * MB)
STOPPED = WorkerReading(stopped=True, rss=50 * MB)
NO_CACHE = StoreStats(0, 0, 0, 0, 0)


def node(**settings):
    return NodeState(replace(SETTINGS, **settings), BOUND)


def node_with_worker(**settings):
    state = node(**settings)
    state.worker_spawned(b"w-1", 10)
    state.worker_up(b"w-1")
    return state


def test_start_spawns_the_workers_and_greets_the_seeds_but_itself():
    state = node(seeds=("tcp://b:1", BOUND.control, "tcp://c:1"))
    assert state.start(now=5.0) == [Spawn(0), Spawn(1), Greet("tcp://b:1"), Greet("tcp://c:1")]
    assert state.health_due(5.0) and state.beat_due(5.0)  # both at once


def test_workers_attach_to_clients_in_either_order():
    state = node()
    state.worker_spawned(b"w-1", 10)
    out = state.on_message(b"c-1", HELLO, now=0.0)
    assert [type(i.msg) for i in out] == [Heartbeat]  # the worker is not up yet
    attach = Send(b"w-1", Attach(b"c-1", "ipc:///v", "ipc:///s", 3, b"n-1", 1024))  # credits: the prefetch
    assert state.worker_up(b"w-1") == [attach]
    assert state.worker_up(b"w-1") == []  # a repeated WORKER_UP changes nothing


def test_hello_is_also_the_clients_heartbeat():
    state = node_with_worker()
    assert len(state.client_hello(HELLO, now=0.0)) == 2
    [answer] = state.client_hello(HELLO, now=2.0)  # known: marked alive and answered (the client's liveness of us)
    assert answer == Send(b"c-1", state.heartbeat(2.0))
    assert state.expire_clients(now=4.9) == []
    assert state.expire_clients(now=5.1) == [Send(b"w-1", Detach(b"c-1"))]
    assert state.clients == {}


def test_a_dead_worker_is_reported_to_its_clients_and_replaced():
    state = node_with_worker()
    state.client_hello(HELLO, now=0.0)
    lost = WorkerLost(b"w-1", -9, "killed by signal SIGKILL")
    assert state.worker_exited(b"w-1", -9) == [Send(b"c-1", lost), Spawn(0)]
    assert state.worker_exited(b"w-1", -9) == []  # once


def test_no_restart_once_the_node_is_leaving():
    state = node_with_worker()
    state.worker_spawned(b"w-2", 11)  # still starting
    state.client_hello(HELLO, now=0.0)
    leaving = NodeLeaving(b"n-1")
    assert state.leaving() == [Publish(leaving), Send(b"c-1", leaving), Send(b"w-1", Shutdown()), Terminate(b"w-2")]
    assert state.worker_exited(b"w-1", 0) == [Send(b"c-1", WorkerLost(b"w-1", 0, "exited with code 0"))]


def test_goodbye_detaches():
    state = node_with_worker()
    state.client_hello(HELLO, now=0.0)
    assert state.client_goodbye(b"c-1") == [Send(b"w-1", Detach(b"c-1"))]
    assert state.client_goodbye(b"c-1") == []
    assert state.worker_exited(b"w-1", 0) == [Spawn(0)]


def test_only_an_embedded_node_obeys_shutdown():
    daemon = node()
    assert daemon.on_message(b"x", Shutdown(), now=0.0) == [] and not daemon.stopping
    embedded = node(owner_pid=4242)
    assert embedded.on_message(b"c-1", Shutdown(), now=0.0) == [] and embedded.stopping


def test_stop_is_acknowledged_and_obeyed_by_any_node(caplog):
    state = node_with_worker()
    assert state.on_message(b"cli", Stop(), now=0.0) == [Send(b"cli", NodeLeaving(b"n-1"))]
    assert state.stopping
    state.stop("SIGTERM")  # the first reason stands
    with caplog.at_level("INFO", logger="fabric.node.state"):
        state.leaving()
    assert "node alpha stopping (STOP)" in caplog.text


def test_a_peer_that_leaves_is_forgotten_at_once(caplog):
    state = node()
    peer = NodeStats(node_id=b"n-2", name="beta", control="tcp://127.0.0.1:7200", pub="tcp://127.0.0.1:7201")
    state.peer_heard(peer, now=0.0)
    with caplog.at_level("INFO", logger="fabric.node.state"):
        assert state.peer_left(b"n-2", now=0.1) == [Unsubscribe("tcp://127.0.0.1:7201")]
        assert state.peer_left(b"n-2", now=0.1) == []  # twice, or never known: nothing
    assert [n.name for n in state.status(now=0.1)] == ["alpha"]
    assert caplog.text.count("node alpha: peer beta left") == 1


def test_hellos_beyond_max_clients_are_refused_and_counted():
    state = node_with_worker(max_clients=2)
    for i in range(5):
        state.client_hello(replace(HELLO, client_id=b"c-%d" % i), now=0.0)
    assert sorted(state.clients) == [b"c-0", b"c-1"]
    assert state.faults.counts["HELLO beyond max_clients refused"] == 3
    assert len(state.client_hello(replace(HELLO, client_id=b"c-1"), now=1.0)) == 1  # a known one: only answered
    state.client_goodbye(b"c-0")
    assert len(state.client_hello(replace(HELLO, client_id=b"c-9"), now=1.0)) == 2  # a place is free again


def test_a_spawn_that_failed_is_tried_again_at_the_next_beat():
    state = node()
    state.start(now=0.0)
    state.spawn_failed(OSError(24, "Too many open files"), Spawn(0))
    assert state.beat(MachineLoad(0, 0), NO_CACHE, now=0.0).count(Spawn(0)) == 1
    assert state.beat(MachineLoad(0, 0), NO_CACHE, now=1.0).count(Spawn(0)) == 0


def test_status_and_peer_hello_are_answered_on_the_control_socket():
    state = node()
    [reply] = state.on_message(b"cli", Status(), now=0.0)
    assert reply.to == b"cli" and [n["name"] for n in reply.msg.nodes] == ["alpha"]
    assert isinstance(reply.msg, StatusReply)
    out = state.on_message(b"n-2", PeerHello(b"n-2", "tcp://b:1", "tcp://b:2"), now=0.0)
    assert out == [Subscribe("tcp://b:2"), Send(b"n-2", state.heartbeat(0.0, full=True))]
    assert NodeStats.from_info(out[1].msg.info).peers == (("tcp://b:1", "tcp://b:2"),)  # every member it knows
    assert state.on_message(b"n-2", PeerHello(b"n-2", "tcp://b:1", "tcp://b:2"), now=1.0)[0] == Send(
        b"n-2", state.heartbeat(1.0, full=True))  # subscribed once


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


# -- worker health: memory limit, SIGSTOP ----------------------------------------------


def test_a_worker_over_its_memory_limit_is_killed_once_and_its_clients_told_why():
    state = node_with_worker()
    state.client_hello(HELLO, now=0.0)
    assert state.check_workers({b"w-1": RUNNING}, now=0.0) == []
    why = "exceeded its memory limit of 100 MB (RSS 150 MB)"
    assert state.check_workers({b"w-1": WorkerReading(False, 150 * MB)}, now=0.2) == [Kill(b"w-1", why)]
    assert state.check_workers({b"w-1": WorkerReading(False, 150 * MB)}, now=0.4) == []  # dying: named once
    assert state.worker_exited(b"w-1", -9) == [Send(b"c-1", WorkerLost(b"w-1", -9, why)), Spawn(0)]


def test_no_memory_limit_kills_nothing():
    state = node_with_worker(memory_limit_mb=0)
    assert state.check_workers({b"w-1": WorkerReading(False, 1 << 40)}, now=0.0) == []


def test_a_worker_stopped_longer_than_the_liveness_timeout_is_killed():
    state = node_with_worker()
    assert state.check_workers({b"w-1": STOPPED}, now=10.0) == []
    assert state.check_workers({b"w-1": STOPPED}, now=12.9) == []
    assert state.check_workers({b"w-1": RUNNING}, now=13.0) == []  # SIGCONT: the count starts again
    assert state.check_workers({b"w-1": STOPPED}, now=13.5) == []
    assert state.check_workers({b"w-1": STOPPED}, now=16.4) == []
    why = "was stopped (hung) for more than 3.0 s"
    assert state.check_workers({b"w-1": STOPPED}, now=16.6) == [Kill(b"w-1", why)]
    assert state.worker_exited(b"w-1", -9) == [Spawn(0)]  # no client to tell


def test_health_checks_come_every_interval():
    state = node_with_worker()
    state.start(now=0.0)
    state.check_workers({}, now=0.0)
    assert not state.health_due(HEALTH_CHECK_S - 0.01)
    assert state.health_due(HEALTH_CHECK_S)


# -- heartbeats: load, expiry, greeting --------------------------------------------------


def test_over_the_load_limit_takes_no_work_until_it_falls_below():
    state = node_with_worker(max_load=90.0)
    state.start(now=0.0)
    state.beat(MachineLoad(cpu_percent=95.0, memory_percent=40.0), NO_CACHE, now=0.0)
    stats = state.stats()
    assert (stats.accepting, stats.cpu_percent, stats.memory_percent) == (False, 95.0, 40.0)
    state.beat(MachineLoad(cpu_percent=89.0, memory_percent=40.0), NO_CACHE, now=1.0)
    assert state.stats().accepting


def test_a_limit_of_100_never_pauses_and_0_drains():
    full = node_with_worker(max_load=100.0)
    full.beat(MachineLoad(100.0, 100.0), NO_CACHE, now=0.0)
    assert full.stats().accepting
    drained = node_with_worker(max_load=0.0)
    drained.beat(MachineLoad(0.0, 0.0), NO_CACHE, now=0.0)
    assert not drained.stats().accepting


def test_a_beat_publishes_the_heartbeat_with_the_task_rate_and_cache():
    state = node_with_worker()
    state.start(now=0.0)
    state.worker_report(b"w-1", WorkerReport(50, 0, 0.5, False))
    cache = StoreStats(7, 700, 3, 1, 0)
    out = state.beat(MachineLoad(10.0, 20.0), cache, now=2.0)
    assert out == [Publish(state.heartbeat(2.0))]
    stats = NodeStats.from_info(out[0].msg.info)
    assert (stats.tasks_per_s, stats.cache_entries, stats.cache_hits) == (25.0, 7, 3)
    assert not state.beat_due(2.0 + SETTINGS.heartbeat_interval_s - 0.01)
    assert state.beat_due(2.0 + SETTINGS.heartbeat_interval_s)


def test_a_node_whose_cache_turned_off_has_no_weight_on_the_ring():
    state = node_with_worker()
    state.start(now=0.0)
    [publish] = state.beat(MachineLoad(0.0, 0.0), StoreStats(0, 0, 0, 5, 0, enabled=False), now=1.0)
    assert NodeStats.from_info(publish.msg.info).cache_weight == 0
    [publish] = state.beat(MachineLoad(0.0, 0.0), NO_CACHE, now=2.0)
    assert NodeStats.from_info(publish.msg.info).cache_weight > 0


def test_a_beat_forgets_silent_clients():
    state = node_with_worker()
    state.client_hello(HELLO, now=0.0)
    for t in (0.0, 1.0, 2.0, 3.0):  # on time: the silence is the client's
        assert state.beat(MachineLoad(0.0, 0.0), NO_CACHE, now=t)[:-1] == []
    assert state.beat(MachineLoad(0.0, 0.0), NO_CACHE, now=3.5)[:-1] == [Send(b"w-1", Detach(b"c-1"))]


def peer(name, control, pub, peers=()):
    return NodeStats(node_id=name.encode(), name=name, control=control, pub=pub, peers=peers)


def test_peers_spread_from_heartbeats_and_only_a_few_are_watched():
    state = node()
    members = [(f"tcp://m{i}:1", f"tcp://m{i}:2") for i in range(20)]
    beta = peer("beta", "tcp://b:1", "tcp://b:2", peers=(*members, (BOUND.control, BOUND.pub)))
    out = state.peer_heard(beta, now=0.0)
    assert len(state.gossip.alive()) == 21  # beta and all it lists, not itself
    assert out == [Subscribe(state.gossip.members[c].pub) for c in state.gossip.watched()] and len(out) == 4
    assert state.peer_heard(beta, now=1.0) == []  # nothing new: the same watched peers
    assert {s.control for s in state.status(now=1.0)} == {BOUND.control, "tcp://b:1", *(c for c, _ in members)}


def test_a_watched_peer_declared_dead_is_news_and_is_replaced():
    state = node()
    state.start(now=0.0)
    for i in range(3):
        state.peer_heard(peer(f"p{i}", f"tcp://p{i}:1", f"tcp://p{i}:2"), now=0.0)
    state.beat(MachineLoad(0.0, 0.0), NO_CACHE, now=0.0)
    first = sorted(state.watching)[0]
    for t in (1.0, 2.0, 3.0):
        for control in state.watching:
            if control != first:
                state.peer_heard(peer(control[6:8], control, state.watching[control]), now=t)
        state.beat(MachineLoad(0.0, 0.0), NO_CACHE, now=t)  # on time: the silence is first's
    [publish] = [i for i in state.beat(MachineLoad(0.0, 0.0), NO_CACHE, now=4.0) if isinstance(i, Publish)]
    news = NodeStats.from_info(publish.msg.info).news
    assert (first, first.replace(":1", ":2"), 0, False) in news  # relayed to whoever watches us
    assert not state.gossip.members[first].alive and first not in state.peers.nodes


def test_a_beat_greets_the_seeds_until_some_member_is_known():
    state = node(seeds=("tcp://b:1",))
    assert state.start(now=0.0)[-1:] == [Greet("tcp://b:1")]
    load = MachineLoad(0.0, 0.0)
    assert state.beat(load, NO_CACHE, now=0.0)[:-1] == [Greet("tcp://b:1")]  # a seed not heard from yet
    state.peer_heard(peer("beta", "tcp://b:1", "tcp://b:2"), now=0.5)
    assert state.beat(load, NO_CACHE, now=1.0)[:-1] == []
    state.beat(load, NO_CACHE, now=2.0)
    state.beat(load, NO_CACHE, now=3.0)
    out = state.beat(load, NO_CACHE, now=4.0)  # beta declared dead (silent since 0.5): the seed again
    assert Greet("tcp://b:1") in out


def test_a_node_stalled_past_its_beat_does_not_declare_its_peers_dead_nor_forget_its_clients():
    state = node_with_worker()
    state.start(now=0.0)
    state.client_hello(HELLO, now=0.0)
    state.peer_heard(peer("beta", "tcp://b:1", "tcp://b:2"), now=0.0)
    state.beat(MachineLoad(0.0, 0.0), NO_CACHE, now=0.0)
    assert state.beat(MachineLoad(0.0, 0.0), NO_CACHE, now=6.0)[:1] != [Send(b"w-1", Detach(b"c-1"))]
    # due at 1.0: this node was stopped for 5 s
    assert state.gossip.members["tcp://b:1"].alive and b"beta" in state.peers.nodes and b"c-1" in state.clients
    state.beat(MachineLoad(0.0, 0.0), NO_CACHE, now=7.0)
    state.beat(MachineLoad(0.0, 0.0), NO_CACHE, now=8.0)
    state.beat(MachineLoad(0.0, 0.0), NO_CACHE, now=9.0)  # on time since: beta's 3 s count from the stall's end
    assert not state.gossip.members["tcp://b:1"].alive


def test_a_node_reported_dead_greets_its_watched_peers_to_say_otherwise():
    state = node()
    state.start(now=0.0)
    state.peer_heard(peer("beta", "tcp://b:1", "tcp://b:2"), now=0.0)
    gossip = peer("beta", "tcp://b:1", "tcp://b:2")
    state.peer_heard(replace(gossip, news=((BOUND.control, BOUND.pub, 5, False),)), now=0.5)
    assert Greet("tcp://b:1") in state.beat(MachineLoad(0.0, 0.0), NO_CACHE, now=1.0)


def test_a_peer_that_greeted_us_and_leaves_on_our_router_is_dead_at_once_though_never_watched_or_heard():
    state = node()
    state.on_message(b"n-2", PeerHello(b"n-2", "tcp://b:1", "tcp://b:2"), now=0.0)
    assert state.on_message(b"n-2", NodeLeaving(b"n-2"), now=0.5) == [Unsubscribe("tcp://b:2")]
    assert [n.name for n in state.status(now=0.6)] == ["alpha"]


def test_own_heartbeat_is_not_a_peer():
    state = node()
    assert state.peer_heard(state.stats(), now=0.0) == []


# -- the cache shard's writes and the loop's deadline ------------------------------------


def test_cache_writes_wait_for_a_quiet_moment():
    state = node()
    assert state.entries_to_flush(0, 0, quiet=True, now=10.0) == 0  # nothing pending
    assert state.entries_to_flush(5, 500, quiet=False, now=10.0) == 0  # busy
    assert state.entries_to_flush(5, 500, quiet=True, now=10.0 + STORE_IDLE_S * 0.9) == 0  # not quiet for long
    assert state.entries_to_flush(5, 500, quiet=True, now=10.0 + STORE_IDLE_S * 1.1) == STORE_FLUSH_BATCH


def test_cache_writes_go_even_when_busy_once_too_many_wait():
    state = node()
    assert state.entries_to_flush(STORE_MAX_PENDING + 1, 0, quiet=False, now=1.0) == STORE_FLUSH_BATCH
    assert state.entries_to_flush(1, STORE_MAX_PENDING_BYTES + 1, quiet=False, now=1.0) == STORE_FLUSH_BATCH


def test_the_deadline_is_the_next_beat_or_health_check_or_soon_with_writes_pending():
    state = node_with_worker()
    state.start(now=0.0)
    state.check_workers({}, now=0.0)
    state.beat(MachineLoad(0.0, 0.0), NO_CACHE, now=0.0)
    assert state.next_deadline(now=0.0, store_pending=0) == HEALTH_CHECK_S
    assert state.next_deadline(now=0.0, store_pending=1) == STORE_IDLE_S


def test_exit_descriptions():
    assert describe_exit(-11) == "killed by signal SIGSEGV"
    assert describe_exit(3) == "exited with code 3"


def test_a_client_may_have_a_worker_it_uses_recycled_once_and_no_one_else_may():
    state = node_with_worker()
    state.on_message(b"c-1", HELLO, now=0.0)
    state.on_message(b"c-2", replace(HELLO, client_id=b"c-2"), now=0.0)
    state.client_goodbye(b"c-2")
    assert state.on_message(b"c-2", RecycleWorker(b"w-1"), now=1.0) == []  # not a client of it any more
    assert state.on_message(b"c-1", RecycleWorker(b"w-9"), now=1.0) == []  # no such worker
    reason = "was recycled: its client interrupted the call it was running"
    assert state.on_message(b"c-1", RecycleWorker(b"w-1"), now=1.0) == [Kill(b"w-1", reason)]
    assert state.on_message(b"c-1", RecycleWorker(b"w-1"), now=1.0) == []  # being killed already
    assert state.worker_exited(b"w-1", -9) == [Send(b"c-1", WorkerLost(b"w-1", -9, reason)), Spawn(0)]


def test_whether_a_client_forwards_output_reaches_its_workers():
    state = node()
    state.worker_spawned(b"w-1", 10)
    state.on_message(b"c-1", replace(HELLO, forward_output=False), now=0.0)
    [attach] = state.worker_up(b"w-1")
    assert attach.msg.forward_output is False
