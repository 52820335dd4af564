"""``python -m fabric.node``: the embedded node that ``fabric.connect()`` starts.

The client (:mod:`fabric.client.embedded`) writes the node's
:class:`~fabric.config.NodeSettings` as JSON to this process's stdin; the node
binds, prints its control endpoint on stdout (the client waits for that line),
points its descriptors 1 and 2 at its log file (its workers' already are), so
that nothing it writes waits in a pipe, and runs until its owner exits or says
SHUTDOWN.  A daemon is started with
``fabric-node start`` instead (:mod:`fabric.cli`).
"""

from __future__ import annotations

import os
import sys

from ..config import NodeSettings
from ..errors import ConfigError
from . import processes
from .loop import Node


def main() -> int:
    processes.configure_logging("WARNING")
    try:
        node = Node(NodeSettings.from_json(sys.stdin.read(), "the embedded node's settings"))
    except ConfigError as exc:
        print(f"fabric embedded node: error: {exc}", file=sys.stderr)
        return 2
    node.handle_signals()
    print(node.endpoint, flush=True)
    for fd in (1, 2):
        os.dup2(node.log_fd, fd)
    node.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
