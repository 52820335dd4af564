"""User-chosen distribution on real loopback clusters: a custom Placement, nodes=,
resources limiting concurrency, partition_by and affinity on the ring (and keys
moving when their node is killed), and the built-in policies."""

from __future__ import annotations

import fcntl
import os
import signal
import time

import pytest
from helpers import free_address, wait_for

import fabric

FAST = {"heartbeat_interval_s": 0.2, "liveness_s": 1.0}


def node_name(_: object = None) -> str:
    """The name of the node running the task."""
    worker = fabric.current_worker()
    assert worker is not None
    return worker.node


def slow_node_name() -> str:
    """The node's name after 0.2 s of work: still running when the next call is placed."""
    time.sleep(0.2)  # this sleep is the task's work
    return node_name()


def keyed_node(key: int) -> tuple[int, str]:
    return key, node_name()


def concurrent_holder(_: object, counter: str, hold_s: float = 0.05) -> int:
    """Count this task in the file ``counter`` while it runs (its work: ``hold_s``);
    return how many ran at once when it started, itself included."""
    with open(counter, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        running = int(f.read() or 0) + 1
        f.seek(0), f.truncate(), f.write(str(running))
    time.sleep(hold_s)  # this sleep is the task's work, while the others may start
    with open(counter, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        left = int(f.read()) - 1
        f.seek(0), f.truncate(), f.write(str(left))
    return running


class OnlyBeta(fabric.Placement):
    """Everything to the node named beta; records what it was shown."""

    def __init__(self) -> None:
        self.seen: list[tuple[fabric.BatchInfo, list[fabric.Candidate]]] = []

    def choose(self, batch, candidates):
        self.seen.append((batch, list(candidates)))
        return next((c for c in candidates if c.node == "beta"), None)


def named_cluster(start_node, names: list[str], workers: int = 1, flags: dict[str, tuple[str, ...]] | None = None):
    addresses = {name: free_address() for name in names}
    first = addresses[names[0]]
    procs = {
        name: start_node(address, workers=workers, join=first if address != first else None,
                         flags=("--name", name, *(flags or {}).get(name, ())))
        for name, address in addresses.items()
    }
    return addresses, procs


def connected(addresses: dict[str, str], workers: int, **options) -> fabric.Fabric:
    fx = fabric.connect(next(iter(addresses.values())), **FAST, **options)
    wait_for(lambda: fx.workers() == workers and len(fx.nodes()) == len(addresses), 30, f"{workers} workers")
    return fx


def test_a_custom_placement_sends_everything_to_one_node(start_node):
    addresses, _ = named_cluster(start_node, ["alpha", "beta", "gamma"], flags={"beta": ("--resources", "gpu=1")})
    with connected(addresses, 3) as fx:
        policy = OnlyBeta()
        assert set(fx.map(node_name, range(200), placement=policy, chunksize=5)) == {"beta"}
        assert set(fx.map(node_name, range(200), chunksize=5)) == {"alpha", "beta", "gamma"}  # the default spreads
        batch, candidates = policy.seen[0]
        assert batch.function.endswith("node_name") and batch.n_items == 5 and batch.options.placement is policy
        beta = next(c for c in candidates if c.node == "beta")
        assert beta.resources == {"gpu": 1} and beta.local_bytes == 0 and beta.worker == 0 and beta.free >= 1
        assert 0.0 <= beta.load <= 100.0 and beta.worker_id.startswith("w-")
        with fabric.connect(addresses["gamma"], **FAST, placement=OnlyBeta()) as other:  # connect's default policy
            assert {other.submit(node_name).result() for _ in range(10)} == {"beta"}


class Raising(fabric.Placement):
    def choose(self, batch, candidates):
        raise KeyError("no room for this one")


class Stranger(fabric.Placement):
    def choose(self, batch, candidates):
        return "not a candidate"


def test_a_policy_that_raises_or_answers_nonsense_fails_the_call_not_the_client():
    with fabric.connect(workers=2) as fx:
        with pytest.raises(KeyError, match="no room"):
            list(fx.map(abs, range(10), placement=Raising()))
        with pytest.raises(TypeError, match="not one of its candidates"):
            fx.options(placement=Stranger()).submit(abs, -1).result(timeout=30)
        assert fx.submit(abs, -2).result(timeout=30) == 2  # the I/O thread carries on
        assert fx._io.handler_errors == {}


@pytest.mark.parametrize("policy", ["round-robin", "pack", "spread", "least-loaded"])
def test_built_in_policies_run_every_item_once(policy):
    with fabric.connect(workers=2) as fx:
        assert list(fx.map(abs, range(-500, 500), placement=policy, chunksize=7)) == [abs(x) for x in range(-500, 500)]
        assert fx.options(placement=policy).submit(abs, -3).result(timeout=30) == 3


def test_pack_fills_one_node_and_spread_uses_every_node(start_node):
    addresses, _ = named_cluster(start_node, ["alpha", "beta"], workers=2)
    with connected(addresses, 4) as fx:
        packed = [fx.options(placement="pack").submit(slow_node_name) for _ in range(2)]
        assert len({f.result(timeout=30) for f in packed}) == 1  # two calls fit in one idle node's credits
        spread = [fx.options(placement="spread").submit(slow_node_name) for _ in range(2)]
        assert {f.result(timeout=30) for f in spread} == {"alpha", "beta"}


def test_nodes_limits_where_work_runs_and_a_missing_node_is_named(start_node):
    addresses, _ = named_cluster(start_node, ["alpha", "beta"])
    with connected(addresses, 2, connect_timeout_s=1.5) as fx:
        assert set(fx.map(node_name, range(100), nodes=["alpha"], chunksize=2)) == {"alpha"}
        assert fx.options(nodes=["beta"]).submit(node_name).result(timeout=30) == "beta"
        with pytest.raises(fabric.NoNodesError, match="ghost"):
            fx.options(nodes=["ghost"]).submit(node_name).result(timeout=30)


def test_resources_limit_how_many_tasks_run_at_once_on_a_node(start_node, tmp_path):
    addresses, _ = named_cluster(start_node, ["alpha"], workers=4, flags={"alpha": ("--resources", "gpu=2")})
    counter = str(tmp_path / "running")
    with connected(addresses, 4, connect_timeout_s=1.5) as fx:
        free = list(fx.map(concurrent_holder, range(8), [counter] * 8, [0.3] * 8, chunksize=1))
        assert max(free) > 2  # without the limit, more run at once (the counter sees them)
        gpu = fx.options(resources={"gpu": 1})
        limited = list(gpu.map(concurrent_holder, range(12), [counter] * 12, [0.1] * 12, chunksize=1))
        assert max(limited) == 2
        calls = [gpu.submit(concurrent_holder, i, counter) for i in range(8)]
        assert max(f.result(timeout=60) for f in calls) <= 2
        with pytest.raises(fabric.NoNodesError, match="licence"):
            fx.options(resources={"licence": 1}).submit(abs, 1).result(timeout=30)


def test_partition_by_keeps_equal_keys_on_their_ring_owner_and_moves_a_dead_nodes_keys(start_node):
    addresses, procs = named_cluster(start_node, ["alpha", "beta", "gamma"])
    with connected(addresses, 3) as fx:
        keys = [i % 40 for i in range(2_000)]
        before = _owners(fx.map(keyed_node, keys, partition_by=lambda k: k, chunksize=50))
        assert len(set(before.values())) == 3  # 40 keys over 3 nodes
        assert _owners(fx.map(keyed_node, keys, partition_by=lambda k: k)) == before  # stable
        victim = before[0]
        procs[victim].send_signal(signal.SIGKILL)
        wait_for(lambda: victim not in {n.name for n in fx.nodes()}, 10, f"{victim} declared dead")
        after = _owners(fx.map(keyed_node, keys, partition_by=lambda k: k, chunksize=50))
        for key, owner in before.items():
            if owner == victim:
                assert after[key] != victim
            else:
                assert after[key] == owner  # only the dead node's keys moved
        sticky = {fx.options(affinity="model-7").submit(node_name).result(timeout=30) for _ in range(10)}
        assert len(sticky) == 1


def _owners(results) -> dict[int, str]:
    owners: dict[int, str] = {}
    for key, node in results:
        assert owners.setdefault(key, node) == node, f"key {key} ran on {owners[key]} and {node}"
    return owners


def test_partition_by_across_a_node_lost_mid_map_still_delivers_every_result_once(start_node):
    addresses, procs = named_cluster(start_node, ["alpha", "beta", "gamma"])
    with connected(addresses, 3) as fx:
        results = fx.map(keyed_node, [i % 12 for i in range(3_000)], partition_by=lambda k: k, chunksize=20)
        got = [next(results)]
        procs["gamma"].send_signal(signal.SIGKILL)
        got += list(results)
        assert [k for k, _ in got] == [i % 12 for i in range(3_000)]


def test_current_worker_names_the_node_worker_and_pid():
    with fabric.connect(workers=2) as fx:
        wait_for(lambda: fx.workers() == 2, 20, "two workers")
        infos = fx.run(fabric.current_worker)
        assert len(infos) == 2
        assert sorted(info.worker for info in infos.values()) == [0, 1]
        assert all(info.pid != os.getpid() and info.worker_id == worker for worker, info in infos.items())
        assert len({info.node for info in infos.values()}) == 1
    assert fabric.current_worker() is None

