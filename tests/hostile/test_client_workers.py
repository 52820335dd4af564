"""Hostile and broken workers against a real client and a real embedded node:
raw DEALERs that speak the protocol but lie, swallow batches or answer late."""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

import pytest
import zmq
from helpers import square, wait_for

import fabric
from fabric.client.sockets import HEADER_SLACK_BYTES, READY_MAX_BYTES
from fabric.wire import codec
from fabric.wire.protocol import Ready, ResultBatch, TaskBatch, from_frames, recv_frames, to_frames


class FakeWorker:
    """A worker that is no node's: a ventilator and a sink DEALER under one identity."""

    def __init__(self, context: zmq.Context, fx: fabric.Fabric, credits: int, identity: bytes = b"w-fake") -> None:
        self.vent = context.socket(zmq.DEALER)
        self.sink = context.socket(zmq.DEALER)
        for sock in (self.vent, self.sink):
            sock.setsockopt(zmq.IDENTITY, identity)
            sock.setsockopt(zmq.LINGER, 0)
        self.vent.connect(fx._io.vent_endpoint)
        self.sink.connect(fx._io.sink_endpoint)
        self.vent.send_multipart(to_frames(Ready(credits, fx.nodes()[0].node_id)))

    def take(self, timeout_s: float = 10.0) -> TaskBatch:
        """The next batch sent to this worker."""
        if not self.vent.poll(int(timeout_s * 1000)):
            raise AssertionError(f"no batch reached the fake worker within {timeout_s} s")
        batch = from_frames(recv_frames(self.vent)[0:])
        assert isinstance(batch, TaskBatch)
        return batch

    def answer(self, batch_id: int, results: object) -> None:
        self.sink.send_multipart(to_frames(ResultBatch(batch_id, codec.PICKLE, [], 0.0, codec.pickle_frames(results))))

    def close(self) -> None:
        self.vent.close()
        self.sink.close()


def test_a_command_that_raises_costs_only_itself(fresh_fx):
    fresh_fx._io.post(lambda: 1 / 0)
    wait_for(lambda: fresh_fx._io.handler_errors.get("a command") == 1, 10, "the failing command to be counted")
    assert fresh_fx.submit(square, 7).result(timeout=30) == 49
    assert list(fresh_fx.map(square, range(100))) == [x * x for x in range(100)]


@pytest.mark.parametrize("lie", [[], 5, [1, 2]], ids=["no results", "not a list", "too many"])
def test_a_lying_worker_fails_its_calls_not_the_client(make_fabric, zmq_context, lie):
    fx = make_fabric(workers=1)
    fake = FakeWorker(zmq_context, fx, credits=8)  # more free credits than the real worker: chosen first
    wait_for(lambda: fx.workers() == 2, 10, "the fake worker to be attached")
    future = fx.submit(square, 3)
    fake.answer(fake.take().batch_id, lie)
    with pytest.raises(fabric.FabricError, match="a worker answered 1 tasks with"):
        future.result(timeout=30)
    fake.close()
    assert fx.submit(square, 4).result(timeout=30) == 16
    assert not fx._io.handler_errors


def test_the_client_raises_its_open_file_limit(make_fabric):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
    try:
        make_fabric(workers=1)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == (hard if hard != resource.RLIM_INFINITY else 1 << 20)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_data_plane_routers_cap_what_a_peer_may_send(make_fabric):
    fx = make_fabric(workers=1, max_message_bytes=1 << 20)
    assert fx._io.vent.getsockopt(zmq.MAXMSGSIZE) == READY_MAX_BYTES
    assert fx._io.sink.getsockopt(zmq.MAXMSGSIZE) == (1 << 20) + HEADER_SLACK_BYTES


def sleep_and_count(seconds: float, runs: str) -> int:
    """Sleep, after noting this run in the file ``runs``; return the worker's pid."""
    with open(runs, "a") as out:
        out.write(f"{os.getpid()}\n")
    time.sleep(seconds)  # this sleep is the task's own work (a long task)
    return os.getpid()


LIVENESS = {"heartbeat_interval_s": 0.2, "liveness_s": 1.0}


def test_batches_swallowed_by_a_silent_worker_are_taken_back(make_fabric, zmq_context):
    """A worker that is no node's takes two batches and never answers: the map
    finishes after about liveness_s, every result exactly once, and the worker's
    late answers are dropped as duplicates."""
    fx = make_fabric(workers=2, **LIVENESS)
    fake = FakeWorker(zmq_context, fx, credits=8)  # more free credits than a real worker: chosen first
    wait_for(lambda: fx.workers() == 3, 10, "the fake worker to be attached")
    results = fx.map(square, range(2000), chunksize=50, timeout=60)
    swallowed = [fake.take(), fake.take()]
    wait_for(lambda: fx.workers() == 2, 20, "the silent worker to be dropped")
    for batch in swallowed:
        fake.answer(batch.batch_id, ["late"] * batch.n_items)
    assert list(results) == [x * x for x in range(2000)]
    wait_for(lambda: fx.statistics().duplicates == 2, 10, "the late answers to be dropped")
    fake.close()


def test_a_long_task_of_a_listed_worker_is_not_taken_back(make_fabric, tmp_path):
    fx = make_fabric(workers=2, **LIVENESS)
    runs = tmp_path / "runs"
    future = fx.submit(sleep_and_count, 3 * LIVENESS["liveness_s"], str(runs))
    pid = future.result(timeout=30)
    assert Path(runs).read_text().split() == [str(pid)], "the long task ran more than once"
    assert fx.workers() == 2


def test_workers_beyond_the_clients_cap_are_refused_and_counted(make_fabric, zmq_context):
    """Each attached worker costs the client two descriptors: past the cap its
    open-file limit sets (lowered here), a READY is refused and counted."""
    fx = make_fabric(workers=1)
    wait_for(lambda: fx._io.ventilator.workers == 1, 10, "the real worker to attach")
    fx._io.ventilator.max_workers = 1
    fakes = [FakeWorker(zmq_context, fx, credits=8, identity=f"w-fake{i}".encode()) for i in range(3)]
    wait_for(lambda: fx.statistics().refused_workers == 3, 10, "the three fake workers to be refused")
    assert fx._io.ventilator.workers == 1
    assert list(fx.map(square, range(200))) == [x * x for x in range(200)]
    for fake in fakes:
        fake.close()
