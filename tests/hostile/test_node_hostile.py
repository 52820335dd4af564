"""A real ``fabric-node`` under attack through raw sockets keeps serving a
client's concurrent map, with exact results.

Each case attacks a node while (or before) a client maps over it: forged
membership (a PEER_HELLO naming no endpoint, a heartbeat naming peers whose
endpoints libzmq refuses), 600 fake clients, a frame declaring 2 GB, and 1,100
silent TCP connections to a node that may hold only 1,024 descriptors.
"""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import msgpack
import psutil
import pytest
import zmq
from helpers import free_address, square, wait_for, worker_processes

import fabric
from fabric.cli import ask_status
from fabric.cluster.stats import NodeStats
from fabric.wire import security
from fabric.wire.message import Kind
from fabric.wire.protocol import PROTOCOL_VERSION, Heartbeat, Hello, PeerHello, to_frames

FAST = {"heartbeat_interval_s": 0.2, "liveness_s": 1.0}
MAP_ITEMS = 20_000
MAP_TIMEOUT_S = 60.0
ANSWER_S = 20.0
REFUSE_S = 10.0  # a frame over ZMQ_MAXMSGSIZE closes the connection at once; without it the node waits
FD_LIMIT = 1024
# Silent connections are opened in rounds until the node is out of descriptors, however many it
# held before (~25) and however many the kernel loses on the way (below), at most this many.
MAX_SILENT_CONNECTIONS = 3 * FD_LIMIT
CONNECTION_ROUND = 20
BAD_PORT = "tcp://127.0.0.1:\u0665"  # passed the edge before ports had to be ASCII; connect() raises EINVAL


def answering(address: str) -> bool:
    try:
        return bool(ask_status(address, timeout_s=1.0))
    except TimeoutError:
        return False


def exact_map(address: str, started: threading.Event | None = None) -> float:
    """Map over the node and check every result; the seconds it took."""
    with fabric.connect(address, connect_timeout_s=MAP_TIMEOUT_S, **FAST) as fx:
        began = time.monotonic()
        results = fx.map(square, range(MAP_ITEMS))
        first = next(results)
        if started is not None:
            started.set()
        assert [first, *results] == [x * x for x in range(MAP_ITEMS)]
        return time.monotonic() - began


@contextlib.contextmanager
def concurrent_map(address: str) -> Iterator[Callable[[], float]]:
    """A client mapping over the node in a thread, its first result in before the
    block runs; the callable returns the map's seconds (or raises its error)."""
    outcome: dict[str, object] = {}
    started = threading.Event()

    def run() -> None:
        try:
            outcome["seconds"] = exact_map(address, started)
        except BaseException as exc:  # handed to the test's thread
            outcome["error"] = exc
        started.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert started.wait(MAP_TIMEOUT_S), "the map never started"

    def finish() -> float:
        thread.join(MAP_TIMEOUT_S)
        assert not thread.is_alive(), f"the map did not finish within {MAP_TIMEOUT_S} s"
        if "error" in outcome:
            raise outcome["error"]  # type: ignore[misc]
        return outcome["seconds"]  # type: ignore[return-value]

    yield finish


@pytest.fixture
def node(start_node, tmp_path):
    """A node with 2 workers answering at its address; (address, process, log path)."""
    address, log = free_address(), tmp_path / "node.log"
    process = start_node(address, workers=2, log=log)
    wait_for(lambda: answering(address), ANSWER_S, "the node")
    return address, process, log


@pytest.fixture
def raw(zmq_context):
    """A raw socket (a DEALER unless told) connected to, or bound at, an endpoint; closed at teardown."""
    made: list[zmq.Socket] = []

    def open_socket(endpoint: str, kind: int = zmq.DEALER, bind: bool = False) -> zmq.Socket:
        sock = zmq_context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        made.append(sock)
        sock.bind(endpoint) if bind else sock.connect(endpoint)
        return sock

    yield open_socket
    for sock in made:
        sock.close()


def header(kind: Kind, *fields: object) -> list[bytes]:
    """A message as an attacker writes it: fields the sender's own to_frames never checks."""
    return [msgpack.packb([PROTOCOL_VERSION, int(kind), *fields], use_bin_type=True)]


def test_forged_membership_is_refused_at_the_edge(node, raw):
    address, process, log = node
    with concurrent_map(address) as finish:
        intruder = raw(address)
        intruder.send_multipart(header(Kind.PEER_HELLO, b"n-forged", "not-an-endpoint", "not-an-endpoint"))
        # A PUB the node will subscribe to, publishing heartbeats whose peers no connect() accepts.
        pub_endpoint = free_address()
        pub = raw(pub_endpoint, zmq.PUB, bind=True)
        intruder.send_multipart(to_frames(PeerHello(b"n-forged", free_address(), pub_endpoint)))
        info = NodeStats(node_id=b"n-forged", name="forged", control=free_address(), pub=pub_endpoint).to_info()
        forgeries = [
            to_frames(Heartbeat(b"n-forged", {**info, "peers": [[BAD_PORT, BAD_PORT]]})),
            header(Kind.HEARTBEAT, b"n-forged", {**info, "peers": [["not-an-endpoint", "not-an-endpoint"]]}),
        ]

        def heard() -> bool:  # the SUB joins a little later: publish until the node has read one
            for frames in forgeries:
                pub.send_multipart(frames)
            return process.poll() is not None or "dropped a malformed heartbeat" in log.read_text()

        wait_for(heard, ANSWER_S, "the node to read the forged heartbeats")
        assert process.poll() is None, f"the node died:\n{log.read_text()[-2000:]}"
        seconds = finish()
    assert process.poll() is None and answering(address)
    print(f"forged membership: map of {MAP_ITEMS} in {seconds:.2f} s")


def test_600_fake_clients_leave_the_workers_serving(node, raw, tmp_path):
    address, process, log = node
    workers = {p.pid for p in worker_processes({process.pid})}
    intruder = raw(address)
    fakes = [Hello(b"c-fake-%d" % i, f"ipc://{tmp_path}/v{i}", f"ipc://{tmp_path}/s{i}", 1 << 20) for i in range(600)]
    with concurrent_map(address) as finish:
        stop = threading.Event()
        rounds = []

        def flood() -> None:  # as live clients do, the fakes say HELLO again each heartbeat interval
            while not stop.is_set():
                for hello in fakes:
                    intruder.send_multipart(to_frames(hello))
                rounds.append(None)
                stop.wait(FAST["heartbeat_interval_s"])

        flooder = threading.Thread(target=flood, daemon=True)
        flooder.start()
        try:
            wait_for(lambda: len(rounds) >= 5, ANSWER_S, "five rounds of 600 HELLOs")
            seconds = finish()
        finally:
            stop.set()
            flooder.join()
    assert process.poll() is None
    assert {p.pid for p in worker_processes({process.pid})} == workers, "a worker died and was replaced"
    assert "HELLO beyond max_clients refused" in log.read_text()
    print(f"600 fake clients: map of {MAP_ITEMS} in {seconds:.2f} s")


def zmtp_frame_declaring(size: int) -> bytes:
    """A ZMTP 3.0 NULL-mechanism greeting and READY as a DEALER, then a frame
    header announcing ``size`` bytes (none of which follow)."""
    greeting = b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\0") + b"\0" + b"\0" * 31
    prop = b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
    ready = b"\x05READY" + prop
    return greeting + b"\x04" + bytes([len(ready)]) + ready + b"\x02" + struct.pack(">Q", size)


def test_a_frame_declared_too_large_is_refused_before_it_is_read(node):
    address, process, _ = node
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    with concurrent_map(address) as finish, socket.create_connection((host, int(port))) as conn:
        conn.sendall(zmtp_frame_declaring(2 << 30))
        conn.settimeout(REFUSE_S)
        try:
            while conn.recv(4096):  # the node's greeting and READY, then its close
                pass
        except ConnectionResetError:  # closed with our bytes unread
            pass
        except TimeoutError:
            pytest.fail(f"the node still waits for the 2 GB frame after {REFUSE_S} s")
        seconds = finish()
    assert process.poll() is None
    print(f"2 GB frame: refused, map of {MAP_ITEMS} in {seconds:.2f} s")


def connecting(address: tuple[str, int]) -> socket.socket:
    """A TCP connection started, not waited for.  Once the node is out of descriptors
    and its listen backlog is full, a blocking connect waits for SYN retries (1, 3,
    7 s) past the node's 10 s handshake interval, which by then has closed the first
    silent connections.  And a connection that overflowed the backlog may be
    established on this side only (a SYN cookie whose ACK the node dropped) and,
    silent, never reach the node: so the flood goes on until the node is full."""
    conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    conn.setblocking(False)
    conn.connect_ex(address)
    return conn


def test_a_node_out_of_descriptors_survives_and_serves_once_they_close(tmp_path):
    """psutil's readings and a worker's spawn fail with EMFILE: skipped, and retried at a later beat."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = MAX_SILENT_CONNECTIONS + 1024  # this test's sockets
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, limit), max(hard, limit)))
    address, log = free_address(), tmp_path / "node.log"
    cmd = [sys.executable, "-m", "fabric.cli", "start", "--workers", "2", "--bind", address,
           "--cache-dir", str(tmp_path / "cache"), "--heartbeat-interval", "0.2", "--liveness", "1.0"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with open(log, "w") as stderr:
        process = subprocess.Popen(cmd, env=env, stderr=stderr,
                                   preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT)))
    connections: list[socket.socket] = []
    try:
        wait_for(lambda: answering(address), ANSWER_S, "the node")
        host, _, port = address.removeprefix("tcp://").rpartition(":")
        descriptors = psutil.Process(process.pid)

        def out_of_descriptors() -> bool:
            if process.poll() is not None or descriptors.num_fds() >= FD_LIMIT - 1:
                return True
            if len(connections) < MAX_SILENT_CONNECTIONS:
                connections.extend(connecting((host, int(port))) for _ in range(CONNECTION_ROUND))
            return False

        wait_for(out_of_descriptors, ANSWER_S, "the node to run out of descriptors")
        wait_for(lambda: process.poll() is not None or "a psutil reading failed" in log.read_text(), ANSWER_S,
                 "the node's health check to meet EMFILE")
        worker_processes({process.pid})[0].kill()  # its replacement cannot start while no descriptor is free
        wait_for(lambda: process.poll() is not None or "a worker could not be started" in log.read_text(), ANSWER_S,
                 "the node to fail to spawn the replacement")
        assert process.poll() is None, f"the node died:\n{log.read_text()[-2000:]}"
        opened = len(connections)
        for conn in connections:
            conn.close()
        connections.clear()
        wait_for(lambda: len(worker_processes({process.pid})) == 2, ANSWER_S, "the replacement worker")
        seconds = exact_map(address)
        assert process.poll() is None
        print(f"{opened} silent connections at {FD_LIMIT} descriptors: map of {MAP_ITEMS} in "
              f"{seconds:.2f} s once closed")
    finally:
        for conn in connections:
            conn.close()
        for child in [*worker_processes({process.pid}), process]:
            child.kill()
        process.wait()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_silent_connection_is_closed_after_the_handshake_interval(node):
    """A connection that never finishes its handshake holds a descriptor; the node
    closes it after HANDSHAKE_S (libzmq's default was 30 s), so a flood of them
    is bounded by its rate times that interval."""
    address, _, _ = node
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as silent:
        silent.settimeout(security.HANDSHAKE_S + 15)
        received = b""
        while chunk := silent.recv(4096):  # the node's greeting, then end of file when it hangs up
            received += chunk
    assert received[:1] == b"\xff"  # a ZMTP greeting: the node spoke, then closed the silent peer
    with fabric.connect(address) as fx:
        assert fx.submit(square, 5).result(timeout=30) == 25
