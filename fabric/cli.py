"""``fabric-node``: run a node daemon in the foreground, stop one, or ask a cluster for its status.

::

    fabric-node start --config cluster.toml --name alpha
    fabric-node start --bind tcp://127.0.0.1:7100 --join tcp://127.0.0.1:7200 --workers 4
    fabric-node status --config cluster.toml
    fabric-node status tcp://127.0.0.1:7100
    fabric-node reload tcp://127.0.0.1:7100     # import the task modules again (as SIGHUP)
    fabric-node stop tcp://127.0.0.1:7100          # or: fabric-node stop --config cluster.toml alpha
    fabric-node keygen cluster.key
    fabric-node --version

Logging is configured only by process entry points: this one, the embedded
node's (:mod:`fabric.node.__main__`) and the worker's.  Every user error (a
configuration mistake, an address in use or malformed, a key file that cannot
be read or written) exits with status 2 and one line saying what is wrong and
what to do, never a traceback.  ``stop`` exits with 0 once the node has
acknowledged, 1 if nothing answered.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, replace
from typing import TypeVar

import zmq

from . import __version__
from .cluster.stats import NodeStats
from .config import (
    DEFAULT_BIND,
    ClusterConfig,
    NodeSettings,
    check_address,
    check_settings,
    load_config,
    parse_resources,
)
from .errors import ConfigError, ProtocolError
from .node import processes
from .node.loop import Node
from .wire import security
from .wire.message import Message
from .wire.protocol import NodeLeaving, Reload, Reloaded, Status, StatusReply, Stop, from_frames, to_frames
from .wire.security import ClusterKey, write_key_file

Answer = TypeVar("Answer", bound=Message)
STATUS_TIMEOUT_S = 3.0  # also how long ``stop`` waits for the node's acknowledgement


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fabric-node", description="Run, stop or inspect fabric nodes.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    start = commands.add_parser("start", help="run a node in the foreground (SIGINT/SIGTERM stop it cleanly)")
    start.add_argument("--config", help="cluster.toml: seed nodes and cluster settings")
    start.add_argument("--name", help="this node's name (default: HOST:PORT of its bind); with --config, picks its "
                       "[[node]] entry")
    start.add_argument("--bind", help=f"control endpoint tcp://HOST:PORT (default {DEFAULT_BIND}, or the config's)")
    start.add_argument("--join", action="append", default=[], metavar="ADDRESS", help="a seed peer (repeatable)")
    start.add_argument("--workers", type=int, help="worker processes (default: one per core)")
    start.add_argument("--prefetch", type=int, help="batches each worker may hold (default 2)")
    start.add_argument("--max-load", type=float, help="whole-machine CPU %% above which no new batches are taken")
    start.add_argument("--memory-limit-mb", type=int, help="worker RSS above which it is killed and replaced")
    start.add_argument("--max-clients", type=int, help="clients attached at once; more are refused (default 256)")
    start.add_argument("--heartbeat-interval", type=float, help="seconds between heartbeats (default 1)")
    start.add_argument("--liveness", type=float, help="seconds of silence before a peer or client is dead (default 3)")
    start.add_argument("--insecure", action="store_true", help="allow a non-loopback bind without a cluster key")
    start.add_argument("--key-file", help="the cluster's key (default: the config's, or $FABRIC_KEY_FILE)")
    start.add_argument("--resources", metavar="NAME=UNITS,...",
                       help="what this node offers, e.g. gpu=2,licence=1: calls with resources={'gpu': 1} run at "
                            "most 2 at once here")
    start.add_argument("--tasks", action="append", default=[], metavar="MODULE",
                       help="a module whose @fabric.task functions clients call by name "
                            "(repeatable, or comma-separated)")
    start.add_argument("--cache-dir", help="directory of this node's result-cache shard (default: the config's)")
    start.add_argument("--store-max-bytes", type=int,
                       help="object bytes kept in memory; past it the least recently used spill to disk (2 GiB)")

    status = commands.add_parser("status", help="print a table of the live nodes")
    status.add_argument("address", nargs="?", help="any node's control endpoint")
    status.add_argument("--config", help="cluster.toml: ask its nodes in turn")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.add_argument("--key-file", help="the cluster's key (default: the config's, or $FABRIC_KEY_FILE)")

    reload = commands.add_parser("reload", help="import a node's task modules again and restart its workers "
                                                "between batches (as SIGHUP)")
    reload.add_argument("node", metavar="ADDRESS|NAME", help="the node's control endpoint, or with --config its name")
    reload.add_argument("--config", help="cluster.toml: NAME is one of its [[node]] entries")
    reload.add_argument("--key-file", help="the cluster's key (default: the config's, or $FABRIC_KEY_FILE)")
    stop = commands.add_parser("stop", help="stop a node as SIGTERM would (its peers and clients see it leave)")
    stop.add_argument("node", metavar="ADDRESS|NAME", help="the node's control endpoint, or with --config its name")
    stop.add_argument("--config", help="cluster.toml: NAME is one of its [[node]] entries")
    stop.add_argument("--key-file", help="the cluster's key (default: the config's, or $FABRIC_KEY_FILE)")

    keygen = commands.add_parser("keygen", help="write a new cluster key (authenticates and encrypts all traffic)")
    keygen.add_argument("path", help="the key file to create (readable by its owner only; never overwritten)")
    return parser


def node_settings(args: argparse.Namespace) -> NodeSettings:
    """cluster.toml (if any), then the command line over it, checked like every other source."""
    config = load_config(args.config) if args.config else ClusterConfig()
    if args.config and args.name:
        settings = config.node(args.name)
    else:
        settings = config.node_settings(name=args.name or "", seeds=tuple(n.address for n in config.nodes))
    flags = {
        "address": args.bind, "workers": args.workers, "prefetch": args.prefetch, "max_load": args.max_load,
        "memory_limit_mb": args.memory_limit_mb, "max_clients": args.max_clients,
        "heartbeat_interval_s": args.heartbeat_interval, "liveness_s": args.liveness, "insecure": args.insecure or None,
        "cache": replace(settings.cache, dir=args.cache_dir) if args.cache_dir else None,
        "store": replace(settings.store, max_bytes=args.store_max_bytes) if args.store_max_bytes else None,
        "resources": parse_resources(args.resources, "--resources") if args.resources is not None else None,
        "tasks": tuple(m.strip() for arg in args.tasks for m in arg.split(",") if m.strip()) or None,
    }
    settings = replace(settings, **{k: v for k, v in flags.items() if v is not None})
    check_settings(settings, "command line")
    for seed in args.join:
        check_address(seed, "--join")
    key = find_key(args.key_file or settings.key_file)
    return replace(settings, seeds=settings.seeds + tuple(args.join), key_file=key.path if key is not None else "")


def find_key(path: str) -> ClusterKey | None:
    """The cluster key, or a ConfigError that also says where the key's path came from."""
    try:
        return ClusterKey.find(path)
    except ConfigError as exc:
        raise ConfigError(f"{exc}; name a key made by `fabric-node keygen` with --key-file, key_file in "
                          f"cluster.toml or ${security.KEY_FILE_ENV}") from None


def start(args: argparse.Namespace) -> int:
    settings = node_settings(args)
    processes.configure_logging("INFO")
    node = Node(settings)
    file_handler = logging.FileHandler(node.log_path)  # beside the terminal: the log its workers write to
    file_handler.setFormatter(logging.Formatter(processes.LOG_FORMAT))
    logging.getLogger().addHandler(file_handler)
    node.handle_signals()
    logging.getLogger(__name__).info(
        "node %s on %s (heartbeats on %s), %d workers", node.settings.name, node.endpoint, node.state.bound.pub,
        node.settings.workers,
    )
    node.run()
    return 0


def ask(address: str, request: Message, answer: type[Answer], key: ClusterKey | None = None,
        timeout_s: float = STATUS_TIMEOUT_S) -> Answer:
    """Send ``request`` to a node and return its ``answer``; raises TimeoutError if
    it does not answer (saying why when its handshake failed), ProtocolError if
    it answers something else."""
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    handshakes = security.HandshakeWatch()
    try:
        security.join(sock, key)
        monitor = handshakes.watch(sock, address)
        sock.connect(address)
        sock.send_multipart(to_frames(request))
        if not sock.poll(int(timeout_s * 1000)):
            handshakes.on_events(monitor)
            raise TimeoutError(f"no answer from {address} within {timeout_s:.0f} s"
                               + (f": {handshakes.describe()}" if handshakes.refusals else ""))
        reply = from_frames(sock.recv_multipart())
        if not isinstance(reply, answer):
            raise ProtocolError(f"{address} answered {type(reply).__name__}, not {answer.KIND.name}")
        return reply
    finally:
        handshakes.close()
        sock.close()


def ask_status(address: str, key: ClusterKey | None = None, timeout_s: float = STATUS_TIMEOUT_S) -> list[NodeStats]:
    """The node's view of the live cluster; raises TimeoutError if it does not answer."""
    reply = ask(address, Status(), StatusReply, key, timeout_s)
    return [NodeStats.from_info(info) for info in reply.nodes]


def format_table(nodes: list[NodeStats]) -> str:
    header: list[object] = ["name", "address", "workers", "busy", "done", "failed", "tasks/s", "cpu%", "mem%",
                            "state", "cache", "objects", "store MB", "spilled MB", "resources", "tasks", "age s"]
    rows = [
        [n.name, n.control, n.workers, n.busy, n.done, n.failed, f"{n.tasks_per_s:.0f}", f"{n.cpu_percent:.0f}",
         f"{n.memory_percent:.0f}", "accepting" if n.accepting else f"paused>{n.max_load:.0f}%", n.cache_entries,
         n.store_objects, f"{n.store_bytes / 2**20:.1f}", f"{n.store_disk_bytes / 2**20:.1f}",
         ",".join(f"{k}={v}" for k, v in sorted(n.resources.items())) or "-", ",".join(n.tasks) or "-",
         f"{n.age_s:.1f}"]
        for n in sorted(nodes, key=lambda n: n.name)
    ]
    cells = [[str(c) for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def format_logs(nodes: list[NodeStats]) -> str:
    """Where each node and its workers write (what tasks print when not forwarded, crashes)."""
    return "\n".join(f"log of {n.name}: {n.log_file or '(not reported)'}" for n in sorted(nodes, key=lambda n: n.name))


def status(args: argparse.Namespace) -> int:
    config = load_config(args.config) if args.config else ClusterConfig()
    addresses = [args.address] if args.address else [n.address for n in config.nodes]
    if not addresses:
        raise ConfigError("status needs an ADDRESS or a --config naming at least one node")
    key = find_key(args.key_file or config.key_file)
    errors = []
    for address in addresses:
        try:
            nodes = ask_status(address, key)
        except (TimeoutError, ProtocolError, zmq.ZMQError) as exc:
            errors.append(str(exc))
            continue
        if args.json:
            print(json.dumps([asdict(n) for n in nodes], indent=2, default=_bytes_as_text))
        else:
            print(format_table(nodes))
            print(format_logs(nodes))
        return 0
    print("fabric-node: no node answered: " + "; ".join(errors), file=sys.stderr)
    return 1


def _bytes_as_text(value: object) -> str:
    """JSON has no bytes: node ids and the client ids of workers' running batches print as text."""
    if not isinstance(value, bytes):
        raise TypeError(f"{type(value).__name__} is not JSON serializable")
    return value.decode(errors="backslashreplace")


def _node_address(args: argparse.Namespace, command: str) -> tuple[str, ClusterKey | None]:
    """The node a command names (an address, or a name in --config) and the cluster key."""
    config = load_config(args.config) if args.config else ClusterConfig()
    address = config.node(args.node).address if args.config else args.node
    if not address.startswith("ipc://"):
        check_address(address, command)
    return address, find_key(args.key_file or config.key_file)


def reload(args: argparse.Namespace) -> int:
    """RELOAD to one node: 0 once it reloaded, 1 if it refused (a module fails to import) or did not answer."""
    address, key = _node_address(args, "reload")
    try:
        answer = ask(address, Reload(), Reloaded, key)
    except (TimeoutError, ProtocolError, zmq.ZMQError) as exc:
        print(f"fabric-node: the node did not reload: {exc}", file=sys.stderr)
        return 1
    if not answer.ok:
        print(f"fabric-node: {address} kept its tasks: {answer.detail}", file=sys.stderr)
        return 1
    print(f"{address}: reloaded; tasks: {answer.detail or 'none'}; its workers restart between batches")
    return 0


def stop(args: argparse.Namespace) -> int:
    """STOP to one node: 0 once it acknowledged, 1 if nothing answered."""
    address, key = _node_address(args, "stop")
    try:
        ask(address, Stop(), NodeLeaving, key)
    except (TimeoutError, ProtocolError, zmq.ZMQError) as exc:
        print(f"fabric-node: the node did not stop: {exc}", file=sys.stderr)
        return 1
    print(f"{address}: stopping")
    return 0


def keygen(args: argparse.Namespace) -> int:
    try:
        key = write_key_file(args.path)
    except OSError as exc:
        raise ConfigError(f"cannot write the key file {args.path}: {exc.strerror or exc}; "
                          "give a path in a directory that exists and you may write to") from None
    print(f"wrote {key.path}: copy it to every machine of the cluster and name it in cluster.toml "
          "([cluster] key_file) or with --key-file; keep it private")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    commands = {"start": start, "status": status, "stop": stop, "reload": reload, "keygen": keygen}
    try:
        return commands[args.command](args)
    except ConfigError as exc:
        parser.exit(2, f"fabric-node: error: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
