"""A node's object store: the objects its clients put, its workers kept, and the
copies its workers fetched from other nodes.  One file per object::

    memory tier  /dev/shm/fabric-objects-<node id>/<key hex>   up to [store] max_bytes
    disk tier    <cache dir>/objects-<node id>/<key hex>        what the bound spilled (least recently used)

Workers of the node read the files themselves (:mod:`fabric.node.worker_objects`),
mapping them read-only, so a node holds one copy of an object for all its
workers and an array is never copied per worker.  The node's loop serves the
bytes to other nodes and to clients on its object socket
(:mod:`fabric.node.object_server`) from maps of the same files.

Which objects may go: an object is *pinned* while a client owns it (a put or a
kept result, until the client frees it, closes or is forgotten) or while it
has a name (until ``fx.delete``).  Over the bound, least recently used objects
leave memory: an unpinned copy is dropped (its holder still has it), a pinned
object is spilled to disk, never dropped.  Objects are content-addressed where
they were put (equal bytes are stored once and get more owners, or more claims of
one owner: each put is a claim and each key in an OBJECT_FREE releases one, so a
put that overtakes the free of an earlier equal put is not undone by it); kept results
have random keys.  The store is emptied when the node stops: objects do not
outlive their node.
"""

from __future__ import annotations

import logging
import mmap
import os
import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

SHM_ROOT = Path("/dev/shm")
MAX_MAPS = 64  # open maps kept for serving reads
MAX_INCOMING = 64  # puts being received at once
INCOMING_TIMEOUT_S = 60.0  # a put whose sender went silent this long is dropped


def memory_dir(node_id: bytes, fallback: Path) -> Path:
    """Where the memory tier lives: /dev/shm when this machine has it, else beside the spill directory."""
    name = f"fabric-objects-{node_id.decode()}"
    if SHM_ROOT.is_dir() and os.access(SHM_ROOT, os.W_OK):
        return SHM_ROOT / name
    return fallback / name


def file_name(key: bytes) -> str:
    return key.hex()


@dataclass
class Entry:
    size: int
    on_disk: bool = False
    owners: dict[bytes, int] = field(default_factory=dict)  # owner -> its claims (puts) not yet freed
    names: set[str] = field(default_factory=set)
    copy_of: bytes = b""  # a fetched copy: the client owning the original (it goes when that client does)

    @property
    def pinned(self) -> bool:
        return bool(self.owners or self.names)


@dataclass
class Incoming:
    """A put being received, chunk by chunk, into a temporary file."""

    key: bytes
    total: int
    owner: bytes
    name: str
    path: Path
    file: IO[bytes]
    started: float
    on_disk: bool
    received: int = 0


@dataclass(frozen=True)
class ObjectFigures:
    """What the heartbeat reports of the store."""

    objects: int
    memory_bytes: int
    disk_bytes: int
    named: int


class ObjectStore:
    """The index of the files in the two tiers, their owners, names and recency."""

    def __init__(self, mem_dir: Path, disk_dir: Path, max_bytes: int) -> None:
        self.mem_dir, self.disk_dir, self.max_bytes = mem_dir, disk_dir, max_bytes
        for directory in (mem_dir, disk_dir):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.entries: OrderedDict[bytes, Entry] = OrderedDict()  # least recently used first
        self.names: dict[str, bytes] = {}
        self.memory_bytes = 0
        self.disk_bytes = 0
        self.incoming: dict[tuple[bytes, int], Incoming] = {}
        self._maps: OrderedDict[bytes, mmap.mmap] = OrderedDict()

    def path(self, key: bytes, on_disk: bool = False) -> Path:
        return (self.disk_dir if on_disk else self.mem_dir) / file_name(key)

    # -- lookups -------------------------------------------------------------------------

    def find(self, key: bytes, name: str = "") -> tuple[bytes, int] | None:
        """(key, size) of a held object, by key or by name; it becomes most recently used."""
        if not key:
            key = self.names.get(name, b"")
        entry = self.entries.get(key)
        if entry is None:
            return None
        self.entries.move_to_end(key)
        return key, entry.size

    def read(self, key: bytes, offset: int, length: int) -> memoryview | None:
        """A read-only view of the object's bytes (from a map of its file), or None."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        view = self._map(key, entry)
        return view[offset : offset + length]

    def _map(self, key: bytes, entry: Entry) -> memoryview:
        mapped = self._maps.get(key)
        if mapped is None:
            with open(self.path(key, entry.on_disk), "rb") as file:
                mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps[key] = mapped
            if len(self._maps) > MAX_MAPS:
                self._maps.popitem(last=False)  # closed when the last send using it is done
        else:
            self._maps.move_to_end(key)
        return memoryview(mapped)

    def listing(self) -> list[list[object]]:
        return [[name, key, self.entries[key].size] for name, key in self.names.items() if key in self.entries]

    def figures(self) -> ObjectFigures:
        return ObjectFigures(len(self.entries), self.memory_bytes, self.disk_bytes, len(self.names))

    # -- writing -------------------------------------------------------------------------

    def claim(self, key: bytes, owner: bytes, name: str) -> bool:
        """Give a held object another owner (and name); False if not held."""
        entry = self.entries.get(key)
        if entry is None:
            return False
        if owner:
            entry.owners[owner] = entry.owners.get(owner, 0) + 1
        if name:
            self._name(name, key)
        self.entries.move_to_end(key)
        return True

    def begin(self, sender: bytes, request_id: int, key: bytes, total: int, owner: bytes, name: str) -> Incoming:
        if len(self.incoming) >= MAX_INCOMING:
            raise ValueError(f"{MAX_INCOMING} puts are being received already")
        if total <= 0:
            raise ValueError("an object has at least a header")
        on_disk = total > self.max_bytes  # larger than the memory tier: straight to disk
        directory = self.disk_dir if on_disk else self.mem_dir
        path = directory / f".in-{file_name(key)}-{os.getpid()}-{request_id}-{len(self.incoming)}"
        incoming = Incoming(key, total, owner, name, path, open(path, "wb"), time.monotonic(), on_disk)
        self.incoming[(sender, request_id)] = incoming
        return incoming

    def write(self, incoming: Incoming, data: memoryview) -> None:
        if incoming.received + data.nbytes > incoming.total:
            raise ValueError("more bytes than the object's size")
        incoming.file.write(data)
        incoming.received += data.nbytes

    def commit(self, sender: bytes, request_id: int) -> None:
        incoming = self.incoming.pop((sender, request_id))
        incoming.file.close()
        os.replace(incoming.path, self.path(incoming.key, incoming.on_disk))
        self._add(incoming.key, incoming.total, incoming.on_disk)
        self.claim(incoming.key, incoming.owner, incoming.name)
        self._bound()

    def abandon(self, sender: bytes, request_id: int) -> None:
        incoming = self.incoming.pop((sender, request_id), None)
        if incoming is not None:
            incoming.file.close()
            incoming.path.unlink(missing_ok=True)

    def expire_incoming(self, now: float) -> None:
        for sender, request_id in [k for k, v in self.incoming.items() if now - v.started > INCOMING_TIMEOUT_S]:
            self.abandon(sender, request_id)

    def adopt(self, owner: bytes, key: bytes, pinned: bool) -> None:
        """A worker wrote the file of ``key`` into the memory tier (a kept result,
        pinned for ``owner``, or a fetched copy)."""
        if key not in self.entries:
            try:
                size = self.path(key).stat().st_size
            except OSError:
                return  # freed before it was adopted, or never written
            self._add(key, size)
        if pinned:
            self.claim(key, owner, "")
        else:
            self.entries[key].copy_of = owner
        self._bound()

    def _add(self, key: bytes, size: int, on_disk: bool = False) -> None:
        if key in self.entries:
            return
        self.entries[key] = Entry(size, on_disk)
        if on_disk:
            self.disk_bytes += size
        else:
            self.memory_bytes += size

    def _name(self, name: str, key: bytes) -> None:
        old = self.names.get(name)
        if old is not None and old != key and old in self.entries:
            self.entries[old].names.discard(name)
            self._drop_if_free(old)
        self.names[name] = key
        self.entries[key].names.add(name)

    # -- releasing -----------------------------------------------------------------------

    def free(self, owner: bytes, keys: list[bytes]) -> int:
        """The owner holds no Ref to these any more: one claim per key listed; return how many objects went."""
        dropped = 0
        for key in keys:
            entry = self.entries.get(key)
            if entry is None:
                self.path(key).unlink(missing_ok=True)  # a kept result freed before its worker's ADOPT
                continue
            claims = entry.owners.get(owner, 0) - 1
            if claims > 0:
                entry.owners[owner] = claims
            else:
                entry.owners.pop(owner, None)
            dropped += self._drop_if_free(key)
        return dropped

    def forget_owners(self, live: set[bytes]) -> int:
        """Release what clients no longer attached (closed, or forgotten) owned, and the
        copies fetched of their objects (a client's last frees may not have reached us)."""
        dropped = 0
        for key, entry in list(self.entries.items()):
            if entry.owners.keys() - live:
                entry.owners = {owner: n for owner, n in entry.owners.items() if owner in live}
                dropped += self._drop_if_free(key)
            elif entry.copy_of and entry.copy_of not in live:
                dropped += self._drop_if_free(key)
        return dropped

    def delete(self, name: str) -> list[list[object]]:
        key = self.names.pop(name, None)
        if key is None or key not in self.entries:
            return []
        entry = self.entries[key]
        entry.names.discard(name)
        size = entry.size
        self._drop_if_free(key)
        return [[name, key, size]]

    def _drop_if_free(self, key: bytes) -> int:
        entry = self.entries[key]
        if entry.pinned:
            return 0
        self._drop(key)
        return 1

    def _drop(self, key: bytes) -> None:
        entry = self.entries.pop(key)
        self._maps.pop(key, None)
        self.path(key, entry.on_disk).unlink(missing_ok=True)
        if entry.on_disk:
            self.disk_bytes -= entry.size
        else:
            self.memory_bytes -= entry.size

    def _bound(self) -> None:
        """Over ``max_bytes`` in memory: drop the least recently used copies and
        spill the least recently used pinned objects to disk."""
        if self.memory_bytes <= self.max_bytes:
            return
        for key, entry in list(self.entries.items()):
            if self.memory_bytes <= self.max_bytes:
                return
            if entry.on_disk:
                continue
            if not entry.pinned:
                self._drop(key)
                continue
            self._spill(key, entry)

    def _spill(self, key: bytes, entry: Entry) -> None:
        try:
            shutil.move(self.path(key), self.path(key, on_disk=True))
        except OSError as exc:  # a full disk: it stays in memory, over the bound
            log.error("object store: cannot spill %s to %s: %s", key.hex(), self.disk_dir, exc)
            return
        self._maps.pop(key, None)
        entry.on_disk = True
        self.memory_bytes -= entry.size
        self.disk_bytes += entry.size

    def close(self) -> None:
        for sender, request_id in list(self.incoming):
            self.abandon(sender, request_id)
        self._maps.clear()
        for directory in (self.mem_dir, self.disk_dir):
            shutil.rmtree(directory, ignore_errors=True)
