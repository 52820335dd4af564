"""Client side of the result cache: the hash ring, batched lookups and write-backs.

::

    caller thread: keys = item_keys(fn digest, chunk) ─► lookup(keys) ─┐ (blocks one round trip)
    I/O thread:    group keys by ring owner ── CACHE_GET ──► owner node's ResultStore
                   CACHE_HITS ◄── found values ───────────── (fabric.node.store, in the node process)
    caller thread: hits go straight to the caller; misses run as a batch per owner,
                   placed on a worker of that owner when one has a credit
                   (fabric.client.locality), and their results go back
                   ── CACHE_PUT ──► owner (and its replica)
                   CACHE_STORED ◄── taken ─────────────────── (shutdown waits for these)

The lookup is made by the client, batched per chunk, so a hit never touches a
worker or crosses the network twice (owner -> client), and a miss costs one
extra round trip per chunk, not per task.  The ring is a ``uhashring.HashRing``
of the live nodes that hold a shard, weighted by shard size; it follows the
heartbeats, so when one of N nodes joins or leaves only about 1/N of the keys
change owner.  With ``replicas = 2`` an entry is also written to the next
distinct node of the ring, which becomes its owner if the first one dies.
A node sits on the ring by its name, not its per-start id, so a node that
restarts (same name, same shard file) owns the keys its shard holds again.

With a cluster key every value is sealed by its writer (:class:`Seal`) and
checked by its reader before anything unpickles it, so only holders of the
key write entries that others accept; a node never unpickles values.

No socket here: :class:`CacheClient` is given the I/O loop's ``post`` (run
this in the I/O thread) and ``send`` (one message on a node's control
DEALER), and the loop calls its ``on_*``, ``nodes_changed``, ``node_lost``
and ``expire`` methods.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import logging
import pickle
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgpack

from ..cluster.ring import CacheRing
from ..cluster.stats import NodeStats
from ..errors import CacheKeyError
from ..wire.message import Message
from ..wire.protocol import CacheClear, CacheCleared, CacheGet, CacheHits, CachePut, CacheStored
from ..wire.security import ClusterKey
from .cache_key import call_key, function_digest, item_keys
from .statistics import CacheStats, FabricStatistics

log = logging.getLogger(__name__)

_request_ids = itertools.count(1)


@dataclass
class Lookup:
    """One batched lookup from a caller thread, answered by one or more owners."""

    keys: list[bytes]
    deadline: float
    found: dict[int, bytes] = field(default_factory=dict)
    waiting: dict[int, tuple[bytes, list[int]]] = field(default_factory=dict)  # request id -> (node, key indices)
    owners: dict[bytes, list[int]] = field(default_factory=dict)  # owner node id -> indices of the keys it owns
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class Clearing:
    deadline: float
    waiting: set[int] = field(default_factory=set)
    removed: int = 0
    done: threading.Event = field(default_factory=threading.Event)


class Seal:
    """Who may write entries that others accept.  With a cluster key a value
    travels and is stored as a MAC followed by the value: keyed BLAKE2b (a MAC
    by design, as HMAC is for SHA-2, and one pass) over the cache key and the
    value, keyed with a secret derived from the cluster's.  A reader checks it
    before unpickling, so an entry put by anyone without the key, or moved to
    another cache key, is a miss.  Without a key values go bare: then only
    local users can reach a node, and they are trusted anyway."""

    MAC_BYTES = 32

    def __init__(self, key: ClusterKey | None) -> None:
        # Keyed once: copying a keyed state costs half of keying a new one per value (measured: 21
        # against 40 ms for a chunk of 10,000 values; pickling them took 19).
        self._keyed = (
            hashlib.blake2b(
                key=hashlib.blake2b(key.secret, digest_size=32, person=b"fabric-cache-mac").digest(),
                digest_size=self.MAC_BYTES,
            )
            if key
            else None
        )

    def seal_many(self, cache_keys: list[bytes], values: list[bytes]) -> list[bytes]:
        """Each value behind its MAC, over key then value (unprefixed: cache keys are
        digests of one size, so the two split one way).  One loop, no call per value:
        the MAC is most of the cost (~3 us a value here, twice pickling a float)."""
        if self._keyed is None:
            return values
        new_mac = self._keyed.copy
        sealed = []
        for cache_key, value in zip(cache_keys, values):
            mac = new_mac()
            mac.update(cache_key)
            mac.update(value)
            sealed.append(mac.digest() + value)
        return sealed

    def open_many(self, cache_keys: list[bytes], sealed: list[bytes]) -> list[bytes | None]:
        """The values, None where a seal is not the cluster's."""
        if self._keyed is None:
            return list(sealed)
        new_mac, size, same = self._keyed.copy, self.MAC_BYTES, hmac.compare_digest
        values: list[bytes | None] = []
        for cache_key, entry in zip(cache_keys, sealed):
            mac = new_mac()
            mac.update(cache_key)
            value = entry[size:]
            mac.update(value)
            values.append(value if same(entry[:size], mac.digest()) else None)
        return values


class CacheClient:
    """Lookups, write-backs and clears, routed on the ring.  Caller threads call
    ``lookup``/``store``/``clear``/``wait_stored``; everything else runs in the
    I/O thread.

    ``post(command)`` runs ``command`` in the I/O thread (False once it has
    closed); ``send(node_id, message)`` sends on a live node's control socket
    from the I/O thread (False if the node is unknown)."""

    def __init__(
        self, post: Callable[[Callable[[], None]], bool], send: Callable[[bytes, Message], bool], replicas: int,
        timeout_s: float, key: ClusterKey | None = None,
    ) -> None:
        self.post = post
        self.send = send
        self.ring = CacheRing(replicas)
        self.timeout_s = timeout_s
        self.lookups: dict[int, Lookup] = {}  # request id -> lookup
        # (deadline, start, give up): work waiting for a first node with a shard
        self.parked: list[tuple[float, Callable[[], None], Callable[[], None]]] = []
        self.clearings: dict[int, Clearing] = {}
        self.nodes_known = False  # whether any node is live, with a shard or not
        self.seal = Seal(key)
        # Write-backs not yet taken by their node: posted but not sent, and sent but not acknowledged
        # (request id -> (node id, deadline)); guarded by ``settled``, which wait_stored waits on.
        self.unsent = 0
        self.puts: dict[int, tuple[bytes, float]] = {}
        self.settled = threading.Condition()
        self.hits = 0
        self.misses = 0
        self.rejected = 0  # hits whose seal was not the cluster's

    # -- caller threads ---------------------------------------------------------------

    def lookup(self, keys: list[bytes]) -> dict[int, bytes]:
        """Stored values by index into ``keys``; misses are absent.  Waits one
        round trip (or, before any node is known, up to the timeout)."""
        return self.lookup_owned(keys)[0]

    def lookup_owned(self, keys: list[bytes]) -> tuple[dict[int, bytes], dict[bytes, list[int]]]:
        """:meth:`lookup`, and the indices of ``keys`` per owner node: where a miss
        should run, so that its result is written where it is stored."""
        if not keys:
            return {}, {}
        request = Lookup(keys, time.monotonic() + self.timeout_s)
        if not self.post(lambda: self._start(request)):
            return {}, {}
        request.done.wait(self.timeout_s + 1)
        found = dict(request.found)
        self.hits += len(found)
        self.misses += len(keys) - len(found)
        return found, dict(request.owners)

    def store(self, fn_digest: bytes, keys: list[bytes], values: list[Any]) -> None:
        """Write results back to their owners; :meth:`wait_stored` waits until they are taken."""
        if not keys:
            return
        blobs = self.seal.seal_many(keys, [pickle.dumps(v, protocol=5) for v in values])
        with self.settled:
            self.unsent += 1
        if not self.post(lambda: self._put(fn_digest, keys, blobs)):
            self._sent()

    def wait_stored(self, timeout_s: float) -> bool:
        """Wait until every write-back is taken by its node (or given up with
        it); whether all were, within ``timeout_s``."""
        with self.settled:
            return self.settled.wait_for(lambda: not self.unsent and not self.puts, timeout_s)

    def clear(self, fn_digest: bytes | None) -> int:
        """Remove one function's entries (``None``: every function's) from every node."""
        clearing = Clearing(time.monotonic() + self.timeout_s)
        if self.post(lambda: self._start_clear(clearing, fn_digest)):
            clearing.done.wait(self.timeout_s + 1)
        return clearing.removed

    # -- I/O thread -------------------------------------------------------------------

    def _park(self, start: Callable[[], None], give_up: Callable[[], None]) -> bool:
        """Hold ``start`` until a node with a shard is known; True if not started now.
        Live nodes none of which holds a shard (their caches are off) mean a miss at
        once, not a wait for ``timeout_s``."""
        if self.ring:
            return False
        if self.nodes_known:
            give_up()
        else:
            self.parked.append((time.monotonic() + self.timeout_s, start, give_up))
        return True

    def _start(self, request: Lookup) -> None:
        if self._park(lambda: self._start(request), request.done.set):
            return
        by_owner: dict[bytes, list[int]] = {}
        for index, key in enumerate(request.keys):
            by_owner.setdefault(self.ring.owners(key)[0], []).append(index)
        request.owners = by_owner
        for node_id, indices in by_owner.items():
            request_id = next(_request_ids)
            if self.send(node_id, CacheGet(request_id, [request.keys[i] for i in indices])):
                request.waiting[request_id] = (node_id, indices)
                self.lookups[request_id] = request
        if not request.waiting:
            request.done.set()

    def _put(self, fn_digest: bytes, keys: list[bytes], blobs: list[bytes]) -> None:
        if self._park(lambda: self._put(fn_digest, keys, blobs), self._sent):
            return
        by_node: dict[bytes, list[int]] = {}
        for index, key in enumerate(keys):
            for node_id in self.ring.owners(key):
                by_node.setdefault(node_id, []).append(index)
        deadline = time.monotonic() + self.timeout_s
        for node_id, indices in by_node.items():
            request_id = next(_request_ids)
            values = msgpack.packb([blobs[i] for i in indices], use_bin_type=True)
            if self.send(node_id, CachePut(request_id, fn_digest, [keys[i] for i in indices], [values])):
                with self.settled:
                    self.puts[request_id] = (node_id, deadline)
        self._sent()

    def _sent(self) -> None:
        """One posted write-back has been sent, or given up before it could be."""
        with self.settled:
            self.unsent -= 1
            self.settled.notify_all()

    def _settle(self, request_ids: Iterable[int]) -> None:
        with self.settled:
            for request_id in request_ids:
                self.puts.pop(request_id, None)
            self.settled.notify_all()

    def on_stored(self, msg: CacheStored) -> None:
        self._settle([msg.request_id])

    def _start_clear(self, clearing: Clearing, fn_digest: bytes | None) -> None:
        if self._park(lambda: self._start_clear(clearing, fn_digest), clearing.done.set):
            return
        for node_id in self.ring.node_ids():
            request_id = next(_request_ids)
            if self.send(node_id, CacheClear(request_id, fn_digest or b"", fn_digest is None)):
                clearing.waiting.add(request_id)
                self.clearings[request_id] = clearing
        if not clearing.waiting:
            clearing.done.set()

    def on_hits(self, msg: CacheHits) -> None:
        request = self.lookups.pop(msg.request_id, None)
        if request is None:
            return
        node_id, indices = request.waiting.pop(msg.request_id)
        try:
            values = msgpack.unpackb(msg.payload[0], raw=False) if msg.payload else []
        except (ValueError, msgpack.UnpackException) as exc:
            log.warning("client: dropped malformed cache reply: %s", exc)
            values = []
        rejected = 0
        if isinstance(values, list) and len(values) == len(msg.indices):
            hits = [(indices[hit], value) for hit, value in zip(msg.indices, values)
                    if hit < len(indices) and isinstance(value, bytes)]
            opened = self.seal.open_many([request.keys[index] for index, _ in hits], [value for _, value in hits])
            for (index, _), value in zip(hits, opened):
                if value is None:
                    rejected += 1
                else:
                    request.found[index] = value
        if rejected:
            self.rejected += rejected
            log.warning("client: %d cache entries from node %r do not carry the cluster key's seal (not written "
                        "by a member of this cluster); treated as misses", rejected, node_id)
        if not request.waiting:
            request.done.set()

    def on_cleared(self, msg: CacheCleared) -> None:
        clearing = self.clearings.pop(msg.request_id, None)
        if clearing is not None:
            clearing.waiting.discard(msg.request_id)
            clearing.removed += msg.removed
            if not clearing.waiting:
                clearing.done.set()

    def nodes_changed(self, nodes: Iterable[NodeStats]) -> None:
        """Membership changed: follow it; start what waited for a first node."""
        live = list(nodes)
        self.nodes_known = bool(live)
        self.ring.update(live)
        if self.nodes_known and self.parked:
            parked, self.parked = self.parked, []
            for _, start, give_up in parked:
                (start if self.ring else give_up)()

    def node_lost(self, node_id: bytes) -> None:
        """Answers from a lost node will not come: count them as misses, and its write-backs as lost."""
        for request_id, request in list(self.lookups.items()):
            if request.waiting[request_id][0] == node_id:
                self._give_up(request_id, request)
        self._settle([request_id for request_id, (node, _) in self.puts.items() if node == node_id])

    def expire(self, now: float) -> None:
        for request_id, request in list(self.lookups.items()):
            if now > request.deadline:
                self._give_up(request_id, request)
        expired = [p for p in self.parked if now > p[0]]
        for item in expired:
            self.parked.remove(item)
            item[2]()
        self._settle([request_id for request_id, (_, deadline) in self.puts.items() if now > deadline])
        for request_id, clearing in list(self.clearings.items()):
            if now > clearing.deadline:
                del self.clearings[request_id]
                clearing.done.set()

    def _give_up(self, request_id: int, request: Lookup) -> None:
        del self.lookups[request_id]
        del request.waiting[request_id]
        if not request.waiting:
            request.done.set()


class CachedFunction:
    """One cached call site: the function's stable digest and the client to ask.

    Raises :class:`~fabric.CacheKeyError` at construction when the function's
    identity cannot be derived stably (it reads a global with no stable encoding)."""

    __slots__ = ("client", "fn_digest", "star")

    def __init__(self, client: CacheClient, fn: Callable[..., Any], star: bool = False) -> None:
        self.client = client
        self.fn_digest = function_digest(fn)
        self.star = star

    def keys(self, items: Sequence[Any], start: int) -> list[bytes]:
        try:
            return item_keys(self.fn_digest, items, self.star)
        except CacheKeyError as exc:
            raise CacheKeyError(f"{exc} (in the chunk of map input starting at item {start})") from exc

    def call_key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
        return call_key(self.fn_digest, args, kwargs)

    def lookup(self, keys: list[bytes]) -> tuple[dict[int, bytes], dict[bytes, list[int]]]:
        """Hits by index into ``keys``, and the indices of ``keys`` per owner node."""
        return self.client.lookup_owned(keys)

    def store(self, keys: list[bytes], values: list[Any]) -> None:
        self.client.store(self.fn_digest, keys, values)


class FabricCache:
    """``fx.cache``: the cluster's result cache, seen from this client.

    Results of calls made with ``cache=True`` (or of ``@fabric.cached``
    functions) are stored on the node that owns their key; this object
    reports on them and forgets them.
    """

    def __init__(self, client: CacheClient, statistics: Callable[[], FabricStatistics]) -> None:
        self._client = client
        self._statistics = statistics

    def stats(self) -> CacheStats:
        """``fx.statistics().cache``: this client's hits and misses; entries and bytes per node."""
        return self._statistics().cache

    def clear(self, fn: Callable[..., Any] | None = None) -> int:
        """Forget the stored results of ``fn``, or of everything; returns how many."""
        return self._client.clear(function_digest(fn) if fn is not None else None)


F = TypeVar("F", bound=Callable[..., Any])


def cached(fn: F) -> F:
    """Mark ``fn`` as pure: fabric reuses stored results of identical calls, as
    if every call passed ``cache=True``."""
    fn.__fabric_cached__ = True  # type: ignore[attr-defined]
    return fn


def wants_cache(fn: Callable[..., Any], option: bool) -> bool:
    return option or bool(getattr(fn, "__fabric_cached__", False))
