"""Nodes on separate hosts (network namespaces, see conftest.py): maps, cut links,
one-way losses, keyed clusters, kept intermediates and by-key reduces across them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
from on_hosts import NODE_PORT, run_on

from benchmarks.netns import Hosts
from fabric.wire.security import write_key_file

pytestmark = pytest.mark.netns


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


CLIENT = textwrap.dedent(
    """
    import json, os, subprocess, sys, time
    import fabric
    from helpers import spin_square

    seed, n, cut = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    keyed = "FABRIC_KEY_FILE" in os.environ  # a keyed cluster needs no insecure flag
    with fabric.connect(seed, insecure=not keyed, heartbeat_interval_s=0.25, liveness_s=1.5) as fx:
        fx.wait_for_workers(2, timeout=30)
        got, start = [], time.monotonic()
        for index, value in enumerate(fx.map(spin_square, range(n), ordered=False)):
            got.append(value)
            if cut and index == n // 4:
                subprocess.run(cut, check=True)      # cut one node's link mid-map
        map_s = time.monotonic() - start
        done = {node.name: node.done for node in fx.nodes()}
        print(json.dumps({"count": len(got), "distinct": len(set(got)), "sum": sum(got), "done": done,
                          "workers": fx.workers(), "map_s": map_s}))
    """
)


def start_nodes(hosts: Hosts, key_file: str | None = None) -> list[subprocess.Popen[str]]:
    seed = f"tcp://{hosts.address(1)}:{NODE_PORT}"
    nodes = []
    for index in (1, 2):
        cmd = [sys.executable, "-m", "fabric.cli", "start", "--bind", f"tcp://{hosts.address(index)}:{NODE_PORT}",
               "--name", f"host{index}", "--workers", "1", "--heartbeat-interval", "0.25",
               "--liveness", "1.5", "--join", seed, *([] if key_file else ["--insecure"])]
        nodes.append(run_on(hosts, index, *cmd, key_file=key_file, stderr=subprocess.DEVNULL))
    return nodes


def run_client(
    hosts: Hosts, tmp_path, n: int, cut: list[str], key_file: str | None = None, timeout: float = 100
) -> dict:
    seed = f"tcp://{hosts.address(1)}:{NODE_PORT}"
    return run_script(hosts, tmp_path, CLIENT, seed, str(n), *cut, key_file=key_file, timeout=timeout)


def run_script(
    hosts: Hosts, tmp_path, text: str, *args: str, key_file: str | None = None, timeout: float = 100
) -> dict:
    """Run the client script ``text`` on host 0; what it printed last, as JSON."""
    script = tmp_path / "client.py"
    script.write_text(text)
    client = run_on(hosts, 0, sys.executable, str(script), *args, key_file=key_file, stdout=subprocess.PIPE)
    try:
        out, _ = client.communicate(timeout=timeout)
    finally:
        client.kill()  # a client that hung past its timeout must not outlive its namespace
    assert client.returncode == 0
    return json.loads(out.strip().splitlines()[-1])


def assert_each_result_once(result: dict, n: int) -> None:
    assert (result["count"], result["distinct"], result["sum"]) == (n, n, sum(x * x for x in range(n)))


def _bridge_filters(hosts: Hosts) -> str | None:
    """Why iptables cannot filter what the bridge forwards between hosts, or None once it can."""
    if shutil.which("iptables") is None:
        return "iptables is not installed (apt-get install iptables)"
    try:  # bridged frames reach iptables' FORWARD chain only through bridge netfilter, set per namespace
        ip("netns", "exec", hosts.bridge, "sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1")
        ip("netns", "exec", hosts.bridge, "iptables", "-L", "FORWARD", "-n")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        return f"the bridge's traffic cannot be filtered here: {getattr(exc, 'stderr', exc)!r}"
    return None


def drop_to_listeners(hosts: Hosts, sender: int, receiver: int) -> list[str]:
    """The command that, run on host ``receiver``, makes the bridge drop from then on every TCP segment
    host ``sender`` sends to a port ``receiver`` listens on. On a client's host those are its ventilator
    and sink: the workers' whole data plane towards it goes, while the node's replies and heartbeats
    (from its own ports, on connections the client opened) still arrive."""
    listening = "ss -Hltn | awk '{n = split($4, part, \":\"); print part[n]}' | paste -sd, -"
    rule = f"FORWARD -s {hosts.address(sender)} -d {hosts.address(receiver)} -p tcp -m multiport --dports"
    return ["sh", "-c", f'exec ip netns exec {hosts.bridge} iptables -A {rule} "$({listening})" -j DROP']


def dropped_packets(hosts: Hosts) -> int:
    """Packets the bridge's FORWARD rules have dropped so far."""
    listing = subprocess.run(["ip", "netns", "exec", hosts.bridge, "iptables", "-L", "FORWARD", "-n", "-v", "-x"],
                             check=True, capture_output=True, text=True, timeout=30).stdout
    return sum(int(row.split()[0]) for row in listing.splitlines()[2:] if "DROP" in row)


@pytest.fixture
def nodes(hosts: Hosts) -> Iterator[list[subprocess.Popen[str]]]:
    yield from _running(start_nodes(hosts))


@pytest.fixture
def cluster_key(hosts: Hosts, tmp_path) -> Iterator[str]:
    """The key file of a keyed cluster whose two nodes are running (without --insecure)."""
    key = write_key_file(tmp_path / "cluster.key")
    for _ in _running(start_nodes(hosts, key.path)):
        yield key.path


def _running(started: list[subprocess.Popen[str]]) -> Iterator[list[subprocess.Popen[str]]]:
    try:
        yield started
    finally:
        for node in started:
            node.kill()
            node.wait()


def test_a_map_runs_across_two_hosts(hosts, nodes, tmp_path):
    n = 20_000
    result = run_client(hosts, tmp_path, n, [])
    assert_each_result_once(result, n)
    assert result["workers"] == 2
    assert all(done > 0 for done in result["done"].values()) and len(result["done"]) == 2


def test_cutting_a_hosts_link_mid_map_loses_and_duplicates_nothing(hosts, nodes, tmp_path):
    n = 20_000
    cut = ["ip", "-n", hosts.name(2), "link", "set", hosts.device(2), "down"]
    result = run_client(hosts, tmp_path, n, cut)
    assert_each_result_once(result, n)
    assert "host2" not in result["done"]  # declared dead once cut off


def test_a_keyed_cluster_spans_hosts_without_the_insecure_flag(hosts, cluster_key, tmp_path):
    # Every socket is a CURVE server or client with the cluster's key; binding 198.18.0.x needs no --insecure.
    n = 20_000
    result = run_client(hosts, tmp_path, n, [], cluster_key)
    assert_each_result_once(result, n)
    assert result["workers"] == 2 and len(result["done"]) == 2


def test_a_one_way_loss_from_a_hosts_workers_to_the_client_does_not_stall_a_map(hosts, nodes, tmp_path):
    """From a quarter of the way in until the map is done, nothing host 2's worker sends the client arrives,
    while host 2's node heartbeats and answers as before. The node is alive, so only data-plane liveness can
    take back the batches that worker holds; the map must finish without the loss ever healing."""
    reason = _bridge_filters(hosts)
    if reason:
        pytest.skip(reason)
    n = 20_000
    result = run_client(hosts, tmp_path, n, drop_to_listeners(hosts, 2, 0), timeout=40)  # ~2 s when it works
    assert_each_result_once(result, n)
    assert dropped_packets(hosts) > 0  # the rule was in place, and hit, until the map ended
    assert "host2" in result["done"]  # its node was never declared dead: liveness, not node loss, undid the stall


PIPELINE = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import fabric

    def make(i):
        return np.full((1 << 20) // 8, float(i))  # 1 MiB

    def head(array):
        return float(array[0])

    def client_bytes():
        link = sys.argv[2]
        return sum(int(open(f"/sys/class/net/{link}/statistics/{d}_bytes").read()) for d in ("rx", "tx"))

    n = 40
    with fabric.connect(sys.argv[1], insecure=True, heartbeat_interval_s=0.25, liveness_s=1.5) as fx:
        fx.wait_for_workers(2, timeout=30)
        before = client_bytes()
        kept = list(fx.map(make, range(n), keep=True))
        heads = list(fx.map(head, kept))
        kept_bytes = client_bytes() - before
        holders = sorted({ref.node_ids[0].decode() for ref in kept})
        before = client_bytes()
        through = list(fx.map(head, fx.map(make, range(n))))
        through_bytes = client_bytes() - before
        print(json.dumps({"heads": heads, "through": through, "kept_bytes": kept_bytes,
                          "through_bytes": through_bytes, "holders": len(holders)}))
    """
)


BY_KEY_CLIENT = textwrap.dedent(
    """
    import json, operator, sys, time
    from collections import Counter
    import fabric
    from helpers import spin_square

    def word_pairs(line):
        return ((word, 1) for word in line.split())

    seed = sys.argv[1]
    lines = [" ".join(f"w{(i * k) % 5003}" for k in range(1, 11)) for i in range(30_000)]
    with fabric.connect(seed, insecure=True, heartbeat_interval_s=0.25, liveness_s=1.5) as fx:
        fx.wait_for_workers(2, timeout=30)
        counts = fx.map_reduce(word_pairs, operator.add, lines, by_key=True, chunksize=500)
        expected = Counter(word for line in lines for word in line.split())
        deadline = time.monotonic() + 10  # the nodes' counters come with their heartbeats: poll them
        while sum(node.done for node in fx.nodes()) < len(lines) and time.monotonic() < deadline:
            fabric.wait([fx.submit(spin_square, 0)], timeout=0.1)
        parts = fx.map_reduce(word_pairs, operator.add, lines, by_key=True, chunksize=500, partitions=8, keep=True)
        joined = {word: n for part in fx.map(dict.items, parts) for word, n in part}
        print(json.dumps({"exact": counts == dict(expected), "keys": len(counts), "workers": fx.workers(),
                          "done": {node.name: node.done for node in fx.nodes()},
                          "kept_exact": joined == dict(expected),
                          "kept_on": len({ref.node_ids for ref in parts}),
                          "recomputed": fx.statistics().recomputed}))
    """
)


BY_KEY_CUT_CLIENT = textwrap.dedent(
    """
    import json, operator, subprocess, sys, threading
    from collections import Counter
    import fabric
    from helpers import spin_square, wait_for

    def slow_pairs(line):
        spin_square(0, 2e-4)  # 0.2 ms a line: the map lasts a few seconds, so the cut lands inside it
        return ((word, 1) for word in line.split())

    seed, cut = sys.argv[1], sys.argv[2:]
    lines = [" ".join(f"w{(i * k) % 5003}" for k in range(1, 11)) for i in range(20_000)]
    with fabric.connect(seed, insecure=True, heartbeat_interval_s=0.25, liveness_s=1.5) as fx:
        fx.wait_for_workers(2, timeout=30)

        def cut_a_quarter_in():
            wait_for(lambda: sum(node.done for node in fx.nodes()) >= len(lines) // 4, 60, "a quarter mapped")
            subprocess.run(cut, check=True)

        cutter = threading.Thread(target=cut_a_quarter_in)
        cutter.start()
        counts = fx.map_reduce(slow_pairs, operator.add, lines, by_key=True, chunksize=200)
        cutter.join()
        expected = Counter(word for line in lines for word in line.split())
        print(json.dumps({"exact": counts == dict(expected), "recomputed": fx.statistics().recomputed,
                          "nodes": sorted(node.name for node in fx.nodes())}))
    """
)


def test_cutting_a_hosts_link_mid_by_key_call_gives_the_exact_count(hosts, nodes, tmp_path):
    """Host 2 drops off the network a quarter of the way into the map: its batches in flight run
    again on host 1, the partials it kept are folded again from their input, and every
    partition is merged on host 1."""
    cut = ["ip", "-n", hosts.name(2), "link", "set", hosts.device(2), "down"]
    result = run_script(hosts, tmp_path, BY_KEY_CUT_CLIENT, f"tcp://{hosts.address(1)}:{NODE_PORT}", *cut)
    assert result["exact"]
    assert result["recomputed"] > 0, "the partials host 2 kept were made again"
    assert result["nodes"] == ["host1"]  # host 2 declared dead once cut off


def test_a_keep_pipeline_across_hosts_sends_no_intermediate_through_the_client(hosts, nodes, tmp_path):
    result = run_script(hosts, tmp_path, PIPELINE, f"tcp://{hosts.address(1)}:{NODE_PORT}", hosts.device(0))
    n, mib = 40, 1 << 20
    print(f"client bytes: keep {result['kept_bytes']:,}, through the client {result['through_bytes']:,}")
    assert result["heads"] == result["through"] == [float(i) for i in range(n)]
    assert result["holders"] == 2  # both hosts made intermediates
    assert result["through_bytes"] > 2 * n * mib  # each intermediate came to the client and went out again
    assert result["kept_bytes"] < n * mib // 10  # with keep=True only Refs and control traffic reach it


def test_a_word_count_by_key_across_two_hosts(hosts, nodes, tmp_path):
    result = run_script(hosts, tmp_path, BY_KEY_CLIENT, f"tcp://{hosts.address(1)}:{NODE_PORT}")
    assert result["exact"] and result["keys"] == 5003 and result["workers"] == 2
    assert all(done > 0 for done in result["done"].values()) and len(result["done"]) == 2
    # kept, the eight partitions are merged on both hosts (each on its ring owner), and join exactly
    assert result["kept_exact"] and result["kept_on"] == 2 and result["recomputed"] == 0
