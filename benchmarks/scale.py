"""Scale: N loopback ``fabric-node``s of one worker each, one joining the first, a
client connected to the first (``python -m benchmarks.scale``).

For each N: the time for the client to see every node and worker, the idle cost
of membership per node (CPU of the node processes, bytes they send, both over
``--idle-s`` with the client connected and nothing to do), and the rate of 1 ms
tasks against its ideal (1,000/s per core the nodes can use).  ``--detect K``
SIGKILLs K nodes (with their workers) of the largest cluster one after another,
idle, and times until the client stops listing each; the log lines of the
client and of every node count the deaths declared of nodes that were alive.

``--netns`` runs each node, and the client, on a host of its own: a network
namespace on a bridge (``benchmarks/netns.py``), in a cluster keyed for the run;
the bytes are then what each node host's veth sent (frames, headers included).
Its rows are labelled ``<label>, netns``.

``--tree DIR`` runs the client, nodes and workers with another checkout's
``fabric`` (the tree before a change: a baseline in the same session).  Results go to ``--json``;
``--plot`` draws them.  Ports come from 20000-30000 (below the ephemeral range,
where the nodes' PUBs bind).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psutil

from . import netns
from . import workloads as wl
from .measure import timed

SIZES = (1, 2, 4, 8, 16, 32)
MS_TASKS = 2_000
HOST_PORT = 7100  # every netns host has its own address: one port for all


def low_port_addresses(count: int) -> list[str]:
    """``count`` free loopback addresses on consecutive ports from a random base in
    20000-30000: below the ephemeral range, where the nodes' own PUBs bind, so a
    port probed free here is not taken by one of them before its node binds it."""
    while True:
        base = random.randrange(20_000, 30_000 - count)
        try:
            for port in range(base, base + count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return [f"tcp://127.0.0.1:{port}" for port in range(base, base + count)]


@contextmanager
def nodes(
    count: int, log_dir: Path, hosts: netns.Hosts | None = None
) -> Iterator[tuple[list[str], list[subprocess.Popen[bytes]]]]:
    """``count`` nodes on loopback, or node i on host i + 1 of ``hosts``."""
    if hosts:
        addresses = [f"tcp://{hosts.address(i + 1)}:{HOST_PORT}" for i in range(count)]
    else:
        addresses = low_port_addresses(count)
    # Absolute paths, and the nodes run elsewhere: ``python -m`` puts its working directory
    # first on sys.path, which would import this checkout's fabric before --tree's.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(os.path.abspath(p or ".") for p in sys.path)}
    procs = []
    try:
        for i, address in enumerate(addresses):
            with open(log_dir / f"node-{count}-{i}.log", "w") as log:
                procs.append(subprocess.Popen(
                    [*(hosts.prefix(i + 1) if hosts else []), sys.executable, "-m", "fabric.cli",
                     "start", "--bind", address, "--workers", "1",
                     "--cache-dir", str(log_dir / "cache"), *(["--join", addresses[0]] if i else [])],
                    env=env, stderr=log, cwd=log_dir,
                ))
        for address in addresses:  # every node bound: both trees' clients then start alike
            _wait(lambda a=address: _listening(a), 120)
        yield addresses, procs
    finally:
        for proc in procs:
            for child in _family(proc.pid)[:-1]:
                child.kill()
            proc.kill()
            proc.wait()


def _listening(address: str) -> bool:
    host, _, port = address.removeprefix("tcp://").rpartition(":")
    with socket.socket() as probe:
        return probe.connect_ex((host, int(port))) == 0


def _family(pid: int) -> list[psutil.Process]:
    try:
        node = psutil.Process(pid)
        return [*node.children(), node]
    except psutil.Error:
        return []


def _wait(predicate, timeout_s: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)  # polling a benchmark's own condition; no test depends on it
    return True


def _sent_bytes(pids: set[int]) -> dict[object, int]:
    """Bytes each TCP connection of these processes has sent, by (local, peer)
    address (``ss -tinp``: libzmq's sends are no write() calls, so /proc's I/O
    counters do not see them)."""
    out = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True).stdout.splitlines()
    sent: dict[object, int] = {}
    for head, info in zip(out[::2], out[1::2]):
        fields = head.split()
        owner = next((int(p.split(",")[0]) for p in head.split("pid=")[1:]), None)
        if owner in pids and len(fields) >= 5:
            sent[(fields[3], fields[4])] = next(
                (int(f.split(":")[1]) for f in info.split() if f.startswith("bytes_sent:")), 0)
    return sent


def _sent_since(before: dict[object, int], after: dict[object, int]) -> int:
    """Bytes sent between two readings; a connection opened meanwhile counts whole,
    one closed meanwhile is lost (idle clusters keep their connections)."""
    return sum(n - before.get(key, 0) for key, n in after.items() if n >= before.get(key, 0))


def _idle_cost(
    procs: list[subprocess.Popen[bytes]], idle_s: float, reading: Callable[[], dict[object, int]]
) -> tuple[float, float]:
    """CPU % of one core and bytes/s sent (by ``reading``'s counters), per node process, over ``idle_s``."""
    watched = [psutil.Process(p.pid) for p in procs]
    before = [p.cpu_times() for p in watched]
    counted = reading()
    started = time.monotonic()
    time.sleep(idle_s)  # the measurement window: the cluster is idle meanwhile
    elapsed = time.monotonic() - started
    sent = _sent_since(counted, reading())
    cpu = 0.0
    for p, times in zip(watched, before):
        now = p.cpu_times()
        cpu += (now.user + now.system - times.user - times.system) / elapsed * 100
    return max(0.0, cpu / len(watched)), sent / elapsed / len(watched)


def measure(count: int, idle_s: float, log_dir: Path, hosts: netns.Hosts | None = None) -> dict[str, float]:
    """The figures at ``count`` nodes; on ``hosts``, bytes are the node hosts' veth frames
    (headers included), on loopback the payload of the nodes' TCP connections."""
    import fabric

    with nodes(count, log_dir, hosts) as (addresses, procs):
        pids = {p.pid for p in procs}
        reading = (lambda: hosts.sent_bytes(range(1, count + 1))) if hosts else (lambda: _sent_bytes(pids))
        started = time.monotonic()
        with fabric.connect(addresses[0]) as fx:
            if not _wait(lambda: len(fx.nodes()) == count and fx.workers() >= count, 120):  # before: a phantom
                raise RuntimeError(f"{count} nodes: the client saw {len(fx.nodes())} nodes, {fx.workers()} workers")
            see_all_s = time.monotonic() - started
            cpu, written = _idle_cost(procs, idle_s, reading)
            list(fx.map(wl.spin_cpu, [0.001] * 200))  # warm: functions shipped, batch sizes measured
            rate = MS_TASKS / timed(lambda: list(fx.map(wl.spin_cpu, [0.001] * MS_TASKS)))
    ideal = 1000.0 * min(count, os.cpu_count() or 1)
    return {"nodes": count, "see_all_s": see_all_s, "idle_cpu_percent_per_node": cpu,
            "sent_bytes_per_s_per_node": written, "ms_tasks_per_s": rate, "ideal_per_s": ideal}


def detection(count: int, kills: int, log_dir: Path, hosts: netns.Hosts | None = None) -> dict[str, object]:
    """SIGKILL ``kills`` nodes of ``count``, one at a time, idle; seconds until the client drops each."""
    import fabric

    with nodes(count, log_dir, hosts) as (addresses, procs):
        with fabric.connect(addresses[0]) as fx:
            if not _wait(lambda: len(fx.nodes()) == count, 120):
                raise RuntimeError("not every node was seen")
            times = []
            for proc, address in list(zip(procs, addresses))[1:1 + kills]:
                family = _family(proc.pid)
                for process in family:
                    process.kill()
                killed = time.monotonic()
                _wait(lambda a=address: all(n.control != a for n in fx.nodes()), 60)
                times.append(time.monotonic() - killed)
                _wait(lambda: False, 2.0)  # let the survivors settle before the next kill
    return {"nodes": count, "detection_s": times, "median_s": statistics.median(times)}


def false_deaths(log_dir: Path, killed: set[str]) -> int:
    """Deaths declared, in every node's log, of nodes that were not killed."""
    count = 0
    for path in log_dir.glob("node-*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if "declared dead" in line and not any(k in line for k in killed):
                count += 1
    return count


def idle_run(count: int, seconds: float, log_dir: Path, hosts: netns.Hosts | None = None) -> dict[str, object]:
    """``count`` nodes and a client, idle for ``seconds``: deaths declared by anyone."""
    import fabric

    handler = _Counter()
    logging.getLogger("fabric.client").addHandler(handler)
    with nodes(count, log_dir, hosts) as (addresses, _):
        with fabric.connect(addresses[0]) as fx:
            if not _wait(lambda: len(fx.nodes()) == count, 120):
                raise RuntimeError("not every node was seen")
            time.sleep(seconds)  # the idle run itself
            seen = len(fx.nodes())
    logging.getLogger("fabric.client").removeHandler(handler)
    return {"nodes": count, "idle_s": seconds, "client_false_deaths": handler.deaths,
            "node_false_deaths": false_deaths(log_dir, set()), "seen_at_end": seen}


class _Counter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.deaths = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.deaths += "declared dead" in record.getMessage()


def plot(results: dict[str, list[dict[str, float]]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    panels = [("see_all_s", "client sees every node (s)"), ("idle_cpu_percent_per_node", "idle CPU per node (% core)"),
              ("sent_bytes_per_s_per_node", "bytes/s sent per node, idle"), ("ms_tasks_per_s", "1 ms tasks/s")]
    fig, axes = pyplot.subplots(1, len(panels), figsize=(18, 4.2))
    for ax, (key, title) in zip(axes, panels):
        for label, rows in results.items():
            ax.plot([r["nodes"] for r in rows], [r[key] for r in rows], "o-", label=label)
        if key == "ms_tasks_per_s":
            rows = next(iter(results.values()))
            ax.plot([r["nodes"] for r in rows], [r["ideal_per_s"] for r in rows], "k--", label="ideal")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("nodes (1 worker each, one 2-core machine)")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def use_tree(tree: Path) -> None:
    """Import fabric, here and in every node and worker started, from ``tree``;
    the benchmark's own modules still come from this checkout."""
    shim = Path(tempfile.mkdtemp(prefix="fabric-tree-"))
    (shim / "fabric").symlink_to((tree / "fabric").resolve())
    sys.path.insert(0, str(shim))
    if "fabric" in sys.modules:
        raise RuntimeError("fabric was imported before --tree took effect")


def table(saved: dict[str, dict[str, list[dict[str, float]]]]) -> str:
    """The sizes' figures as a Markdown table, one row per tree and size."""
    lines = ["| tree | nodes | client sees all (s) | idle CPU per node (% of a core) | bytes/s sent per node, idle "
             "| 1 ms tasks/s | of ideal |", "|---|---|---|---|---|---|---|"]
    for label, rows in saved["sizes"].items():
        for r in rows:
            lines.append(f"| {label} | {r['nodes']} | {r['see_all_s']:.1f} | {r['idle_cpu_percent_per_node']:.2f} | "
                         f"{r['sent_bytes_per_s_per_node']:,.0f} | {r['ms_tasks_per_s']:,.0f} | "
                         f"{r['ms_tasks_per_s'] / r['ideal_per_s']:.0%} |")
    return "\n".join(lines)


@contextmanager
def on_hosts(count: int, log_dir: Path) -> Iterator[netns.Hosts]:
    """This process (the client) on a host of its own, beside ``count`` hosts for nodes, all
    members of a cluster keyed for the run: nodes bind non-loopback addresses only with a key."""
    from fabric.wire.security import KEY_FILE_ENV, write_key_file

    reason = netns.unavailable()
    if reason:
        raise SystemExit(f"--netns: {reason}")
    write_key_file(log_dir / "cluster.key")
    os.environ[KEY_FILE_ENV] = str(log_dir / "cluster.key")  # read by the client and inherited by every node
    with netns.hosts(count + 1) as hosts:
        hosts.enter(0)  # before any thread starts: libzmq's I/O threads inherit the namespace
        yield hosts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--idle-s", type=float, default=10.0, help="idle window per size (s)")
    parser.add_argument("--detect", type=int, default=0, help="nodes SIGKILLed at the largest size")
    parser.add_argument("--idle-run", type=float, default=0.0, help="seconds of an idle run at the largest size")
    parser.add_argument("--label", default="gossip")
    parser.add_argument("--json", default="benchmarks/out/scale.json")
    parser.add_argument("--plot", metavar="OUT.png")
    parser.add_argument("--markdown", action="store_true", help="print every tree's figures as a table at the end")
    parser.add_argument("--tree", help="run fabric from this checkout (its fabric/ only), e.g. the tree before")
    parser.add_argument("--netns", action="store_true",
                        help="each node, and the client, on a host of its own (a network namespace; needs root)")
    args = parser.parse_args(argv)
    if args.tree:
        use_tree(Path(args.tree))
    sizes = [int(n) for n in args.sizes.split(",")]
    label = f"{args.label}, netns" if args.netns else args.label
    out = Path(args.json).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    saved = json.loads(out.read_text()) if out.exists() else {}
    with tempfile.TemporaryDirectory(prefix="fabric-scale-") as tmp, ExitStack() as stack:
        log_dir = Path(tmp)
        hosts = stack.enter_context(on_hosts(max(sizes), log_dir)) if args.netns else None
        rows = []
        for count in sizes:
            rows.append(measure(count, args.idle_s, log_dir, hosts))
            print(json.dumps(rows[-1]), flush=True)
        kept = {r["nodes"]: r for r in saved.setdefault("sizes", {}).get(label, [])}  # runs interleave by size
        kept.update({r["nodes"]: r for r in rows})
        saved["sizes"][label] = [kept[n] for n in sorted(kept)]
        if args.detect:
            saved.setdefault("detection", {})[label] = detection(max(sizes), args.detect, log_dir, hosts)
            print(json.dumps(saved["detection"][label]), flush=True)
        if args.idle_run:
            saved.setdefault("idle_run", {})[label] = idle_run(max(sizes), args.idle_run, log_dir, hosts)
            print(json.dumps(saved["idle_run"][label]), flush=True)
    out.write_text(json.dumps(saved, indent=1))
    if args.plot:
        plot(saved["sizes"], args.plot)
    if args.markdown:
        print(table(saved))
    return 0


if __name__ == "__main__":
    sys.exit(main())
