"""Heartbeats and membership: who is alive, and what each node reports.

Each node PUBlishes a :class:`NodeStats` every ``heartbeat_interval_s`` from
its own I/O loop (never from a worker running user code, so a busy worker
cannot make its node look dead) to the few peers that watch it, with the news
it relays about other nodes (:mod:`.gossip`); it answers each client's HELLO
with the same stats on the control socket::

    node PUB ──HEARTBEAT (stats, version, news)──► SUB of its watchers ─► Membership / Gossip
    node ROUTER ──HEARTBEAT (answer to HELLO)────► client's DEALER   ─► ClusterView (Membership)

A direct answer (to a client's first HELLO, to a PEER_HELLO) also lists every
member the node knows alive (``peers``), so membership spreads from the seed
list.  Everything here is checked at the edge: types, endpoints, and the
counts of peers, news and workers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import ProtocolError
from ..wire.endpoint import is_endpoint

MAX_PEERS = 10_000  # peers one heartbeat may name; more is forged (and a heartbeat is capped in bytes too)
MAX_WORKERS = 4_096  # worker records one heartbeat may carry
MAX_CLIENT_ID_BYTES = 255  # a ZeroMQ identity's limit
MAX_RESOURCES = 64  # resource kinds one node may declare
MAX_TASKS = 4_096  # task names one heartbeat may carry
MAX_TASK_MODULES = 256
MAX_NAME_CHARS = 200  # of a resource, task or module name
MAX_DIGEST_CHARS = 128
MAX_UNITS = 1 << 31  # of one resource


@dataclass(frozen=True)
class WorkerStats:
    """Running counters of one worker process."""

    worker_id: str
    pid: int = 0
    done: int = 0
    failed: int = 0
    busy_s: float = 0.0
    running: bool = False
    client_id: bytes = b""  # whose acknowledged batch it runs (b"": none); a client exempts that batch
    batch_id: int = 0  # from data-plane liveness only while its worker's node lists it here


@dataclass(frozen=True)
class NodeStats:
    """What a node says about itself in each heartbeat; ``fx.nodes()`` returns these."""

    node_id: bytes
    name: str
    control: str
    pub: str
    workers: int = 0
    busy: int = 0
    accepting: bool = True
    done: int = 0
    failed: int = 0
    tasks_per_s: float = 0.0
    cpu_percent: float = 0.0
    memory_percent: float = 0.0
    max_load: float = 100.0
    clients: int = 0
    cache_entries: int = 0
    cache_bytes: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    cache_weight: int = 0  # the node's weight on the cache ring (MiB of shard capacity); 0: no cache
    objects: str = ""  # endpoint of the node's object socket ("": a node without an object store)
    store_objects: int = 0  # objects in its object store (both tiers)
    store_bytes: int = 0  # bytes of them in memory
    store_disk_bytes: int = 0  # bytes of them spilled to disk
    store_named: int = 0  # named objects
    peers: tuple[tuple[str, str], ...] = ()  # (control, pub) of every member it knows alive: in direct answers only
    version: int = 0  # its heartbeat counter (start time in ms + beats): orders reports about it
    news: tuple[tuple[str, str, int, bool], ...] = ()  # reports it relays: (control, pub, version, alive)
    log_file: str = ""  # where the node and its workers write (descriptors 1 and 2, and its log)
    per_worker: tuple[WorkerStats, ...] = ()
    resources: dict[str, int] = field(default_factory=dict)  # what the node declares: {"gpu": 2}
    tasks: tuple[str, ...] = ()  # names of the tasks its modules define (@fabric.task)
    task_modules: tuple[tuple[str, str], ...] = ()  # (module, digest of its source) of each task module
    indices: dict[str, int] = field(default_factory=dict)  # worker id -> its index on the node (0, 1, ...)
    age_s: float = field(default=0.0, compare=False)

    def to_info(self) -> dict[str, Any]:
        info = asdict(self)
        info["peers"] = [list(p) for p in self.peers]
        info["news"] = [list(n) for n in self.news]
        info["per_worker"] = [list(asdict(w).values()) for w in self.per_worker]
        info["tasks"] = list(self.tasks)
        info["task_modules"] = [list(m) for m in self.task_modules]
        del info["age_s"]
        return info

    @classmethod
    def from_info(cls, info: object) -> NodeStats:
        """Parse a heartbeat's map; ProtocolError on anything malformed."""
        if not isinstance(info, dict):
            raise ProtocolError("heartbeat info is not a map")
        try:
            values = {f.name: info[f.name] for f in fields(cls) if f.name in info}
            values["peers"] = tuple(map(_peer, _bounded(values.get("peers", []), MAX_PEERS, "peers")))
            values["news"] = tuple(map(_news, _bounded(values.get("news", []), MAX_PEERS, "news")))
            values["per_worker"] = tuple(map(_worker, _bounded(values.get("per_worker", []), MAX_WORKERS, "workers")))
            values["resources"] = _names_to_ints(values.get("resources", {}), MAX_RESOURCES, MAX_UNITS, "resources")
            values["indices"] = _names_to_ints(values.get("indices", {}), MAX_WORKERS, MAX_WORKERS, "indices")
            values["tasks"] = tuple(map(_name, _bounded(values.get("tasks", []), MAX_TASKS, "tasks")))
            values["task_modules"] = tuple(map(_module, _bounded(values.get("task_modules", []), MAX_TASK_MODULES,
                                                                 "task modules")))
            stats = cls(**values)
        except (TypeError, KeyError) as exc:
            raise ProtocolError(f"heartbeat info is malformed: {exc}") from None
        _check_types(stats)
        return stats


def _peer(pair: object) -> tuple[str, str]:
    if not (type(pair) is list and len(pair) == 2 and all(type(e) is str and is_endpoint(e) for e in pair)):
        raise TypeError(f"a peer is [control endpoint, pub endpoint], got {pair!r:.80}")
    return pair[0], pair[1]


def _news(report: object) -> tuple[str, str, int, bool]:
    if not (type(report) is list and tuple(map(type, report)) == _NEWS_TYPES and report[2] >= 0
            and is_endpoint(report[0]) and is_endpoint(report[1])):
        raise TypeError(f"news is [control endpoint, pub endpoint, version, alive], got {report!r:.80}")
    return report[0], report[1], report[2], report[3]


_NEWS_TYPES = (str, str, int, bool)


def _worker(record: object) -> WorkerStats:
    if (type(record) is not list or tuple(map(type, record)) != _WORKER_TYPES
            or len(record[-2]) > MAX_CLIENT_ID_BYTES):
        raise TypeError(f"a worker is [id, pid, done, failed, busy_s, running, client, batch], got {record!r:.80}")
    return WorkerStats(*record)


def _name(value: object) -> str:
    if type(value) is not str or not 0 < len(value) <= MAX_NAME_CHARS:
        raise TypeError(f"a name is a string of 1 to {MAX_NAME_CHARS} characters, got {value!r:.80}")
    return value


def _module(pair: object) -> tuple[str, str]:
    if not (type(pair) is list and len(pair) == 2 and type(pair[1]) is str and len(pair[1]) <= MAX_DIGEST_CHARS):
        raise TypeError(f"a task module is [name, source digest], got {pair!r:.80}")
    return _name(pair[0]), pair[1]


def _names_to_ints(values: object, limit: int, most: int, what: str) -> dict[str, int]:
    if type(values) is not dict or len(values) > limit:
        raise TypeError(f"{what}: a map of at most {limit:,} names")
    for name, units in values.items():
        if type(units) is not int or not 0 <= units <= most:
            raise TypeError(f"{what}: {name!r:.40} is not a whole number from 0 to {most:,}")
        _name(name)
    return values


def _bounded(values: object, limit: int, what: str) -> list[Any]:
    if type(values) is not list or len(values) > limit:
        raise TypeError(f"{what}: a list of at most {limit:,}")
    return values


_WORKER_TYPES = (str, int, int, int, float, bool, bytes, int)


def _check_types(stats: NodeStats) -> None:
    expected = {"node_id": bytes, "name": str, "control": str, "pub": str, "accepting": bool, "log_file": str}
    for name, kind in expected.items():
        if type(getattr(stats, name)) is not kind:
            raise ProtocolError(f"heartbeat field {name} is not {kind.__name__}")
    for name in ("workers", "busy", "done", "failed", "clients", "cache_entries", "cache_bytes", "cache_hits",
                 "cache_misses", "cache_weight", "store_objects", "store_bytes", "store_disk_bytes", "store_named",
                 "version"):
        if type(getattr(stats, name)) is not int:
            raise ProtocolError(f"heartbeat field {name} is not int")
    for name in ("tasks_per_s", "cpu_percent", "memory_percent", "max_load"):
        if type(getattr(stats, name)) is not float:
            raise ProtocolError(f"heartbeat field {name} is not float")
    if type(stats.objects) is not str or (stats.objects and not is_endpoint(stats.objects)):
        raise ProtocolError(f"heartbeat field objects is not an endpoint: {stats.objects!r:.80}")
    for name in ("control", "pub"):
        if not is_endpoint(getattr(stats, name)):
            raise ProtocolError(f"heartbeat field {name} is not an endpoint: {getattr(stats, name)!r:.80}")

