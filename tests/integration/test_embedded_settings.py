"""Node settings end to end: ``fabric-node start`` refuses a bad flag at once, the
embedded node runs with what ``connect()`` was given (handed over as JSON, not
as flags), and it still removes its owner's directory when the owner dies."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from helpers import all_gone, node_process, wait_for

TESTS_DIR = str(Path(__file__).resolve().parents[1])
START_TIMEOUT_S = 60.0


@pytest.mark.parametrize(("flags", "message"), [
    (["--workers", "-1"], "workers: must be >= 1 (worker processes), got -1"),
    (["--heartbeat-interval", "0"], "heartbeat_interval_s: must be > 0 (seconds between heartbeats), got 0"),
    (["--liveness", "0.5"], "liveness_s: must exceed heartbeat_interval_s (1 s) by several beats, got 0.5"),
])
def test_fabric_node_start_refuses_a_bad_flag_at_once(flags, message, no_leaked_processes):
    out = subprocess.run([sys.executable, "-m", "fabric.cli", "start", *flags], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 2
    assert out.stderr == f"fabric-node: error: command line: {message}\n"  # one line


def test_the_embedded_node_runs_with_the_settings_given_to_connect(make_fabric):
    fx = make_fabric(workers=1, prefetch=3, heartbeat_interval_s=0.2, liveness_s=1.0)
    assert node_process(fx).cmdline()[1:] == ["-m", "fabric.node"]  # settings on stdin, no flags
    wait_for(lambda: fx._io.capacity() == 3, 10, "one worker's 3 credits (prefetch=3)")
    wait_for(lambda: [(n.name, n.workers) for n in fx.nodes()] == [("embedded", 1)], 10, "a heartbeat with 1 worker")
    assert fx.submit(pow, 2, 10).result(timeout=30) == 1024


CLIENT = textwrap.dedent(
    """
    import json, threading
    import fabric
    from helpers import fabric_pids, wait_workers

    fx = fabric.connect(workers=1)
    wait_workers(fx, 1)
    print(json.dumps([fx._embedded.dir, sorted(fabric_pids(fx))]), flush=True)
    threading.Event().wait()  # until killed
    """
)


def test_the_embedded_node_removes_its_owners_directory_when_the_owner_is_killed(tmp_path, no_leaked_processes):
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [TESTS_DIR, os.environ.get("PYTHONPATH")])))
    client = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    pids: list[int] = []
    try:
        ready, _, _ = select.select([client.stdout], [], [], START_TIMEOUT_S)
        assert ready, "the client never printed its node's directory"
        owner_dir, pids = json.loads(client.stdout.readline())
        assert Path(owner_dir).is_dir()
        client.kill()
        client.wait(10)
        wait_for(lambda: all_gone(set(pids)), 10, "the node and its worker to exit")
        assert not Path(owner_dir).exists()
    finally:
        for pid in pids:
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
        client.kill()
        client.wait(10)
        client.stdout.close()
