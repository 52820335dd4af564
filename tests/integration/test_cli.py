"""``fabric-node`` as a user meets it: one line and status 2 for each user error,
``--version``, and ``stop``, which a node obeys as it obeys SIGTERM: it says so,
and its peers see it leave at once rather than after ``liveness_s`` of silence."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import pytest
from helpers import cluster_file, free_address, node_status, wait_for

import fabric

CLI = [sys.executable, "-m", "fabric.cli"]
ANSWER_S = 20.0  # a node's start-up on a loaded machine
LIVENESS_S = 60.0  # in the leaving tests: silence alone cannot make a peer forget a node within LEAVE_S
LEAVE_S = 20.0  # a stopped node is gone from its peer's view within this (a loaded machine took more than 2 s)


def run_cli(*args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout_s)


@pytest.fixture
def busy_port():
    """A loopback port some other program listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield f"tcp://127.0.0.1:{holder.getsockname()[1]}"


USER_ERRORS = {
    "port-in-use": lambda tmp, port: ["start", "--workers", "1", "--bind", port],
    "bind-without-scheme": lambda tmp, port: ["start", "--workers", "1", "--bind", "localhost:17500"],
    "keygen-into-no-directory": lambda tmp, port: ["keygen", "/nonexistent/dir/k.key"],
    "bad-join": lambda tmp, port: ["start", "--workers", "1", "--join", "localhost"],
    "unreadable-key-file": lambda tmp, port: ["start", "--workers", "1", "--key-file", str(tmp)],
    "key-file-not-a-key": lambda tmp, port: ["status", free_address(), "--key-file", str(tmp / "garbage")],
}


@pytest.mark.parametrize("args", USER_ERRORS.values(), ids=USER_ERRORS.keys())
def test_a_user_error_is_one_line_and_status_2(tmp_path, busy_port, args):
    (tmp_path / "garbage").write_text("not a key\n")
    out = run_cli(*args(tmp_path, busy_port))
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fabric-node: error: "), out.stderr


def test_the_port_in_use_error_says_what_to_do(busy_port):
    out = run_cli("start", "--workers", "1", "--bind", busy_port)
    assert f"cannot bind '{busy_port}': the address is in use" in out.stderr
    assert "bind another port" in out.stderr


def test_version():
    out = run_cli("--version")
    assert out.returncode == 0 and out.stdout.split() == ["fabric-node", fabric.__version__]


def test_stop_by_address_stops_the_node_as_sigterm_does(start_node, tmp_path):
    address, log = free_address(), tmp_path / "node.log"
    node = start_node(address, log=log)
    wait_for(lambda: node_status(address), ANSWER_S, "the node")
    out = run_cli("stop", address)
    assert out.returncode == 0, out.stderr
    assert node.wait(timeout=10) == 0
    assert "stopping (STOP)" in log.read_text()


def test_stop_by_name_in_a_cluster_file(start_node, tmp_path):
    config = cluster_file(tmp_path / "cluster.toml", ["alpha"])
    node = start_node(config=config, name="alpha")
    address = fabric.config.load_config(config).node("alpha").address
    wait_for(lambda: node_status(address), ANSWER_S, "the node")
    assert run_cli("stop", "--config", str(config), "alpha").returncode == 0
    assert node.wait(timeout=10) == 0


def test_stop_of_nobody_fails_in_one_line():
    out = run_cli("stop", free_address())
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "no answer from" in out.stderr


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "STOP"])
def test_a_stopped_node_is_gone_from_its_peers_view_at_once(start_node, tmp_path, how):
    """Liveness 60 s: only NODE_LEAVING can make the peer forget it within LEAVE_S, and
    the peer's log says which (it left, not declared dead after its silence)."""
    first, second = free_address(), free_address()
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    start_node(first, liveness_s=LIVENESS_S, log=first_log)
    leaver = start_node(second, join=first, liveness_s=LIVENESS_S, log=second_log)
    wait_for(lambda: len(node_status(first)) == 2, ANSWER_S, "the two nodes to meet")
    if how == "STOP":
        assert run_cli("stop", second).returncode == 0
    else:
        leaver.send_signal(getattr(signal, how))
    wait_for(lambda: [n.control for n in node_status(first)] == [first], LEAVE_S, "the peer to see it leave")
    assert leaver.wait(timeout=10) == 0
    assert f"stopping ({how})" in second_log.read_text()
    peer = second.removeprefix("tcp://")
    wait_for(lambda: f"peer {peer} left" in first_log.read_text(), LEAVE_S, "the peer's log line")
    assert "declared dead" not in first_log.read_text()
