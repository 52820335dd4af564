"""Placement decisions without processes: the built-in policies over candidate
lists, and the ventilator's placed path (nodes=, resources, keys on the ring,
unplaceable calls, pinned batches) driven with fake heartbeats."""

from __future__ import annotations

import pytest
from test_ventilator import Owner, call_batch, map_batch

from fabric.client.locality import data_by_node
from fabric.client.options import TaskOptions
from fabric.client.placement import (
    BatchInfo,
    Candidate,
    LeastLoaded,
    Pack,
    Placement,
    RoundRobin,
    Spread,
    key_digest,
)
from fabric.client.placing import Placing
from fabric.client.ventilator import Ventilator
from fabric.cluster.stats import NodeStats
from fabric.errors import NoNodesError, UnknownTaskError, WorkerLostError
from fabric.wire import codec
from fabric.wire.ref import Ref

INFO = BatchInfo("f", 1, TaskOptions())


def candidate(node: str, worker: int, free: int, last_used: int = -1, load: float = 0.0) -> Candidate:
    return Candidate(node, worker, free, load, {}, 0, last_used, f"w-{node}{worker}")


def test_built_in_policies():
    a0, a1, b0 = candidate("a", 0, 1, last_used=5), candidate("a", 1, 2, last_used=9), candidate("b", 0, 2, 3)
    assert LeastLoaded().choose(INFO, [a0, a1, b0]) == b0  # most free, then least recently used
    assert RoundRobin().choose(INFO, [a0, a1, b0]) == b0  # sent work longest ago
    assert Pack().choose(INFO, [candidate("a", 0, 1), candidate("b", 0, 2)]).node == "a"  # the busiest node
    assert Spread().choose(INFO, [a0, a1, b0]).node == "a"  # three free credits on a, two on b


def stats(name: str, **fields) -> NodeStats:
    return NodeStats(name.encode(), name, f"tcp://127.0.0.1:{7000 + len(name)}", "tcp://127.0.0.1:1", **fields)


def placed_vent(*nodes: NodeStats, credits: int = 2, timeout_s: float = 5.0) -> Ventilator:
    vent = Ventilator()
    vent.placer.nodes = {n.node_id: n for n in nodes}
    vent.placer.timeout_s = timeout_s
    for n in nodes:
        vent.worker_ready(b"w-" + n.node_id, credits, n.node_id)
    return vent


def placing(**fields) -> Placing:
    return Placing(fields.pop("policy", LeastLoaded()), "f", TaskOptions(), **fields)


def with_placing(batch, **fields):
    batch.placing = placing(**fields)
    return batch


def test_nodes_resources_and_tasks_filter_the_workers():
    vent = placed_vent(stats("alpha", resources={"gpu": 1}), stats("beta", tasks=("wc",)))
    vent.enqueue(with_placing(call_batch(), nodes=frozenset({"beta"})))
    vent.enqueue(with_placing(call_batch(), resources=(("gpu", 1),)))
    vent.enqueue(with_placing(call_batch(), task="wc"))
    assert [w for w, _, _ in vent.dispatch()] == [b"w-beta", b"w-alpha", b"w-beta"]


def test_resources_hold_until_the_batch_is_back():
    vent = placed_vent(stats("alpha", resources={"gpu": 1}), credits=4)
    batches = [with_placing(call_batch(), resources=(("gpu", 1),)) for _ in range(3)]
    for batch in batches:
        vent.enqueue(batch)
    sent = list(vent.dispatch())
    assert len(sent) == 1 and len(vent.placed) == 2  # one gpu: one at a time, credits to spare
    vent.complete(b"w-alpha", sent[0][1].batch_id)
    assert len(list(vent.dispatch())) == 1
    vent.worker_lost(b"w-alpha", "killed")  # its batch goes back, its gpu is free again
    assert vent.placer.in_use[b"alpha"] == {"gpu": 0}


def test_an_unplaceable_call_waits_its_timeout_then_names_what_is_missing():
    vent = placed_vent(stats("alpha", tasks=("wc",)), timeout_s=5.0)
    vent.enqueue(with_placing(call_batch(), nodes=frozenset({"ghost"})))
    vent.enqueue(with_placing(call_batch(), task="typo"))
    vent.now = 1.0
    assert list(vent.dispatch()) == [] and vent.failures == []
    vent.now = 6.5
    assert list(vent.dispatch()) == []
    errors = [exc for _, exc in vent.failures]
    assert isinstance(errors[0], NoNodesError) and "ghost" in str(errors[0]) and "alpha" in str(errors[0])
    assert isinstance(errors[1], UnknownTaskError) and "wc" in str(errors[1])


def test_a_partitioned_batch_is_split_by_key_owner_and_each_part_goes_there():
    nodes = [stats(name) for name in ("alpha", "beta", "gamma")]
    vent = placed_vent(*nodes, credits=8)
    items = list(range(60))
    batch = with_placing(map_batch(items))
    batch.keys = [key_digest(x % 6) for x in items]
    vent.enqueue(batch)
    sent = list(vent.dispatch())
    assert len(sent) > 1 and sum(b.n_items for _, b, _ in sent) == 60
    owner_of = {}
    for worker, part, _ in sent:
        values = codec.decode(part.codec, part.payload)
        assert [items[i] for i in part.indices] == values
        for value in values:
            assert owner_of.setdefault(value % 6, worker) == worker


def test_affinity_picks_one_owner_and_it_follows_membership():
    nodes = [stats(name) for name in ("alpha", "beta", "gamma")]
    vent = placed_vent(*nodes, credits=8)
    key = key_digest("model-7")
    for _ in range(4):
        vent.enqueue(with_placing(call_batch(), affinity=key))
    workers = {w for w, _, _ in vent.dispatch()}
    assert len(workers) == 1
    owner = next(iter(workers))[2:]
    vent.node_lost(owner)
    del vent.placer.nodes[owner]
    vent.enqueue(with_placing(call_batch(), affinity=key))
    assert {w for w, _, _ in vent.dispatch()} != workers


def test_pinned_batches_go_first_and_never_elsewhere():
    vent = placed_vent(stats("alpha"), stats("beta"), credits=1)
    vent.enqueue(call_batch())
    pinned = call_batch()
    pinned.worker = b"w-beta"
    vent.enqueue(pinned)
    sent = [(w, b) for w, b, _ in vent.dispatch()]
    assert sent[0] == (b"w-beta", pinned)
    gone = call_batch(Owner())
    gone.worker = b"w-nobody"
    vent.enqueue(gone)
    list(vent.dispatch())
    assert [(b, type(e)) for b, e in vent.failures] == [(gone, WorkerLostError)]


def test_a_setup_batch_leads_each_attachment_and_is_not_requeued():
    vent = Ventilator()
    made = []

    def setup(worker):
        made.append(call_batch(digest=b"s" * 16))
        made[-1].worker, made[-1].setup = worker, True
        return made[-1]

    vent.setup = setup
    task = call_batch()
    vent.enqueue(task)
    vent.worker_ready(b"w1", 2, b"n1")
    assert [b for _, b, _ in vent.dispatch()] == [made[0], task]
    vent.worker_ready(b"w1", 2, b"n1")  # re-attached (a reload): a new setup first, the old one dropped
    assert [b for _, b, _ in vent.dispatch()] == [made[1], task]


def test_an_interrupted_caller_s_placed_and_pinned_batches_are_dropped_but_not_the_initializer_s():
    vent = placed_vent(stats("ghost-free"), credits=1)
    abandoned, wanted = Owner(), Owner()
    unplaceable = with_placing(call_batch(abandoned), nodes=frozenset({"ghost"}))
    kept = with_placing(call_batch(wanted), nodes=frozenset({"ghost"}))
    vent.enqueue(unplaceable)
    vent.enqueue(kept)
    list(vent.dispatch())  # both wait for a node named ghost
    pinned, setup = call_batch(abandoned), call_batch(Owner())
    pinned.worker = setup.worker = b"w-nobody-yet"
    setup.setup = True
    vent.enqueue(pinned)
    vent.enqueue(setup)
    abandoned.wanted = False
    vent.drop_abandoned()
    assert list(vent.placed) == [kept] and list(vent.pinned[b"w-nobody-yet"]) == [setup]
    assert unplaceable.batch_id not in vent.placer.waiting_since  # no timer left behind for it


@pytest.mark.parametrize("bad", [{"gpu": 0}, {"gpu": 1.5}, {"": 1}, ["gpu"]])
def test_resource_requests_are_checked(bad):
    with pytest.raises((ValueError, TypeError)):
        TaskOptions().merged(resources=bad)


def test_a_joining_node_takes_about_a_quarter_of_the_keys_from_three():
    three = [stats(name) for name in ("alpha", "beta", "gamma")]
    four = [*three, stats("delta")]
    placer = Ventilator().placer
    keys = [key_digest(i) for i in range(4_000)]
    before = {k: placer.owner(k, three) for k in keys}
    after = {k: placer.owner(k, four) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(after[k] == b"delta" for k in moved)  # keys move only to the new node
    assert 0.15 < len(moved) / len(keys) < 0.35


class Recording(Placement):
    """Takes the candidate whose node holds most of the batch's data, noting what it saw."""

    def __init__(self) -> None:
        self.seen: list[dict[str, int]] = []

    def choose(self, batch, candidates):
        self.seen.append({c.node: c.local_bytes for c in candidates})
        return max(candidates, key=lambda c: c.local_bytes)


def test_a_placed_batch_s_candidates_carry_the_bytes_of_its_refs_their_node_holds_and_it_is_never_parked():
    vent = placed_vent(stats("alpha"), stats("beta"))
    vent.locality_wait_s = 10.0
    policy = Recording()
    big = Ref(b"k" * 16, 3 << 20, ((b"beta", "tcp://127.0.0.1:1"),))
    small = Ref(b"s" * 16, 1000, ((b"alpha", "tcp://127.0.0.1:2"), (b"beta", "tcp://127.0.0.1:1")))
    read_big = with_placing(call_batch(), policy=policy)
    read_big.refs, read_big.data = [big, big], data_by_node([big, big], 1 << 20)
    read_small = with_placing(call_batch(), policy=policy)
    read_small.refs = [small]  # under locality_bytes, so no Batch.data: the policy still sees where it is
    plain = with_placing(call_batch(), policy=policy)
    for batch in (read_big, read_small, plain):
        vent.enqueue(batch)
    sent = [(w, b) for w, b, _ in vent.dispatch()]
    assert sent[0] == (b"w-beta", read_big) and [b for _, b in sent] == [read_big, read_small, plain]
    assert policy.seen[:2] == [{"alpha": 0, "beta": 3 << 20}, {"alpha": 1000, "beta": 1000}]
    assert set(policy.seen[2].values()) == {0}
    assert not vent.parked
