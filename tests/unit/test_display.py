"""The fabric's repr and HTML display, built from a statistics record (pure)."""

from fabric.client import display
from fabric.client.statistics import CacheStats, FabricStatistics
from fabric.cluster.stats import NodeStats


def stats(*nodes: NodeStats, workers: int = 3) -> FabricStatistics:
    return FabricStatistics(nodes, workers, CacheStats.of(nodes, hits=5, misses=7), 0, 0)


def node(name: str, **fields) -> NodeStats:
    return NodeStats(b"n-1", name, "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", **fields)


def test_one_line_sums_the_nodes():
    text = display.one_line("tcp://h:1", stats(
        node("a", workers=2, busy=1, done=1500, tasks_per_s=100.4),
        node("b", workers=1, busy=0, done=500, tasks_per_s=50.0),
    ))
    assert text == "<fabric.Fabric tcp://h:1: 2 nodes, 3 workers, 1 busy, 2,000 tasks done, 150 tasks/s>"


def test_before_any_worker_attaches_it_says_starting_not_zero():
    assert "workers starting" in display.one_line("tcp://h:1", stats(workers=0))
    assert "workers starting" in display.html_table("tcp://h:1", stats(workers=0))


def test_html_has_a_row_per_node_with_load_tasks_and_cache():
    page = display.html_table("tcp://h:1", stats(
        node("alpha", workers=2, busy=2, done=42, failed=1, cpu_percent=87.0, memory_percent=12.0,
             cache_entries=1234, cache_bytes=3 * 1024 * 1024, cache_hits=4321, cache_misses=8765, cache_weight=1),
        node("beta", accepting=False),
    ))
    for part in ("alpha", "beta", "87", "12", "42 (1 failed)", "1,234", "3.0 MiB", "4,321", "8,765", "paused (load)",
                 "5 hits", "7 misses"):
        assert part in page, part
    assert page.count("<tr><td") == 2


def test_names_from_the_wire_are_escaped():
    page = display.html_table("tcp://h:1", stats(node("<script>alert(1)</script>")))
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_a_closed_fabric_says_so():
    assert display.one_line("ipc:///x", None) == "<fabric.Fabric ipc:///x (closed)>"
    assert "(closed)" in display.html_table("ipc:///x", None)
