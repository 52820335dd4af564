"""The examples run as a user runs them (their own process, functions in ``__main__``) and check themselves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cluster_file

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(args: list[str], cache_dir: Path, cwd: Path = EXAMPLES) -> str:
    """Run a Python process, its results cache in ``cache_dir``; its output, after checking it succeeded."""
    done = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "FABRIC_CACHE_DIR": str(cache_dir)})
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_wordcount(tmp_path):
    assert "OK: matches the serial count" in run(["wordcount.py", "20000"], tmp_path)


def test_cached_sweep_serves_its_second_sweep_from_the_cache(tmp_path):
    out = run(["cached_sweep.py", "40"], tmp_path)
    assert "40 hits" in out and "OK: the second sweep was served from the cache" in out
    assert "40 hits" in run(["cached_sweep.py", "40"], tmp_path)  # a rerun starts cold again: it clears first


@pytest.fixture
def two_node_cluster(tmp_path, start_node):
    """A cluster file naming two nodes on free loopback ports, and the two nodes started from it."""
    config = cluster_file(tmp_path / "cluster.toml", ["alpha", "beta"])
    for name in ("alpha", "beta"):
        start_node(config=config, name=name)
    return config


def test_cluster_run_spreads_over_both_nodes(two_node_cluster, tmp_path):
    out = run(["cluster_run.py", str(two_node_cluster), "20000"], tmp_path)
    assert "OK: longest chain" in out
    ran = {line.split()[0]: int(line.split()[-1].replace(",", "")) for line in out.splitlines()
           if line.split()[:1] in (["alpha"], ["beta"])}
    assert set(ran) == {"alpha", "beta"} and sum(ran.values()) >= 20000 and min(ran.values()) > 0, out


def test_inverted_index_keeps_its_partitions_on_both_nodes(two_node_cluster, tmp_path):
    out = run(["inverted_index.py", str(two_node_cluster), "3000"], tmp_path)
    assert "OK: matches the serial index" in out and "on 2 node(s)" in out, out


# The notebooks run in a real Jupyter kernel: tests/integration/test_notebooks.py.
