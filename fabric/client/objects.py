"""The client's objects: ``put``/``get``/``free``, named objects, and the table of
the Refs this client owns (Ray's ownership model: the client that made an
object knows where it is and when it may go; no central directory).

::

    caller thread: put(x) ─ blob.encode, content key ─► ring owner(s) of the key (or of the name)
                            ── OBJECT_PUT chunks over a DEALER of its own ──► node object socket
                   get(ref) ── OBJECT_GET chunks ◄── a live holder (bytes never pass the I/O thread)
    any thread:    last Ref of a key garbage-collected ─► released (a deque, no lock: it may run in
                   any thread, inside any allocation)
    I/O thread:    flush() at its ticks ─ OBJECT_FREE(keys) ─► each holder's control socket

An object put without a name is owned by this client: it lives while a Ref to
it is alive here (Refs arriving in results count too), until ``free``, or until
the client closes or its nodes forget it.  A named object is owned by the
nodes, placed like a cache entry (the ring owner of its name, and the next
node with ``replicas = 2``), and lives until ``delete``.  A kept result whose
nodes died is computed again when its ``submit`` (or the ``map`` that made it,
its item alone) is still held here.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from ..cluster.ring import CacheRing
from ..cluster.stats import NodeStats
from ..errors import FabricError, NoNodesError, ObjectLostError, UnknownObjectError
from ..wire import blob, codec, transfer
from ..wire.object_messages import ObjectFree
from ..wire.ref import Ref, current, redirect, register_table, unregister_table
from ..wire.security import ClusterKey

log = logging.getLogger(__name__)

KEPT_MARK = b"load_ref"  # in a pickled payload holding a Ref (fabric.wire.ref.load_ref rebuilds it)
UNLISTED_HOLDER_WAIT_S = 1.0  # how long get waits on a holder this client does not list as live
NODES_WAIT_POLL_S = 0.01  # how often put/get look for a node with an object store while none is known yet


def free_unread(codec_id: int, payload: Sequence[Any]) -> None:
    """A result nobody will read (a late duplicate, a map closed or interrupted before
    reading it) may hold Refs its worker kept for this client (``keep=True``, by-key
    partials): decoded, they are counted and dropped, so their nodes free them instead
    of pinning them for as long as this client lives.  Other results are not decoded."""
    if codec_id != codec.PICKLE or not payload or KEPT_MARK not in bytes(payload[0]):
        return
    try:
        codec.decode(codec_id, payload)
    except Exception as exc:  # a result nobody wants, undecodable: nothing else to do with it
        log.debug("an unread result could not be decoded to free its Refs: %s", exc)


@dataclass(frozen=True)
class ObjectInfo:
    """A named object, as ``fx.objects()`` lists it."""

    name: str
    size: int
    nodes: tuple[str, ...]  # names of the nodes holding it


class _Buffer:
    """Where a fetched object lands in the client: one allocation of its size, decoded in place."""

    data = bytearray()

    def allocate(self, total: int) -> memoryview:
        self.data = bytearray(total)
        return memoryview(self.data)


class ObjectTable:
    """The Refs this client owns: live counts per key, frees to send, and how
    to recompute kept results (their ``submit``, or their item of a ``map``)."""

    def __init__(self, client_id: bytes, send_to_node: Callable[[bytes, Any], bool]) -> None:
        self.client_id = client_id
        self.send_to_node = send_to_node
        self._lock = threading.Lock()
        self.counts: dict[bytes, int] = {}
        self.claims: dict[bytes, int] = {}  # key -> puts (or the one kept result) the nodes count for us
        self.holders: dict[bytes, tuple[bytes, ...]] = {}  # key -> node ids to free it on
        self.released: deque[tuple[bytes, int]] = deque()  # (key, generation) of each Ref collected
        self.generations: dict[bytes, int] = {}  # key -> the generation its live Refs belong to
        self._next_generation = itertools.count(1).__next__
        self.lineage: dict[bytes, Callable[[], concurrent.futures.Future]] = {}  # key -> submits its call again
        self._recomputing: dict[bytes, concurrent.futures.Future] = {}  # key -> its recomputation under way
        self.recomputed = 0  # recomputations started (fx.statistics().recomputed)
        self.unsent: list[dict[bytes, list[bytes]]] = []  # frees decided, for the I/O thread to send
        register_table(client_id, self.adopt)

    def adopt(self, ref: Ref, claimed: bool = False) -> Ref:
        """Count ``ref`` (made here, or unpickled here from a result); ``claimed``:
        a put of this client, which the nodes count as one more claim."""
        if ref.owner != self.client_id:
            return ref
        with self._lock:
            self.counts[ref.key] = self.counts.get(ref.key, 0) + 1
            if claimed or ref.key not in self.claims:  # a kept result: its worker's one claim
                self.claims[ref.key] = self.claims.get(ref.key, 0) + 1
            self.holders[ref.key] = ref.node_ids
            generation = self.generations.setdefault(ref.key, self._next_generation())
        # A Ref collected after its key was freed (fx.free, or freed and put again) counts for nothing.
        ref._release = functools.partial(self._collected, generation)
        return ref

    def _collected(self, generation: int, key: bytes) -> None:
        self.released.append((key, generation))

    def copied_to(self, node_id: bytes, refs: Sequence[Ref]) -> None:
        """A worker of ``node_id`` fetched these objects: free them there too (a copy the
        client knows to be garbage, as a shuffle's partials once merged, should not wait
        for the node's memory bound to go)."""
        with self._lock:
            for ref in refs:
                holders = self.holders.get(ref.key)
                if holders is not None and node_id and node_id not in holders:
                    self.holders[ref.key] = (*holders, node_id)

    def free(self, ref: Ref) -> None:
        """Release the object now, whatever Refs remain (``fx.free``, any thread): forgotten
        at once, so a put of equal bytes made next is counted anew and keeps its claim;
        its OBJECT_FREE goes at the next flush."""
        with self._lock:
            if self.counts.pop(ref.key, None) is not None:
                self.generations.pop(ref.key, None)
                self.unsent.append(self._forget([ref.key]))

    def lost(self, refs: list[Ref], live: Callable[[], set[bytes]]) -> list[Ref]:
        """The kept results among ``refs`` that this client can compute again and
        whose every holder is gone from the live nodes."""
        if not self.lineage or not any(ref.key in self.lineage for ref in refs):
            return []
        alive = live()
        return [ref for ref in {r.key: r for r in refs}.values()
                if ref.key in self.lineage and not alive.intersection(ref.node_ids)]

    def recompute(self, ref: Ref) -> concurrent.futures.Future:
        """Submit the call that made the kept result ``ref`` again; once done, Refs
        to it pickle as the new result's (so a dependent sent then reads that).
        Several dependents of one lost result share one recomputation."""
        with self._lock:
            running = self._recomputing.get(ref.key)
        if running is not None and not running.done():
            return running
        resubmitted = self.lineage[ref.key]()
        with self._lock:
            self._recomputing[ref.key] = resubmitted
            self.recomputed += 1

        def redirect_to(done: concurrent.futures.Future) -> None:
            if not done.cancelled() and done.exception() is None and isinstance(done.result(), Ref):
                redirect(ref.key, done.result())  # the new result's own lineage is its submit's
            with self._lock:
                self._recomputing.pop(ref.key, None)

        resubmitted.add_done_callback(redirect_to)
        return resubmitted

    def flush(self) -> None:
        """Send OBJECT_FREE for keys whose last Ref is gone, and for those freed
        (the I/O thread, at its ticks and after ``fx.free``)."""
        if not self.released and not self.unsent:
            return
        gone = []
        with self._lock:
            while self.released:
                key, generation = self.released.popleft()
                count = self.counts.get(key)
                if count is None or self.generations.get(key) != generation:
                    continue
                if count <= 1:
                    del self.counts[key], self.generations[key]
                    gone.append(key)
                else:
                    self.counts[key] = count - 1
            self.unsent.append(self._forget(gone))
            unsent, self.unsent = self.unsent, []
        for by_node in unsent:
            for node_id, node_keys in by_node.items():
                self.send_to_node(node_id, ObjectFree(self.client_id, node_keys))

    def _forget(self, keys: list[bytes]) -> dict[bytes, list[bytes]]:
        """Drop what is known of these keys (under the lock); their frees, by node: one per claim."""
        by_node: dict[bytes, list[bytes]] = {}
        for key in keys:
            self.lineage.pop(key, None)
            redirect(key, None)
            claims = [key] * self.claims.pop(key, 1)
            for node_id in self.holders.pop(key, ()):
                by_node.setdefault(node_id, []).extend(claims)
        return by_node

    def close(self) -> None:
        unregister_table(self.client_id)


class ObjectClient:
    """``put``, ``get``, named objects, from the caller's thread."""

    def __init__(self, context: zmq.Context, table: ObjectTable, nodes: Callable[[], Iterable[NodeStats]],
                 post: Callable[[Callable[[], None]], bool], replicas: int, key: ClusterKey | None,
                 wait_s: float) -> None:
        self.context = context
        self.table = table
        self.nodes = nodes
        self.post = post
        self.replicas = replicas
        self.key = key
        self.wait_s = wait_s
        self._ring = CacheRing(replicas)

    # -- put -------------------------------------------------------------------------------

    def put(self, obj: Any, name: str = "") -> Ref:
        parts = blob.encode(obj)
        key = blob.content_key(parts)
        owner = b"" if name else self.table.client_id
        holders = []
        failure: BaseException | None = None
        for node in self._placed(hashlib.sha256(name.encode()).digest()[:16] if name else key):
            try:
                with transfer.ObjectLink(self.context, node.objects, self.key) as link:
                    transfer.put(link, key, parts, owner, name)
            except (FabricError, zmq.ZMQError) as exc:  # a replica that failed: the others may hold it
                failure = exc
                continue
            holders.append((node.node_id, node.objects))
        if not holders:
            raise failure or NoNodesError("no node took the object")
        return self.table.adopt(Ref(key, blob.size(parts), tuple(holders), owner, name), claimed=True)

    def _placed(self, ring_key: bytes) -> list[NodeStats]:
        """The ring owner of ``ring_key`` and its replica, among live nodes with an object store."""
        nodes = self._live()
        self._ring.update(nodes)
        by_id = {n.node_id: n for n in nodes}
        chosen = [by_id[i] for i in self._ring.owners(ring_key) if i in by_id]
        return chosen or nodes[: self.replicas]

    def _live(self) -> list[NodeStats]:
        """Live nodes with an object store, waiting a little for the first heartbeats."""
        deadline = time.monotonic() + self.wait_s
        while True:
            nodes = [n for n in list(self.nodes()) if n.objects]
            if nodes or time.monotonic() >= deadline:
                break
            time.sleep(NODES_WAIT_POLL_S)
        if not nodes:
            raise NoNodesError(f"no node with an object store answered within {self.wait_s:g} s")
        return nodes

    # -- get -------------------------------------------------------------------------------

    def get(self, ref: Ref, timeout: float | None = None) -> Any:
        """The value of ``ref``, fetched from a live holder; a lost kept result is computed again."""
        ref = current(ref)
        try:
            return self._fetch(ref, timeout)
        except ObjectLostError:
            if ref.key not in self.table.lineage:
                raise
            return self._fetch(self.table.recompute(ref).result(timeout), timeout)

    def _fetch(self, ref: Ref, timeout: float | None) -> Any:
        live = {n.node_id for n in self._live()}
        timeout_s = transfer.TIMEOUT_S if timeout is None else max(0.001, timeout)
        missing = []
        # Live holders first; one this client thinks dead is still asked, briefly: a node whose
        # loop stalled (a loaded machine) may be declared dead for a moment while it holds the object.
        for node_id, endpoint in sorted(ref.holders, key=lambda holder: holder[0] not in live):
            wait_s = timeout_s if node_id in live else min(timeout_s, UNLISTED_HOLDER_WAIT_S)
            buffer = _Buffer()
            try:
                with transfer.ObjectLink(self.context, endpoint, self.key, wait_s) as link:
                    transfer.fetch(link, ref.key, buffer.allocate, ref.size)
            except UnknownObjectError:
                missing.append(endpoint)
                continue
            except ObjectLostError:
                continue
            return blob.decode(memoryview(buffer.data))
        what = f"object {ref.name or ref.key.hex()} ({ref.size:,} bytes)"
        if missing and ref.owner != self.table.client_id:
            raise UnknownObjectError(f"{what}: no node it names holds it (a Ref of another cluster, a forged or "
                                     f"freed one?): {', '.join(missing)}")
        raise ObjectLostError(f"{what} is lost: every node that held it died or dropped it")

    # -- named objects ---------------------------------------------------------------------

    def ref(self, name: str) -> Ref:
        """A Ref to the object named ``name``: asked of its ring owners, then of every node."""
        nodes = self._live()
        ring_key = hashlib.sha256(name.encode()).digest()[:16]
        owners = self._placed(ring_key)
        holders = []
        found: tuple[bytes, int] | None = None
        for node in [*owners, *(n for n in nodes if n not in owners)]:
            try:
                with transfer.ObjectLink(self.context, node.objects, self.key) as link:
                    found = transfer.lookup(link, b"", name)
            except (UnknownObjectError, ObjectLostError):
                continue
            holders.append((node.node_id, node.objects))
        if found is None:
            raise UnknownObjectError(f"no object named {name!r} on the cluster")
        return Ref(found[0], found[1], tuple(holders), b"", name)

    def objects(self) -> list[ObjectInfo]:
        return self._merged(self._each_node(""))

    def delete(self, name: str) -> bool:
        return bool(self._merged(self._each_node(name)))

    def _each_node(self, delete: str) -> list[tuple[NodeStats, list[list[Any]]]]:
        out = []
        for node in self._live():
            try:
                with transfer.ObjectLink(self.context, node.objects, self.key) as link:
                    out.append((node, transfer.listing(link, delete)))
            except ObjectLostError:
                continue
        return out

    @staticmethod
    def _merged(listings: Sequence[tuple[NodeStats, list[list[Any]]]]) -> list[ObjectInfo]:
        by_name: dict[str, tuple[int, list[str]]] = {}
        for node, entries in listings:
            for name, _key, size in entries:
                by_name.setdefault(name, (size, []))[1].append(node.name)
        return [ObjectInfo(name, size, tuple(nodes)) for name, (size, nodes) in sorted(by_name.items())]
