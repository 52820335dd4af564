"""Code that lives on one side only, across hosts (network namespaces, see
conftest.py): a task module only the node's host has, called by name from a
client that cannot import it; and a helper module only the client has, in a
temporary folder, run on the node's host, edited and reloaded."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from on_hosts import NODE_PORT, run_on

from benchmarks.netns import Hosts

pytestmark = pytest.mark.netns

CLIENT = textwrap.dedent(
    """
    import importlib, json, sys
    import fabric

    seed, helper_path = sys.argv[1], sys.argv[2]
    import client_helper

    with fabric.connect(seed, insecure=True, heartbeat_interval_s=0.25, liveness_s=1.5) as fx:
        tasks = fx.tasks()  # waits for the node's first heartbeat
        counted = fx.submit("wordcount", "one two three").result(timeout=30)
        mapped = list(fx.map("wordcount", ["a", "a b"]))
        try:
            import host_jobs  # noqa: F401
            client_has_jobs = True
        except ImportError:
            client_has_jobs = False
        before = fx.submit(client_helper.tag, 1).result(timeout=30)
        with open(helper_path, "w") as f:
            f.write("import socket\\ndef tag(x):\\n    return ['v2', x * 10, socket.gethostname()]\\n")
        importlib.invalidate_caches()
        importlib.reload(client_helper)
        after = list(fx.map(client_helper.tag, [1, 2]))
        where = fx.run("where")
        print(json.dumps({"tasks": tasks, "counted": counted, "mapped": mapped, "client_has_jobs": client_has_jobs,
                          "before": before, "after": after, "where": sorted(where.values())}))
    """
)

JOBS = textwrap.dedent(
    """
    import socket
    import fabric

    @fabric.task
    def wordcount(text):
        return len(text.split())

    @fabric.task
    def where():
        return socket.gethostname()
    """
)


def test_node_tasks_by_name_and_a_client_only_helper_cross_hosts(hosts: Hosts, tmp_path: Path):
    node_side, client_side = tmp_path / "node_only", tmp_path / "client_only"
    node_side.mkdir()
    client_side.mkdir()
    (node_side / "host_jobs.py").write_text(JOBS)
    helper = client_side / "client_helper.py"
    helper.write_text("def tag(x):\n    return ['v1', x]\n")
    (client_side / "client.py").write_text(CLIENT)
    address = f"tcp://{hosts.address(1)}:{NODE_PORT}"
    node_cmd = [sys.executable, "-m", "fabric.cli", "start", "--bind", address, "--name", "host1", "--workers", "1",
                "--heartbeat-interval", "0.25", "--liveness", "1.5", "--insecure", "--tasks", "host_jobs"]
    node = run_on(hosts, 1, "env", f"PYTHONPATH={node_side}:{':'.join(sys.path)}", *node_cmd, stderr=subprocess.DEVNULL,
                      cwd=str(node_side))
    try:
        client = run_on(hosts, 0, sys.executable, str(client_side / "client.py"), address, str(helper),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(client_side))
        out, err = client.communicate(timeout=120)
        assert client.returncode == 0, err
        got = json.loads(out.strip().splitlines()[-1])
    finally:
        node.kill()
        node.wait()
    assert got["tasks"] == {"where": ["host1"], "wordcount": ["host1"]}
    assert got["counted"] == 3 and got["mapped"] == [1, 2]
    assert not got["client_has_jobs"]
    assert got["before"] == ["v1", 1]
    assert [r[:2] for r in got["after"]] == [["v2", 10], ["v2", 20]]
    assert len(got["where"]) == 1
