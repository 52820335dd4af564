"""Worker process: runs task batches for the clients its node attached it to.

One single-threaded process per core, spawned and watched by a node::

    node ROUTER  <-- control DEALER --  worker  (WORKER_UP; ATTACH / DETACH / SHUTDOWN)
    client ventilator ROUTER <-- DEALER --  (READY credits; TASK_BATCH in)
    client sink ROUTER       <-- DEALER --  (BATCH_STARTED when asked; BATCH_OUTPUT when its tasks printed;
                                             RESULT_BATCH out, one per batch)

Each READY credit lets the client's ventilator send one batch; every result
returns the credit implicitly, so the worker holds at most ``credits`` batches
(one running, the rest prefetched in its socket queue).  The function arrives
once per worker link (cloudpickle) and is looked up by digest afterwards; a
batch whose function this link never received (the worker re-attached since
it was shipped) is answered with FUNCTION_MISSING, and the client resends it
with the function.  The items of a batch run in a C-level loop
(``list.extend(map(fn, items))``); an exception only breaks out to record it
and the loop resumes at the next item.  What the tasks print goes back to
clients that forward output (:mod:`fabric.node.output`); the worker's own
descriptors are its node's log file.

A control message that does not parse or whose handling raises is counted (the
first of each kind logged) and the worker carries on: an ATTACH whose sockets
cannot be made or connected closes what it made and leaves the other clients'
links as they were, and an ATTACH beyond the node's ``max_clients`` is refused,
so no number of clients can take a worker past libzmq's 1,023 sockets.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import zmq

from ..calls import context, guard, registry, setup
from ..errors import FabricError, ProtocolError, SerializationError
from ..wire import codec, ref, security
from ..wire.message import Message
from ..wire.protocol import (
    MAX_CLIENTS_CAP,
    Attach,
    BatchOutput,
    BatchRunning,
    BatchStarted,
    Detach,
    FunctionMissing,
    Mode,
    Ready,
    ResultBatch,
    Shutdown,
    TaskBatch,
    WorkerReport,
    WorkerUp,
    from_frames,
    recv_frames,
    send_frames,
    to_frames,
)
from ..wire.security import ClusterKey
from . import processes, worker_objects
from .output import OutputCapture

log = logging.getLogger(__name__)

BATCH_ERROR = -1  # error index meaning "every item of the batch"
REPORT_INTERVAL_S = 0.25  # counters go to the node at most this often
HINTED_RESULTS = 64  # batches of at most this many results are sized before they are encoded
NODE_NAME_ENV = "FABRIC_NODE_NAME"  # what the node tells each worker it spawns: current_worker()'s fields
WORKER_INDEX_ENV = "FABRIC_WORKER_INDEX"
TASK_MODULES_ENV = "FABRIC_TASK_MODULES"  # comma-separated task modules to import (@fabric.task)


@dataclass
class ClientLink:
    """The worker's two sockets towards one client, and that client's functions."""

    ventilator: zmq.Socket
    sink: zmq.Socket
    max_message_bytes: int
    forward_output: bool = True
    functions: dict[bytes, Callable[..., Any]] = field(default_factory=dict)
    encoders: dict[bytes, codec.PayloadEncoder] = field(default_factory=dict)

    def close(self) -> None:
        self.ventilator.close(linger=0)
        self.sink.close(linger=500)


class LinkState(Protocol):
    """What running a batch needs of a client link: the functions received on
    it, an encoder per function and the size cap, not its sockets (so tests run
    batches without any)."""

    functions: dict[bytes, Callable[..., Any]]
    encoders: dict[bytes, codec.PayloadEncoder]
    max_message_bytes: int


def apply(
    fn: Callable[..., Any], mode: int, items: list[Any], results: list[Any] | None = None,
) -> tuple[list[Any], list[codec.ErrorRecord]]:
    """Run ``fn`` over ``items`` into ``results``; an item that raises gets None and an error record."""
    results = [] if results is None else results
    errors: list[codec.ErrorRecord] = []
    calls = map(fn, items) if mode == Mode.MAP else itertools.starmap(fn, items)
    while True:
        try:
            results.extend(calls)
            return results, errors
        except BaseException as exc:  # noqa: BLE001 - a task's SystemExit is its own outcome
            errors.append(codec.error_record(len(results), exc))
            results.append(None)


def _calls(fn: Callable[..., Any], batch: TaskBatch, frames: list[Any]) -> list[tuple[Any, ...]]:
    """One (fn, args, kwargs) per CALL item; an item that cannot be decoded (or
    whose Ref is lost) becomes a call that raises that error, so it fails alone."""
    calls: list[tuple[Any, ...]] = []
    start = 0
    with ref.resolving(worker_objects.resolve):
        for count in batch.item_frames:
            try:
                args, kwargs = codec.decode(batch.codec, frames[start : start + count])
                calls.append((fn, args, kwargs))
            except FabricError as exc:
                calls.append((_reraise, (exc,), {}))
            start += count
        if ref.saw_failed_argument():  # a future argument failed: its calls raise its error, unrun
            calls = [_unless_failed(call) for call in calls]
    return calls


def _unless_failed(call: tuple[Any, ...]) -> tuple[Any, ...]:
    _, args, kwargs = call
    failure = ref.first_failure(args) or ref.first_failure(tuple(kwargs.values()))
    return call if failure is None else (_reraise, (failure,), {})


class _FailedArguments:
    """``fn`` for a batch holding failed future arguments: an item holding one
    raises that future's exception instead of running."""

    def __init__(self, fn: Callable[..., Any], star: bool) -> None:
        self.fn, self.star = fn, star

    def __call__(self, *args: Any) -> Any:
        failure = ref.first_failure(args[0] if self.star else args)
        if failure is not None:
            raise failure
        return self.fn(*args)


def _invoke(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return fn(*args, **kwargs)


def _reraise(exc: BaseException) -> None:
    raise exc


def run_batch(link: LinkState, batch: TaskBatch, capture: OutputCapture | None = None) -> ResultBatch:
    """Decode, run and encode one batch, what its tasks print going to ``capture``
    if given (unpickling the function may print too); nothing here raises."""
    started = time.perf_counter()
    frames = list(batch.payload)
    results: list[Any] = []
    if capture is not None:
        capture.begin(results)
    try:
        fn = _function(link, batch, frames)
    except Exception as exc:
        return _batch_failed(batch, exc, started)
    if batch.mode == Mode.CALL:
        results, errors = apply(_invoke, Mode.STARMAP, _calls(fn, batch, frames), results)
    else:
        try:
            with ref.resolving(worker_objects.resolve):
                items = codec.decode(batch.codec, frames)
        except FabricError as exc:
            return _batch_failed(batch, exc, started)
        if ref.saw_failed_argument():  # a future argument failed: its items raise its error, unrun
            fn = _FailedArguments(fn, batch.mode == Mode.STARMAP)
        if batch.mode == Mode.FOLD:  # one call over the whole batch, one result
            results, errors = apply(fn, Mode.MAP, [items], results)
        else:
            results, errors = apply(fn, batch.mode, items, results)
    encoder = link.encoders.setdefault(batch.digest, codec.PayloadEncoder())
    result_codec, payload = _encode_results(encoder, results, errors, link.max_message_bytes)
    return ResultBatch(batch.batch_id, result_codec, errors, time.perf_counter() - started, payload)


def _function(link: LinkState, batch: TaskBatch, frames: list[Any]) -> Callable[..., Any]:
    if batch.has_fn:
        link.functions[batch.digest] = setup.with_setup_globals(codec.loads_function(frames.pop(0)))
    return link.functions[batch.digest]


def _batch_failed(batch: TaskBatch, exc: BaseException, started: float) -> ResultBatch:
    errors = [codec.error_record(BATCH_ERROR, exc)]
    return ResultBatch(batch.batch_id, codec.PICKLE, errors, time.perf_counter() - started, codec.pickle_frames(None))


def _encode_results(
    encoder: codec.PayloadEncoder, results: list[Any], errors: list[codec.ErrorRecord], max_bytes: int
) -> tuple[int, list[Any]]:
    """Encode the result list; results that cannot be serialized, or that
    would take the batch over ``max_bytes``, become errors.  Buffers (bytes,
    arrays) are measured without pickling them: a 1 GiB result over the limit
    is refused at once, where pickling it twice took ~20 s."""
    few = len(results) <= HINTED_RESULTS  # looking at each result costs the hot path only for short batches
    if not few or sum(map(_size_hint, results)) <= max_bytes:
        try:
            encoded = encoder.encode(results)
            if codec.frames_size(encoded[1]) <= max_bytes:
                return encoded
        except SerializationError:
            pass
    sizes = {}
    for index, value in enumerate(results):
        try:
            sizes[index] = _size_hint(value) or codec.frames_size(codec.pickle_frames(value))
        except SerializationError as exc:
            _fail_result(results, errors, index, SerializationError(f"result of task {index}: {exc}"))
    total = sum(sizes.values())
    for index in sorted(sizes, key=sizes.__getitem__, reverse=True):
        if total <= max_bytes:
            break
        total -= sizes[index]
        message = f"result of task {index} is {sizes[index]:,} bytes; with the rest of its batch that is over "
        message += f"max_message_bytes={max_bytes:,} (raise it with connect(max_message_bytes=...) or in cluster.toml)"
        _fail_result(results, errors, index, SerializationError(message))
    return encoder.encode(results)


def _size_hint(value: Any) -> int:
    """The bytes of a buffer result (bytes, bytearray, a numpy array or memoryview:
    what pickling it costs, give or take a header), 0 for anything else."""
    kind = type(value)
    if kind is bytes or kind is bytearray:
        return len(value)
    if kind is memoryview or (kind.__name__ == "ndarray" and kind.__module__ == "numpy"):
        return int(value.nbytes)
    return 0


def _fail_result(results: list[Any], errors: list[codec.ErrorRecord], index: int, exc: BaseException) -> None:
    errors.append(codec.error_record(index, exc))
    results[index] = None


class Worker:
    """The worker's run loop: owns the control socket and one link per client."""

    def __init__(self, node_endpoint: str, worker_id: bytes, parent_pid: int, key: ClusterKey | None = None,
                 max_clients: int = MAX_CLIENTS_CAP, tasks: dict[bytes, Callable[..., Any]] | None = None) -> None:
        self.worker_id = worker_id
        self.tasks = tasks or {}  # the node's tasks by the digest a client calls them with
        self.parent_pid = parent_pid
        self.key = key
        self.max_clients = max_clients
        self.faults = processes.Faults(f"worker {worker_id.decode()}", log)
        self.output = OutputCapture()
        self.output.install()
        self.context = zmq.Context()
        self.control = self._socket(zmq.DEALER)
        self.control.connect(node_endpoint)
        self.links: dict[bytes, ClientLink] = {}
        self.poller = zmq.Poller()
        self.poller.register(self.control, zmq.POLLIN)
        self.parent_fd = processes.pidfd(parent_pid)
        if self.parent_fd is not None:
            self.poller.register(self.parent_fd, zmq.POLLIN)
        objects_env = os.environ.get(worker_objects.OBJECTS_ENV)
        if objects_env:
            worker_objects.local = worker_objects.LocalObjects.from_env(objects_env, self.context, self._tell_node, key)
        self.running = True
        self.done = 0
        self.failed = 0
        self.busy_s = 0.0
        self.reported_at = time.monotonic()
        self.reported_busy_s = 0.0
        self.report_due = False

    def _socket(self, kind: int) -> zmq.Socket:
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.IDENTITY, self.worker_id)
        sock.setsockopt(zmq.LINGER, 0)
        security.join(sock, self.key)
        return sock

    def run(self) -> None:
        self.control.send_multipart(to_frames(WorkerUp(self.worker_id, os.getpid())))
        try:
            while self.running:
                events = dict(self.poller.poll(int(REPORT_INTERVAL_S * 1000) if self.report_due else 1000))
                if not events and not self._parent_alive():
                    break
                self._report()
                if self.parent_fd is not None and self.parent_fd in events:
                    break
                if self.control in events:
                    self._on_control()
                for client_id, link in list(self.links.items()):
                    if link.ventilator in events and client_id in self.links:
                        self._on_batch(client_id, link)
        finally:
            self.close()

    def _tell_node(self, msg: Message) -> None:
        self.control.send_multipart(to_frames(msg))

    def _parent_alive(self) -> bool:
        return os.getppid() == self.parent_pid

    def _on_control(self) -> None:
        while True:
            try:
                frames = self.control.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                msg = from_frames(frames)
            except ProtocolError as exc:
                self.faults.record("dropped a malformed control message", exc)
                continue
            if isinstance(msg, Shutdown):
                self.running = False
                return
            try:
                if isinstance(msg, Attach):
                    self._attach(msg)
                elif isinstance(msg, Detach):
                    self._detach(msg.client_id)
            except Exception as exc:  # one client's bad link must not cost the others theirs
                self.faults.record(f"handling {type(msg).__name__} failed", exc, exc)

    def _attach(self, msg: Attach) -> None:
        """Open a link to the client's ventilator and sink; if a socket cannot be
        made or connected, close those made and raise."""
        if msg.client_id in self.links:  # re-attached after the client lost sight of us: start afresh
            self._detach(msg.client_id)
        elif len(self.links) >= self.max_clients:
            self.faults.record("ATTACH beyond max_clients refused",
                               f"{len(self.links)} clients attached, max_clients = {self.max_clients}")
            return
        made: list[zmq.Socket] = []
        try:
            for endpoint in (msg.ventilator, msg.sink):
                made.append(self._socket(zmq.DEALER))
                made[-1].connect(endpoint)
        except zmq.ZMQError:
            for sock in made:
                sock.close(linger=0)
            raise
        ventilator, sink = made
        link = ClientLink(ventilator, sink, msg.max_message_bytes, msg.forward_output, dict(self.tasks))
        link.sink.setsockopt(zmq.LINGER, 500)
        link.ventilator.send_multipart(to_frames(Ready(msg.credits, msg.node_id)))
        self.poller.register(link.ventilator, zmq.POLLIN)
        self.links[msg.client_id] = link

    def _detach(self, client_id: bytes) -> None:
        link = self.links.pop(client_id, None)
        if link is not None:
            self.poller.unregister(link.ventilator)
            link.close()

    def _on_batch(self, client_id: bytes, link: ClientLink) -> None:
        try:
            frames = recv_frames(link.ventilator)
        except zmq.Again:
            return
        try:
            batch = from_frames(frames)
        except ProtocolError as exc:
            log.warning("worker %s: dropped malformed batch: %s", self.worker_id.decode(), exc)
            return
        if not isinstance(batch, TaskBatch):
            log.warning("worker %s: unexpected %s on the task socket", self.worker_id.decode(), type(batch).__name__)
            return
        if not batch.has_fn and batch.digest not in link.functions:
            link.sink.send_multipart(to_frames(FunctionMissing(batch.batch_id)))
            return
        if batch.ack:  # a long or unmeasured batch: the client knows it runs, however long, while our node says so
            send_frames(link.sink, to_frames(BatchStarted(batch.batch_id)))
            self.control.send_multipart(to_frames(BatchRunning(client_id, batch.batch_id)))
        if worker_objects.local is not None:
            worker_objects.local.client_id = client_id
        capture = self.output if link.forward_output else None
        try:
            result = run_batch(link, batch, capture)
        finally:
            records = self.output.end() if capture is not None else None
        if records:  # on the same socket, so it arrives just before the result
            send_frames(link.sink, to_frames(BatchOutput(batch.batch_id, records)))
        send_frames(link.sink, to_frames(result), copy=False)
        if batch.ack:  # the node stops vouching for it: a result lost on the way is then taken back
            self.control.send_multipart(to_frames(BatchRunning(b"", 0)))
        self._count(batch, result)
        if guard.recycle_requested():  # a task was interrupted: leave no trace of it
            self.running = False

    def _count(self, batch: TaskBatch, result: ResultBatch) -> None:
        n_items = batch.n_items
        failed = n_items if any(e[0] == BATCH_ERROR for e in result.errors) else len(result.errors)
        self.done += n_items - failed
        self.failed += failed
        self.busy_s += result.elapsed_s
        self.report_due = True

    def _report(self) -> None:
        now = time.monotonic()
        if self.report_due and now - self.reported_at >= REPORT_INTERVAL_S:
            busy = (self.busy_s - self.reported_busy_s) / (now - self.reported_at) > 0.5
            self.control.send_multipart(to_frames(WorkerReport(self.done, self.failed, self.busy_s, busy)))
            self.reported_at, self.reported_busy_s = now, self.busy_s
            self.report_due = False

    def close(self) -> None:
        for client_id in list(self.links):
            self._detach(client_id)
        self.control.close(linger=0)
        if self.parent_fd is not None:
            os.close(self.parent_fd)
        self.context.term()


def main(argv: list[str] | None = None) -> None:
    """Entry point of a worker process: ``python -m fabric.node.worker ENDPOINT ID PARENT_PID [MAX_CLIENTS]``."""
    node_endpoint, worker_id, parent_pid, *rest = argv if argv is not None else sys.argv[1:5]
    max_clients = int(rest[0]) if rest else MAX_CLIENTS_CAP
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ctrl-C belongs to the client
    processes.configure_logging()
    processes.raise_fd_limit()
    key = ClusterKey.find(None)
    context.enter_worker(context.WorkerInfo(os.environ.get(NODE_NAME_ENV, ""),
                                            int(os.environ.get(WORKER_INDEX_ENV, "0")), os.getpid(), worker_id))
    Worker(node_endpoint, worker_id.encode(), int(parent_pid), key, max_clients, _tasks()).run()


def _tasks() -> dict[bytes, Callable[..., Any]]:
    """The node's task modules, imported here; one that fails is logged and offers nothing."""
    modules = [m for m in os.environ.get(TASK_MODULES_ENV, "").split(",") if m]
    try:
        return registry.load(modules).registry()
    except Exception:
        log.exception("worker: the task modules %s failed to import; this worker runs no task by name", modules)
        return {}


if __name__ == "__main__":
    main()
