"""fabric: run a Python function over a lot of data on every core of one machine, then of many.

The import name is ``fabric``; the distribution is ``zmq-fabric``.

Names load on first use (PEP 562), so node and worker processes, which import
``fabric.node`` through this package, do not pay for the client's modules at
start-up.  The layout follows the processes: ``fabric.client`` runs in the
caller's process, ``fabric.node`` in node and worker processes, ``fabric.wire``,
``fabric.cluster`` and ``fabric.calls`` in both.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    CacheKeyError,
    ClosedError,
    FabricError,
    NoNodesError,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    StoreError,
    TaskTimeoutError,
    UnknownTaskError,
    WorkerCrashedError,
    WorkerLostError,
)

if TYPE_CHECKING:
    from .calls.context import WorkerInfo, current_worker
    from .calls.registry import task
    from .client.cache import FabricCache, cached
    from .client.executor import Fabric, connect
    from .client.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, Future, as_completed, wait
    from .client.options import TaskOptions
    from .client.placement import BatchInfo, Candidate, Placement
    from .client.progress import progress
    from .client.statistics import CacheStats, FabricStatistics
    from .client.submission import FabricView
    from .cluster.stats import NodeStats, WorkerStats
    from .errors import AuthenticationError, ConfigError

__version__ = "0.1.0"

_LAZY = {
    "FabricCache": "client.cache", "cached": "client.cache",
    "Fabric": "client.executor", "connect": "client.executor",
    "AuthenticationError": "errors", "ConfigError": "errors",
    "ALL_COMPLETED": "client.futures", "FIRST_COMPLETED": "client.futures", "FIRST_EXCEPTION": "client.futures",
    "Future": "client.futures", "as_completed": "client.futures", "wait": "client.futures",
    "TaskOptions": "client.options",
    "BatchInfo": "client.placement", "Candidate": "client.placement", "Placement": "client.placement",
    "WorkerInfo": "calls.context", "current_worker": "calls.context", "task": "calls.registry",
    "progress": "client.progress",
    "CacheStats": "client.statistics", "FabricStatistics": "client.statistics",
    "FabricView": "client.submission",
    "NodeStats": "cluster.stats", "WorkerStats": "cluster.stats",
}

__all__ = [
    "ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION", "AuthenticationError", "BatchInfo", "CacheKeyError",
    "CacheStats", "Candidate", "ClosedError", "ConfigError", "Fabric", "FabricCache", "FabricError",
    "FabricStatistics", "FabricView", "Future", "NoNodesError", "NodeStats", "Placement", "RemoteError",
    "RemoteTraceback", "SerializationError", "StoreError", "TaskOptions", "TaskTimeoutError", "UnknownTaskError",
    "WorkerCrashedError", "WorkerInfo", "WorkerLostError", "WorkerStats", "as_completed", "cached", "connect",
    "current_worker", "progress", "task", "wait",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fabric' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
