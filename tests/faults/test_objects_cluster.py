"""Objects across daemon nodes on loopback: placement by data, named objects seen
from another process, the store's bound and spill, and the death of a holder."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import cluster_file, square, wait_for, worker_processes

import fabric
from fabric.config import load_config

MB = 1 << 20


def node_of_worker(_: object = None) -> bytes:
    from fabric.node import worker_objects

    return worker_objects.local.node_id


def make_mb(i: int) -> np.ndarray:
    return np.full(MB // 8, float(i))


def where_and_sum(array: np.ndarray) -> tuple[bytes, float]:
    return node_of_worker(), float(array.sum())


def two_nodes(tmp_path, start_node, *tables: str) -> tuple[str, dict[str, subprocess.Popen[bytes]]]:
    config = cluster_file(tmp_path / "cluster.toml", ["alpha", "beta"], *tables)
    nodes = {name: start_node(config=config, name=name) for name in ("alpha", "beta")}
    return str(config), nodes


def connected(config: str) -> fabric.Fabric:
    fx = fabric.connect(config)
    wait_for(lambda: len([n for n in fx.nodes() if n.objects]) == 2 and fx.workers() == 2, 60, "both nodes")
    return fx


def test_a_keep_pipeline_runs_each_step_where_its_input_is(tmp_path, start_node):
    config, _ = two_nodes(tmp_path, start_node)
    with connected(config) as fx:
        kept = list(fx.map(make_mb, range(16), keep=True, chunksize=1))
        holders = {ref.node_ids[0] for ref in kept}
        assert len(holders) == 2  # both nodes made some
        placed = list(fx.map(where_and_sum, kept, chunksize=1))
        assert [s for _, s in placed] == [float(i) * (MB // 8) for i in range(16)]
        local = sum(node == ref.node_ids[0] for (node, _), ref in zip(placed, kept))
        assert local >= 12  # most ran where their input was (a few may wait out locality_wait_s)


def test_a_named_object_outlives_its_client_and_is_seen_from_another_process(tmp_path, start_node):
    config, _ = two_nodes(tmp_path, start_node)
    with connected(config) as fx:
        fx.put(list(range(1000)), name="corpus")
    script = (
        "import sys, fabric\n"
        "with fabric.connect(sys.argv[1]) as fx:\n"
        "    ref = fx.ref('corpus')\n"
        "    print(sum(fx.get(ref)), [o.name for o in fx.objects()], fx.submit(len, ref).result())\n"
        "    print(fx.delete('corpus'), fx.objects())\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", script, config], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["499500 ['corpus'] 1000", "True []"]


def test_the_store_is_bounded_and_spills_to_disk(tmp_path, start_node):
    config, _ = two_nodes(tmp_path, start_node, "[store]", f"max_bytes = {2 * MB}")
    with connected(config) as fx:
        refs = [fx.put(np.full(MB // 8, float(i))) for i in range(6)]
        wait_for(lambda: sum(s["disk_bytes"] for s in fx.statistics().store.values()) > 0
                 and sum(s["objects"] for s in fx.statistics().store.values()) == 6, 10, "six objects, some spilled")
        assert all(s["bytes"] <= 2 * MB for s in fx.statistics().store.values())
        assert [float(fx.get(r)[0]) for r in refs] == [float(i) for i in range(6)]
        assert list(fx.map(lambda a: float(a[0]), refs)) == [float(i) for i in range(6)]


def kill_node(node: subprocess.Popen[bytes]) -> None:
    for process in [*worker_processes({node.pid})]:
        process.kill()
    node.kill()
    node.wait()


@pytest.mark.parametrize("replicas", [1, 2])
def test_sigkill_of_the_holding_node(tmp_path, start_node, replicas):
    config, nodes = two_nodes(tmp_path, start_node, "[cache]", f"replicas = {replicas}")
    by_id = {}
    with connected(config) as fx:
        by_id = {n.node_id: n.name for n in fx.nodes()}
        ref = fx.put(np.arange(1000.0))
        kept = fx.options(keep=True).submit(square, 12).result()
        assert len(ref.holders) == replicas
        victim = by_id[ref.node_ids[0]]
        kill_node(nodes[victim])
        wait_for(lambda: len(fx.nodes()) == 1, 20, "the killed node declared dead")
        if replicas == 2:
            assert float(fx.get(ref).sum()) == np.arange(1000.0).sum()
        else:
            with pytest.raises(fabric.ObjectLostError):
                fx.get(ref)
            for future in [fx.submit(len, ref) for _ in range(3)]:  # every task that needs it fails too
                with pytest.raises(fabric.ObjectLostError):
                    future.result(timeout=60)
        assert fx.get(kept) == 144  # recomputed when its node was the one killed
        assert load_config(config).cache.replicas == replicas


def test_fabric_node_status_shows_each_nodes_store(tmp_path, start_node):
    config, _ = two_nodes(tmp_path, start_node)
    with connected(config) as fx:
        ref = fx.put(np.zeros(3 * MB // 8))
        node = next(n for n in fx.nodes() if n.node_id == ref.node_ids[0])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

        def status_line() -> str:
            out = subprocess.run([sys.executable, "-m", "fabric.cli", "status", node.control], capture_output=True,
                                 text=True, env=env, timeout=30).stdout
            return next(line for line in out.splitlines() if line.startswith(node.name))

        header = subprocess.run([sys.executable, "-m", "fabric.cli", "status", node.control], capture_output=True,
                                text=True, env=env, timeout=30).stdout.splitlines()[0]
        assert "objects" in header and "store MB" in header
        line = wait_for(lambda: (text := status_line()).split()[11:13] == ["1", "3.0"] and text, 10, "the put listed")
        assert line


def where_and_len(data: bytes, _: int = 0) -> tuple[bytes, int]:
    return node_of_worker(), len(data)


def test_a_worker_fetches_what_its_node_lacks_from_the_holding_node(tmp_path, start_node):
    config, _ = two_nodes(tmp_path, start_node)
    with connected(config) as fx:
        ref = fx.put(os.urandom(300_000))  # under the locality threshold: tasks run anywhere
        ran = set()
        for _ in range(20):
            ran |= {node for node, size in fx.map(where_and_len, [ref] * 8, range(8), chunksize=1) if size == 300_000}
            if len(ran) == 2:
                break
        assert len(ran) == 2  # a worker of the other node read it too: its node fetched a copy
        wait_for(lambda: [s["objects"] for s in fx.statistics().store.values()] == [1, 1], 10, "a copy on each node")
        assert fx.map_reduce(where_and_len, lambda total, pair: total + pair[1], [ref] * 4, initial=0) == 1_200_000
        del ref  # the client knows where its batches ran, so the copy goes with the original
        gc.collect()
        wait_for(lambda: [s["objects"] for s in fx.statistics().store.values()] == [0, 0], 10, "the copy freed too")


def test_a_put_whose_replica_does_not_answer_is_held_by_the_other(tmp_path, start_node):
    import signal

    config, nodes = two_nodes(tmp_path, start_node, "[cache]", "replicas = 2")
    with connected(config) as fx:
        nodes["beta"].send_signal(signal.SIGSTOP)  # listed as live for another second: the put starts on both
        try:
            ref = fx.put(np.arange(10.0))  # beta's part times out (transfer.TIMEOUT_S)
            names = {n.node_id: n.name for n in fx.nodes()}
            assert [names.get(node_id, "beta") for node_id in ref.node_ids] == ["alpha"]
            assert float(fx.get(ref).sum()) == 45.0
        finally:
            nodes["beta"].send_signal(signal.SIGCONT)


def add_one(x: int) -> int:
    return x + 1


def test_a_lost_kept_result_is_computed_again_for_its_dependents_and_get(tmp_path, start_node):
    config, nodes = two_nodes(tmp_path, start_node)
    with connected(config) as fx:
        names = {n.node_id: n.name for n in fx.nodes()}
        kept = fx.options(keep=True).submit(square, 7).result()
        kill_node(nodes[names[kept.node_ids[0]]])
        wait_for(lambda: len(fx.nodes()) == 1, 20, "the killed node declared dead")
        dependent = fx.submit(add_one, kept)  # its input is gone: its call runs again first
        assert dependent.result(timeout=60) == 50
        assert fx.get(kept) == 49


def plus(a: int, b: int) -> int:
    return a + b


def test_lost_results_of_a_keep_map_are_computed_again_item_by_item(tmp_path, start_node):
    config, nodes = two_nodes(tmp_path, start_node)
    with connected(config) as fx:
        names = {n.node_id: n.name for n in fx.nodes()}
        kept = list(fx.map(square, range(12), keep=True, chunksize=3))
        victim = names[kept[0].node_ids[0]]
        kill_node(nodes[victim])
        wait_for(lambda: len(fx.nodes()) == 1, 20, "the killed node declared dead")
        assert list(fx.map(add_one, kept)) == [x * x + 1 for x in range(12)]  # lost inputs computed again first
        assert fx.get(kept) == [x * x for x in range(12)]


def test_a_lost_result_of_a_keep_starmap_is_computed_again_for_get_and_dependents(tmp_path, start_node):
    config, nodes = two_nodes(tmp_path, start_node)
    with connected(config) as fx:
        names = {n.node_id: n.name for n in fx.nodes()}
        kept = list(fx.options(keep=True).map(plus, range(8), range(10, 18), chunksize=2, ordered=False))
        kill_node(nodes[names[kept[-1].node_ids[0]]])
        wait_for(lambda: len(fx.nodes()) == 1, 20, "the killed node declared dead")
        assert sorted(fx.get(kept)) == [2 * i + 10 for i in range(8)]
        assert sorted(fx.map(add_one, kept)) == [2 * i + 11 for i in range(8)]
