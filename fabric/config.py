"""Cluster configuration: ``cluster.toml`` parsed into frozen dataclasses.

Every key, its default and its unit, in one place::

    [cluster]
    heartbeat_interval_s = 1.0    # how often each node publishes a heartbeat
    liveness_s = 3.0              # silence after which a node (or client) is declared dead
    retries = 3                   # attempts for a task whose worker dies
    connect_timeout_s = 30.0      # how long queued work waits for any worker before NoNodesError
    max_message_bytes = 1073741824  # cap on one serialized batch of arguments or results (1 GiB); a node's
                                  # control socket drops a connection that sends a frame over it (+ 1 MiB)
    key_file = ""                 # the cluster's CURVE key (fabric-node keygen), relative to this file;
                                  # "" = $FABRIC_KEY_FILE, or none: loopback only
    insecure = false              # allow binding non-loopback addresses without a key (no authentication)

    [cache]                       # the result cache, one shard per node on the hash ring
    dir = ""                      # where shards live; "" = $FABRIC_CACHE_DIR, $XDG_CACHE_HOME/fabric or ~/.cache/fabric
    max_entries = 1000000         # entries per node shard (least recently used go first)
    max_bytes = 1073741824        # bytes of stored results per node shard (1 GiB); also the node's ring weight
    replicas = 1                  # 2 also stores each entry on the next distinct node of the ring

    [[node]]                      # one table per seed node
    name = "alpha"                # unique
    address = "tcp://127.0.0.1:7100"   # control endpoint; heartbeats go out on a port the node announces
    workers = 2                   # worker processes (cores to use); default: every core
    prefetch = 2                  # batches each worker may hold (1 running + queued)
    max_load = 100.0              # whole-machine CPU % at or above which the node takes no new batches (100: never)
    memory_limit_mb = 0           # RSS above which a worker is killed and replaced (0: no limit)
    max_clients = 256             # clients attached at once; more HELLOs are refused (each costs every
                                  # worker two sockets, and libzmq allows 1,023 per process)
    resources = {gpu = 2}         # what the node offers: calls with resources={"gpu": 1} run at most
                                  # 2 at once here (default: none)
    tasks = ["mypkg.jobs"]        # modules whose @fabric.task functions clients call by name (default: none)

A mistake (unknown key, wrong type, duplicate node, bad address) raises
:class:`ConfigError` naming the file, the key and the reason, before anything
starts.

A node's settings are one :class:`NodeSettings`, whichever source gives them:
a ``[[node]]`` entry here (with the ``[cluster]`` values it shares), the flags
of ``fabric-node start``, or the keywords of ``fabric.connect()`` for the
embedded node, which receives them as JSON (:mod:`fabric.node.__main__`).
:func:`check_settings` checks every source, and the client's own settings, with
the same words::

    cluster.toml ─► parse_config ─┐
    fabric-node start flags ──────┼─► NodeSettings ─► check_settings ─► Node (fabric.node.loop)
    connect(workers=...) ─────────┘        └─ to_json ─► python -m fabric.node (embedded)
"""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .cluster.stats import MAX_NAME_CHARS, MAX_RESOURCES, MAX_TASK_MODULES, MAX_UNITS
from .errors import ConfigError
from .wire.protocol import MAX_CLIENTS_CAP, MAX_CREDITS, MAX_MESSAGE_BYTES_CAP

DEFAULT_HEARTBEAT_INTERVAL_S = 1.0
DEFAULT_LIVENESS_S = 3.0
DEFAULT_RETRIES = 3
DEFAULT_PREFETCH = 2  # one batch running, one waiting in the worker's socket
DEFAULT_MAX_LOAD = 100.0
DEFAULT_CONNECT_TIMEOUT_S = 30.0
DEFAULT_MAX_MESSAGE_BYTES = 1 << 30
DEFAULT_CACHE_ENTRIES = 1_000_000
DEFAULT_CACHE_BYTES = 1 << 30
DEFAULT_BIND = "tcp://127.0.0.1:7100"
DEFAULT_MAX_CLIENTS = 256  # x 2 sockets per worker stays well under libzmq's 1,023 sockets per process


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@dataclass(frozen=True)
class CacheConfig:
    dir: str = ""
    max_entries: int = DEFAULT_CACHE_ENTRIES
    max_bytes: int = DEFAULT_CACHE_BYTES
    replicas: int = 1

    def shard_path(self, node_name: str) -> Path:
        """The node's shard file under the cache directory."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in node_name) or "node"
        return Path(self.dir or default_cache_dir()) / f"{safe}.sqlite"


def default_cache_dir() -> Path:
    if os.environ.get("FABRIC_CACHE_DIR"):
        return Path(os.environ["FABRIC_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fabric"


@dataclass(frozen=True)
class NodeSettings:
    """How to run one node, from cluster.toml, ``fabric-node start`` or ``connect()``.

    One type for every source, so a value is defaulted, checked
    (:func:`check_settings`) and read in one way wherever it came from.
    """

    name: str = ""  # "": HOST:PORT of the bound control endpoint
    address: str = DEFAULT_BIND  # control endpoint to bind: tcp://HOST:PORT (PORT may be *) or ipc://PATH
    workers: int = field(default_factory=default_workers)
    prefetch: int = DEFAULT_PREFETCH
    max_load: float = DEFAULT_MAX_LOAD
    memory_limit_mb: int = 0  # RSS above which a worker is killed and replaced; 0: no limit
    max_clients: int = DEFAULT_MAX_CLIENTS  # clients attached at once; further HELLOs are refused
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES  # the control socket refuses a frame above this (+ slack)
    heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S
    liveness_s: float = DEFAULT_LIVENESS_S  # before a silent client or peer is forgotten, a stopped worker killed
    seeds: tuple[str, ...] = ()  # control endpoints of peers to join
    insecure: bool = False
    key_file: str = ""  # the cluster's CURVE key (fabric.wire.security); "": none, loopback only
    cache: CacheConfig = CacheConfig()
    resources: tuple[tuple[str, int], ...] = ()  # (name, units) the node offers, sorted by name
    tasks: tuple[str, ...] = ()  # task modules (@fabric.task), imported by the node and each worker
    owner_pid: int | None = None  # embedded: exit when this process exits
    owner_dir: str = ""  # embedded: the owner's private directory, removed when the node stops

    def to_json(self) -> str:
        """What the client hands its embedded node (see :meth:`from_json`)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str, source: str) -> NodeSettings:
        """Settings written by :meth:`to_json` in another process, checked again."""
        try:
            values = json.loads(text)
            settings = cls(**{**values, "seeds": tuple(values["seeds"]), "cache": CacheConfig(**values["cache"]),
                              "resources": tuple(map(tuple, values["resources"])), "tasks": tuple(values["tasks"])})
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"{source}: not node settings: {exc!r}") from None
        check_settings(settings, source)
        return settings


@dataclass(frozen=True)
class ClusterConfig:
    nodes: tuple[NodeSettings, ...] = ()
    heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S
    liveness_s: float = DEFAULT_LIVENESS_S
    retries: int = DEFAULT_RETRIES
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    insecure: bool = False
    key_file: str = ""  # resolved against the cluster file's directory
    cache: CacheConfig = CacheConfig()
    source: str = "<defaults>"

    def node(self, name: str) -> NodeSettings:
        for node in self.nodes:
            if node.name == name:
                return node
        raise ConfigError(f"{self.source}: no [[node]] named {name!r} (have: {', '.join(n.name for n in self.nodes)})")

    def node_settings(self, **values: Any) -> NodeSettings:
        """A node's settings: ``values``, and this cluster's for what every node shares."""
        shared = {"heartbeat_interval_s": self.heartbeat_interval_s, "liveness_s": self.liveness_s,
                  "insecure": self.insecure, "key_file": self.key_file, "cache": self.cache,
                  "max_message_bytes": self.max_message_bytes}
        return NodeSettings(**{**shared, **values})


_CLUSTER_KEYS = {
    "heartbeat_interval_s": float, "liveness_s": float, "retries": int, "connect_timeout_s": float,
    "max_message_bytes": int, "insecure": bool, "key_file": str,
}
_CACHE_KEYS = {"dir": str, "max_entries": int, "max_bytes": int, "replicas": int}
_NODE_KEYS = {
    "name": str, "address": str, "workers": int, "prefetch": int, "max_load": float, "memory_limit_mb": int,
    "max_clients": int, "resources": dict, "tasks": list,
}


def load_config(path: str | os.PathLike[str]) -> ClusterConfig:
    """Read and check a cluster file."""
    source = str(path)
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    return parse_config(data, source, Path(path).parent)


def parse_config(data: dict[str, Any], source: str = "<config>", base: Path = Path()) -> ClusterConfig:
    """Check a parsed cluster file; ``key_file`` is taken relative to ``base``."""
    _check_keys(data, {"cluster": dict, "node": list, "cache": dict}, source, "")
    cluster = _typed(data.get("cluster", {}), _CLUSTER_KEYS, source, "cluster.")
    if cluster.get("key_file"):
        cluster["key_file"] = str(base / Path(cluster["key_file"]).expanduser())
    cache = CacheConfig(**_typed(data.get("cache", {}), _CACHE_KEYS, source, "cache."))
    if cache.replicas not in (1, 2):
        raise ConfigError(f"{source}: cache.replicas: 1 or 2, got {cache.replicas}")
    for key in ("max_entries", "max_bytes"):
        if getattr(cache, key) < 1:
            raise ConfigError(f"{source}: cache.{key}: must be >= 1, got {getattr(cache, key)}")
    config = ClusterConfig(source=source, cache=cache, **cluster)
    check_settings(config, source, "cluster.")
    entries = [_node_entry(entry, source, i) for i, entry in enumerate(data.get("node", []))]
    _check_unique(entries, source)
    nodes = []
    for i, values in enumerate(entries):
        seeds = tuple(other["address"] for other in entries if other is not values)
        node = config.node_settings(seeds=seeds, **values)
        check_settings(node, source, f"node[{i}].")
        nodes.append(node)
    return replace(config, nodes=tuple(nodes))


def _node_entry(entry: object, source: str, index: int) -> dict[str, Any]:
    where = f"node[{index}]."
    if not isinstance(entry, dict):
        raise ConfigError(f"{source}: {where[:-1]}: expected a table, got {type(entry).__name__}")
    values = _typed(entry, _NODE_KEYS, source, where)
    for key in ("name", "address"):
        if key not in values:
            raise ConfigError(f"{source}: {where}{key}: missing (every node needs a name and an address)")
    check_address(values["address"], f"{source}: {where}address")
    if "resources" in values:
        values["resources"] = resource_pairs(values["resources"].items())
    if "tasks" in values:
        values["tasks"] = tuple(values["tasks"])
    return values


def resource_pairs(items: Iterable[tuple[Any, Any]]) -> tuple[tuple[str, int], ...]:
    """Resources as sorted (name, units) pairs; check_settings checks them."""
    return tuple(sorted((name, units) for name, units in items))


def parse_resources(text: str, where: str) -> tuple[tuple[str, int], ...]:
    """``gpu=2,licence=1`` (``fabric-node start --resources``) as pairs."""
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, units = item.partition("=")
        if not sep or not units.strip().isdigit():
            raise ConfigError(f"{where}: {item!r} is not NAME=UNITS (e.g. gpu=2,licence=1)")
        pairs.append((name.strip(), int(units)))
    return resource_pairs(pairs)


def _typed(table: dict[str, Any], spec: dict[str, type], source: str, where: str) -> dict[str, Any]:
    _check_keys(table, spec, source, where)
    values = {}
    for key, value in table.items():
        expected = spec[key]
        if expected is float and type(value) is int:
            value = float(value)
        if type(value) is not expected:
            raise ConfigError(
                f"{source}: {where}{key}: expected {expected.__name__}, got {type(value).__name__} {value!r}"
            )
        values[key] = value
    return values


def _check_keys(table: dict[str, Any], spec: dict[str, type], source: str, where: str) -> None:
    for key, value in table.items():
        if key not in spec:
            raise ConfigError(f"{source}: {where}{key}: unknown key (known: {', '.join(sorted(spec))})")
        if spec[key] in (dict, list) and not isinstance(value, spec[key]):
            raise ConfigError(f"{source}: {where}{key}: expected a {'table' if spec[key] is dict else 'list'}")


def _check_unique(entries: list[dict[str, Any]], source: str) -> None:
    for key in ("name", "address"):
        seen: set[str] = set()
        for i, entry in enumerate(entries):
            if entry[key] in seen:
                raise ConfigError(f"{source}: node[{i}].{key}: duplicate {key} {entry[key]!r}")
            seen.add(entry[key])


# The range of each setting, whichever source gives it: (valid, what the message says).
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "workers": (lambda n: n >= 1, "must be >= 1 (worker processes)"),
    "prefetch": (lambda n: 1 <= n <= MAX_CREDITS, f"from 1 to {MAX_CREDITS} (batches each worker may hold)"),
    "max_load": (lambda pct: 0 <= pct <= 100, "a CPU percentage from 0 to 100"),
    "memory_limit_mb": (lambda mb: mb >= 0, "must be >= 0 (0: no limit)"),
    "max_clients": (lambda n: 1 <= n <= MAX_CLIENTS_CAP, f"from 1 to {MAX_CLIENTS_CAP} (clients attached at once)"),
    "heartbeat_interval_s": (lambda s: s > 0, "must be > 0 (seconds between heartbeats)"),
    "retries": (lambda n: n >= 1, "must be >= 1 (attempts for a task whose worker dies)"),
    "connect_timeout_s": (lambda s: s > 0, "must be > 0 (seconds queued work waits for a worker)"),
    "max_message_bytes": (lambda n: 1024 <= n <= MAX_MESSAGE_BYTES_CAP, f"from 1024 to {MAX_MESSAGE_BYTES_CAP}"),
}


def check_settings(settings: NodeSettings | ClusterConfig, source: str, where: str = "") -> None:
    """Raise :class:`ConfigError` for the first value out of its range.

    The one check of every source (cluster.toml, ``fabric-node start``,
    ``connect()``): the message is ``SOURCE: WHERE KEY: rule, got VALUE`` with
    the same rule and value whichever source gave it.
    """
    for key, (valid, rule) in _RULES.items():
        if hasattr(settings, key) and not valid(value := getattr(settings, key)):
            raise ConfigError(f"{source}: {where}{key}: {rule}, got {value:g}")
    if isinstance(settings, NodeSettings):
        _check_offer(settings, source, where)
    interval_s, liveness_s = settings.heartbeat_interval_s, settings.liveness_s
    if not liveness_s > interval_s:
        raise ConfigError(
            f"{source}: {where}liveness_s: must exceed heartbeat_interval_s ({interval_s:g} s) by several beats, "
            f"got {liveness_s:g}"
        )


def _check_offer(settings: NodeSettings, source: str, where: str) -> None:
    """Resources and task modules: the limits a heartbeat carrying them is held to."""
    if len(settings.resources) > MAX_RESOURCES:
        raise ConfigError(f"{source}: {where}resources: at most {MAX_RESOURCES} kinds, got {len(settings.resources)}")
    for name, units in settings.resources:
        if not (isinstance(name, str) and 0 < len(name) <= MAX_NAME_CHARS):
            raise ConfigError(f"{source}: {where}resources: a name of 1 to {MAX_NAME_CHARS} characters, got {name!r}")
        if type(units) is not int or not 0 <= units <= MAX_UNITS:
            raise ConfigError(f"{source}: {where}resources.{name}: a whole number from 0 to {MAX_UNITS}, got {units!r}")
    if len(settings.tasks) > MAX_TASK_MODULES:
        raise ConfigError(f"{source}: {where}tasks: at most {MAX_TASK_MODULES} modules, got {len(settings.tasks)}")
    for module in settings.tasks:
        if not (isinstance(module, str) and all(part.isidentifier() for part in module.split("."))):
            raise ConfigError(f"{source}: {where}tasks: {module!r} is not a module name such as mypkg.jobs")


def check_address(address: str, where: str) -> tuple[str, int]:
    """A ``tcp://HOST:PORT`` endpoint with an IP address or ``localhost``; returns (host, port)."""
    prefix = "tcp://"
    host, sep, port = address[len(prefix) :].rpartition(":") if address.startswith(prefix) else ("", "", "")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: {address!r} is not tcp://HOST:PORT")
    if host != "localhost":
        try:
            ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            raise ConfigError(f"{where}: {host!r} is not an IP address or localhost") from None
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
