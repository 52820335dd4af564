"""The benchmark harness runs end to end on tiny sizes and writes its JSON and plot (no speed asserts)."""

import importlib.metadata
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from helpers import wait_for


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny run, shared by the tests: its outputs' directory."""
    out = tmp_path_factory.mktemp("bench")
    (out / "user-cache").mkdir()
    subprocess.run(
        [sys.executable, "-m", "benchmarks", "--tiny", "--only", "W1,W2,W3,W4,W6,W7,W8,keyed", "--peers", "mp.Pool",
         "--repeat", "1", "--json", str(out / "bench.json"), "--markdown", str(out / "report.md"),
         "--plot", str(out / "bench.png")],
        check=True, timeout=300, capture_output=True, env={**os.environ, "FABRIC_CACHE_DIR": str(out / "user-cache")},
    )
    return out


def test_quick_run_writes_the_json_schema(run):
    data = json.loads((run / "bench.json").read_text())
    assert {"machine", "skipped", "figures"} <= set(data)
    assert data["machine"]["cpus"] >= 1 and data["machine"]["packages"]["pyzmq"]
    systems = {f["system"] for f in data["figures"]}
    assert {"fabric", "mp.Pool"} <= systems
    for figure in data["figures"]:
        values = figure["values"]
        assert values and all(math.isfinite(v) for v in values), figure
        if "overhead" not in figure["metric"]:  # an overhead within noise of zero may come out negative
            assert all(v > 0 for v in values), figure
        assert figure["min"] <= figure["median"] <= figure["max"]
    judged = [f for f in data["figures"] if f["met"] is not None]
    assert judged and all(f["system"] == "fabric" and f["target"] for f in judged)
    assert "| workload |" in (run / "report.md").read_text()
    w6 = {(f["metric"], f["system"]) for f in data["figures"] if f["workload"] == "W6 word count"}
    assert {("lines/s", "fabric"), ("lines/s combine", "fabric"), ("lines/s", "mp.Pool")} <= w6


def test_plot_writes_a_png(run):
    pytest.importorskip("matplotlib")
    assert (run / "bench.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_the_run_leaves_the_users_cache_alone(run):
    # W7 stores results through the cache: they go to the run's own directory, not the user's.
    figures = json.loads((run / "bench.json").read_text())["figures"]
    assert any(f["workload"] == "W7 cache" for f in figures)
    assert not any((run / "user-cache").iterdir())


def test_the_harness_installs_under_the_projects_name(tmp_path):
    """pip install . puts the harness in fabric.bench, never a top-level package named
    'benchmarks' that could shadow, or be shadowed by, another project's."""
    installed_dists = [d for d in importlib.metadata.distributions(name="zmq-fabric") if d.read_text("RECORD")]
    if not installed_dists:
        pytest.skip("zmq-fabric is not installed by pip here (run from a bare checkout)")
    dist = installed_dists[0]  # pip's record of what it installed, not a checkout's egg-info
    assert "fabric-bench" in {e.name for e in dist.entry_points}
    assert next(e for e in dist.entry_points if e.name == "fabric-bench").value == "fabric.bench.runner:main"
    installed = [str(f) for f in dist.files or ()]
    assert not [f for f in installed if f.startswith("benchmarks/")]
    for command in ([sys.executable, "-m", "fabric.bench", "--help"],
                    [str(Path(sys.executable).with_name("fabric-bench")), "--help"]):
        out = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60)  # away from a checkout
        assert out.returncode == 0 and "fabric-bench" in out.stdout, out.stderr


def test_the_scale_benchmark_measures_every_size_and_draws_them(tmp_path):
    """Two sizes, a short idle window, one kill: every figure is there and finite."""
    out = tmp_path / "scale.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.scale", "--sizes", "1,2", "--idle-s", "0.5", "--detect", "1",
         "--json", str(out), "--markdown", *(["--plot", str(tmp_path / "scale.png")]
                                              if importlib.util.find_spec("matplotlib") else [])],
        check=True, timeout=180, capture_output=True, text=True,
    )
    saved = json.loads(out.read_text())
    rows = saved["sizes"]["gossip"]
    assert [r["nodes"] for r in rows] == [1, 2]
    assert all(math.isfinite(v) and v >= 0 for r in rows for v in r.values())
    assert all(r["ms_tasks_per_s"] > 0 and r["see_all_s"] > 0 for r in rows)
    assert len(saved["detection"]["gossip"]["detection_s"]) == 1
    assert "| gossip | 2 |" in done.stdout


@pytest.mark.netns
def test_the_scale_benchmark_runs_nodes_and_client_on_hosts_of_their_own(tmp_path):
    """--netns: two nodes and the client each in a network namespace; every figure is there,
    the bytes come from the hosts' veths, and no namespace of the run is left behind."""
    from benchmarks import netns

    reason = netns.unavailable()
    if reason:
        pytest.skip(f"the netns series needs network namespaces: {reason}")
    before = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    out = tmp_path / "scale.json"
    run = subprocess.Popen([sys.executable, "-m", "benchmarks.scale", "--netns", "--sizes", "2", "--idle-s", "1.5",
                            "--json", str(out), "--markdown"], stdout=subprocess.PIPE, text=True)
    try:
        stdout, _ = run.communicate(timeout=180)
    finally:
        run.kill()
    assert run.returncode == 0
    (row,) = json.loads(out.read_text())["sizes"]["gossip, netns"]
    assert row["nodes"] == 2 and all(math.isfinite(v) and v >= 0 for v in row.values())
    assert row["ms_tasks_per_s"] > 0 and row["see_all_s"] > 0
    assert row["sent_bytes_per_s_per_node"] > 0  # heartbeats crossed the veths
    assert "| gossip, netns | 2 |" in stdout
    after = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    assert not {name for name in after - before if name.startswith(f"fs{run.pid % 100000}")}  # the run's names


def _namespaces(prefix: str) -> set[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    return {line.split()[0] for line in listing.splitlines() if line.startswith(prefix)}


def _at_least(count: int, found: list) -> list | None:
    return found if len(found) >= count else None


@pytest.mark.netns
def test_an_interrupted_netns_run_deletes_its_namespaces(tmp_path):
    """Interrupted while its nodes start: the run's namespaces, veths with them, are gone all the same."""
    from benchmarks import netns

    reason = netns.unavailable()
    if reason:
        pytest.skip(f"the netns series needs network namespaces: {reason}")
    run = subprocess.Popen([sys.executable, "-m", "benchmarks.scale", "--netns", "--sizes", "4", "--idle-s", "30",
                            "--json", str(tmp_path / "scale.json")], stdout=subprocess.DEVNULL)
    prefix = f"fs{run.pid % 100000}"
    try:
        started = wait_for(lambda: _at_least(4, psutil.Process(run.pid).children(recursive=True)), timeout_s=60)
        assert len(_namespaces(prefix)) == 6  # the bridge, the client's host and 4 nodes' hosts
        run.send_signal(signal.SIGINT)
        run.wait(timeout=60)
    finally:
        run.kill()
    assert run.returncode != 0
    assert not _namespaces(prefix)
    assert not [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]  # nodes and workers
    assert not (tmp_path / "scale.json").exists()


@pytest.mark.parametrize("system", ["serial", "fabric by_key", "fabric combine"])
def test_the_by_key_workload_counts_every_word_in_a_process_of_its_own(system):
    out = subprocess.run([sys.executable, "-m", "benchmarks.by_key", system, "wide", "40000", "2"], check=True,
                         timeout=120, capture_output=True, text=True)
    measured = json.loads(out.stdout)
    assert measured["keys"] == 20_000  # every key twice: the words were all counted (checked inside too)
    assert measured["seconds"] > 0 and measured["peak_rss_mb"] >= 0
