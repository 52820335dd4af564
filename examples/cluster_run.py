"""A map over the nodes a cluster file names, and what each node did.

Start the nodes first, one per machine (the repository's cluster.toml puts
two on this machine's loopback):

    fabric-node start --config cluster.toml --name alpha
    fabric-node start --config cluster.toml --name beta

then run, from any machine that reaches them:

    python examples/cluster_run.py [cluster.toml] [TASKS]

Each task counts the Collatz steps of one number; the results are checked
against a serial run of a sample, and the per-node table comes from the
nodes' heartbeats.
"""

import sys
import time

import fabric
from fabric.config import load_config

WAIT_S = 30.0  # for the nodes to be up, and for their counters to catch up


def collatz_steps(n: int) -> int:
    steps = 0
    while n > 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up waiting {WAIT_S:.0f} s for {what}")
        time.sleep(0.1)


def main(cluster_file: str = "cluster.toml", tasks: int = 500_000) -> int:
    names = {node.name for node in load_config(cluster_file).nodes}
    with fabric.connect(cluster_file) as fx:
        wait_until(lambda: names <= {n.name for n in fx.nodes()}, f"the nodes {sorted(names)}")
        done_before = {n.name: n.done for n in fx.nodes()}
        started = time.perf_counter()
        steps = list(fx.map(collatz_steps, range(1, tasks + 1)))
        elapsed = time.perf_counter() - started
        wait_until(lambda: sum(n.done - done_before.get(n.name, 0) for n in fx.nodes()) >= tasks,
                   "the nodes' counters")
        print(f"{tasks:,} tasks on {fx.workers()} workers of {len(names)} nodes in {elapsed:.2f} s")
        print(f"  {'node':<12}{'address':<26}{'workers':>8}{'tasks':>10}")
        for node in sorted(fx.nodes(), key=lambda n: n.name):
            ran = node.done - done_before.get(node.name, 0)
            print(f"  {node.name:<12}{node.control:<26}{node.workers:>8}{ran:>10,}")
    sample = range(1, tasks + 1, max(1, tasks // 1000))
    if any(steps[n - 1] != collatz_steps(n) for n in sample):
        print("MISMATCH: a result differs from the serial one")
        return 1
    print(f"OK: longest chain {max(steps)} steps, at {steps.index(max(steps)) + 1:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2], *(int(a) for a in sys.argv[2:3])))
