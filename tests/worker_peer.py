"""A real worker process with the test playing its node and its client: the
node's control ROUTER and the client's ventilator and sink ROUTERs, on ipc
(used by tests/integration/test_worker_link.py and tests/hostile/test_node_worker.py)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import zmq
from helpers import square

from fabric.client.shipping import FunctionCache
from fabric.wire import codec
from fabric.wire.message import Message
from fabric.wire.protocol import Attach, Mode, Ready, ResultBatch, Shutdown, TaskBatch, WorkerUp, from_frames, to_frames

REPLY_TIMEOUT_S = 10.0
CLIENT = b"c-test"
NODE = b"n-test"


class Peer:
    """The node's control ROUTER and the client's ventilator and sink ROUTERs, on ipc."""

    def __init__(self, context: zmq.Context, directory: str) -> None:
        self.endpoints = {name: f"ipc://{directory}/{name}" for name in ("control", "ventilator", "sink")}
        self.sockets = {}
        for name, endpoint in self.endpoints.items():
            sock = context.socket(zmq.ROUTER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # as the client's ROUTERs: a new link takes the identity over
            sock.bind(endpoint)
            self.sockets[name] = sock

    def receive(self, name: str) -> tuple[bytes, Message]:
        sock = self.sockets[name]
        assert sock.poll(REPLY_TIMEOUT_S * 1000), f"nothing arrived on the {name} socket"
        sender, *frames = sock.recv_multipart()
        return sender, from_frames(frames)

    def send(self, name: str, to: bytes, frames: list) -> None:
        self.sockets[name].send_multipart([to, *frames])

    def attach(self, worker_id: bytes) -> None:
        attach = Attach(CLIENT, self.endpoints["ventilator"], self.endpoints["sink"], 2, NODE, 1 << 30)
        self.send("control", worker_id, to_frames(attach))
        sender, ready = self.receive("ventilator")
        assert sender == worker_id and isinstance(ready, Ready)

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()


@pytest.fixture
def peer(zmq_context, tmp_path) -> Iterator[Peer]:
    made = Peer(zmq_context, str(tmp_path))
    yield made
    made.close()


@contextlib.contextmanager
def running_worker(peer: Peer, *args: str) -> Iterator[tuple[bytes, subprocess.Popen[bytes]]]:
    """A worker process (``args`` after its parent pid) up and attached to the test's client; its id and process."""
    env = {k: v for k, v in os.environ.items() if k != "FABRIC_KEY_FILE"}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    cmd = [sys.executable, "-m", "fabric.node.worker", peer.endpoints["control"], "w-test", str(os.getpid()), *args]
    process = subprocess.Popen(cmd, env=env)
    try:
        worker_id, up = peer.receive("control")
        assert isinstance(up, WorkerUp) and up.pid == process.pid
        peer.attach(worker_id)
        yield worker_id, process
        peer.send("control", worker_id, to_frames(Shutdown()))
        process.wait(REPLY_TIMEOUT_S)
    finally:
        process.kill()
        process.wait()


@pytest.fixture
def worker(peer, no_leaked_processes) -> Iterator[bytes]:
    """A worker process up and attached to the test's client; its id."""
    with running_worker(peer) as (worker_id, _):
        yield worker_id


def square_batch(batch_id: int, items: list[int], with_fn: bool) -> list:
    digest, fn_payload = FunctionCache().get(square)
    codec_id, payload = codec.PayloadEncoder().encode(items)
    header = TaskBatch(batch_id, digest, Mode.MAP, codec_id, [len(payload)], with_fn, len(items), False)
    return to_frames(header) + ([fn_payload] if with_fn else []) + list(payload)


def result_of(peer: Peer, worker_id: bytes, batch_id: int) -> list[int]:
    sender, result = peer.receive("sink")
    assert sender == worker_id and isinstance(result, ResultBatch) and result.batch_id == batch_id
    assert result.errors == []
    return codec.decode(result.codec, result.payload)
