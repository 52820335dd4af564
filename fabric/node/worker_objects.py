"""A worker's side of its node's object store: Refs in a batch become values,
kept results become Refs.

::

    batch decoded ── Ref unpickled ──► resolve(ref): a value decoded lately? ─► it
                                       the node's file (memory tier, then disk)? ─► map it read-only, decode
                                       else fetch it from a holder's object socket into the memory tier
                                       (one fetch per node: a file lock), OBJECT_ADOPT to the node, then map it
    keep=True task returns ── keep(value) ─► the value's file in the memory tier, OBJECT_ADOPT (pinned
                                             for the client), a Ref naming this node

Reading the file through a read-only map makes a numpy array (any pickle-5
out-of-band buffer) a view of the node's one copy: no copy per worker, and a
task cannot change it.  The worker keeps the last few values it decoded, so a
thousand tasks reading one broadcast array decode it once per worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import mmap
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import zmq

from ..errors import FabricError, ObjectLostError, UnknownObjectError
from ..wire import blob, transfer
from ..wire.message import Message
from ..wire.object_messages import ObjectAdopt
from ..wire.ref import KEY_BYTES, Ref
from ..wire.security import ClusterKey
from .objects import file_name

log = logging.getLogger(__name__)

OBJECTS_ENV = "FABRIC_OBJECTS"  # how a worker learns its node's store: JSON [node id, endpoint, memory dir, disk dir]
MAX_VALUES = 8  # values decoded lately, kept per worker...
MAX_VALUE_BYTES = 256 << 20  # ...and their objects' bytes (an array is a view of the map; bytes are a copy)
FAILED_FOR_S = 1.0  # a failed fetch is not tried again for this long (the other calls of its batch fail at once)
FETCH_TIMEOUT_S = 5.0  # a holder silent this long is taken for dead (its node's liveness is 3 s by default)...
SILENT_FOR_S = 5.0  # ...and not asked again for this long: a reduce reading many of its objects fails at once


class LocalObjects:
    """What a worker knows of its node's store: where its files are, and how to add one."""

    def __init__(self, context: zmq.Context, node_id: bytes, endpoint: str, mem_dir: Path, disk_dir: Path,
                 tell_node: Callable[[Message], None], key: ClusterKey | None = None) -> None:
        self.context = context
        self.node_id = node_id
        self.endpoint = endpoint
        self.mem_dir, self.disk_dir = mem_dir, disk_dir
        self.tell_node = tell_node
        self.key = key
        self.client_id = b""  # whose batch runs: the owner of what it keeps
        self.values: OrderedDict[bytes, Any] = OrderedDict()
        self.value_bytes: dict[bytes, int] = {}
        self.failed: dict[bytes, tuple[float, FabricError]] = {}  # key -> (until when, why) a fetch failed
        self.silent: dict[str, float] = {}  # endpoint of a holder that did not answer -> until when it is skipped
        self.fetched_bytes = 0

    @classmethod
    def from_env(cls, text: str, context: zmq.Context, tell_node: Callable[[Message], None],
                 key: ClusterKey | None) -> LocalObjects:
        node_id, endpoint, mem_dir, disk_dir = json.loads(text)
        return cls(context, node_id.encode(), endpoint, Path(mem_dir), Path(disk_dir), tell_node, key)

    # -- reading ---------------------------------------------------------------------------

    def resolve(self, ref: Ref) -> Any:
        """The value of ``ref``; ObjectLostError / UnknownObjectError when no holder has it."""
        value = self.values.get(ref.key)
        if value is not None or ref.key in self.values:
            self.values.move_to_end(ref.key)
            return value
        value = blob.decode(self._view(ref))
        if ref.size <= MAX_VALUE_BYTES:
            self.values[ref.key] = value
            self.value_bytes[ref.key] = ref.size
            while len(self.values) > MAX_VALUES or sum(self.value_bytes.values()) > MAX_VALUE_BYTES:
                self.value_bytes.pop(self.values.popitem(last=False)[0])
        return value

    def _view(self, ref: Ref) -> memoryview:
        view = self._map_local(ref.key)
        if view is None:
            failed = self.failed.get(ref.key)
            if failed is not None and time.monotonic() < failed[0]:
                raise failed[1]  # the calls of one batch do not wait for the same dead holder one by one
            try:
                with self._fetch_lock(ref.key):
                    view = self._map_local(ref.key) or self._fetch(ref)
            except (ObjectLostError, UnknownObjectError) as exc:
                now = time.monotonic()
                self.failed = {k: v for k, v in self.failed.items() if v[0] > now}
                self.failed[ref.key] = (now + FAILED_FOR_S, exc)
                raise
        return view

    def _map_local(self, key: bytes) -> memoryview | None:
        for directory in (self.mem_dir, self.disk_dir):
            try:
                with open(directory / file_name(key), "rb") as file:
                    return memoryview(mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ))
            except (FileNotFoundError, ValueError):  # absent, or spilled between the two looks
                continue
        return None

    @contextlib.contextmanager
    def _fetch_lock(self, key: bytes) -> Iterator[None]:
        """One worker of the node fetches an object; the others wait and then map its file."""
        path = self.mem_dir / f".lock-{file_name(key)}"
        with open(path, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                path.unlink(missing_ok=True)
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _fetch(self, ref: Ref) -> memoryview:
        """Copy the object from a holder into this node's memory tier."""
        silent: list[str] = []
        missing: list[str] = []
        now = time.monotonic()
        for node_id, endpoint in ref.holders:
            if node_id == self.node_id:
                missing.append(endpoint)  # its node dropped it (it is not in the store)
                continue
            if self.silent.get(endpoint, 0.0) > now:
                silent.append(endpoint)
                continue
            try:
                with transfer.ObjectLink(self.context, endpoint, self.key, FETCH_TIMEOUT_S) as link:
                    return self._fetch_from(link, ref)
            except ObjectLostError:
                silent.append(endpoint)
            except UnknownObjectError:
                missing.append(endpoint)
                continue
            except (FabricError, zmq.ZMQError, OSError) as exc:
                log.warning("worker: fetching %s from %s failed: %s", ref.key.hex(), endpoint, exc)
                silent.append(endpoint)
            self.silent = {e: until for e, until in self.silent.items() if until > now}
            self.silent[endpoint] = time.monotonic() + SILENT_FOR_S
        what = f"object {ref.name or ref.key.hex()} ({ref.size:,} bytes)"
        if silent:
            raise ObjectLostError(f"{what} is lost: no node holding it answers ({', '.join(silent)})")
        raise UnknownObjectError(f"{what} is not held by any node it names ({', '.join(missing) or 'none'})")

    def _fetch_from(self, link: transfer.ObjectLink, ref: Ref) -> memoryview:
        partial = self.mem_dir / f".fetch-{file_name(ref.key)}-{os.getpid()}"
        with open(partial, "w+b") as file:
            maps: list[mmap.mmap] = []

            def allocate(total: int) -> memoryview:
                file.truncate(total)
                maps.append(mmap.mmap(file.fileno(), total) if total else mmap.mmap(-1, 1))
                return memoryview(maps[0])[:total]

            try:
                transfer.fetch(link, ref.key, allocate, ref.size)
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
            for mapped in maps:
                mapped.flush()
        os.replace(partial, self.mem_dir / file_name(ref.key))
        self.fetched_bytes += ref.size
        view = self._map_local(ref.key)  # mapped before the node may drop the copy (an unpinned one, over its bound)
        self.tell_node(ObjectAdopt(ref.owner, ref.key, False))
        if view is None:
            raise ObjectLostError(f"object {ref.key.hex()} vanished from this node's store as soon as it arrived")
        return view

    # -- writing ---------------------------------------------------------------------------

    def keep(self, value: Any) -> Ref:
        """Store a task's result on this node, owned by the client whose batch runs."""
        parts = blob.encode(value)
        key = os.urandom(KEY_BYTES)
        partial = self.mem_dir / f".keep-{file_name(key)}"
        with open(partial, "wb") as file:
            for part in parts:
                file.write(part)
        os.replace(partial, self.mem_dir / file_name(key))
        self.tell_node(ObjectAdopt(self.client_id, key, True))
        return Ref(key, blob.size(parts), ((self.node_id, self.endpoint),), self.client_id)


local: LocalObjects | None = None  # this worker process's, once its node told it where the store is


def resolve(ref: Ref) -> Any:
    if local is None:
        raise UnknownObjectError(f"{ref!r} reached a worker whose node has no object store")
    return local.resolve(ref)


def keep(value: Any) -> Ref:
    if local is None:
        raise UnknownObjectError("keep=True on a worker whose node has no object store")
    return local.keep(value)
