"""fabric: run a Python function over a lot of data on every core of one machine, then of many.

The import name is ``fabric``; the distribution is ``zmq-fabric``.

Names load on first use (PEP 562), so node and worker processes, which import
``fabric.node`` or ``fabric.worker`` through this package, do not pay for the
client's modules at start-up.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    CacheKeyError,
    ClosedError,
    FabricError,
    NoNodesError,
    ProtocolError,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    StoreError,
    TaskTimeoutError,
    WorkerCrashedError,
    WorkerLostError,
)

if TYPE_CHECKING:
    from .cache import CacheStats, cached
    from .client import Fabric, connect
    from .errors import ConfigError
    from .futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, Future, as_completed, wait
    from .heartbeat import NodeStats, WorkerStats

__version__ = "0.1.0"

_LAZY = {
    "CacheStats": "cache", "cached": "cache",
    "Fabric": "client", "connect": "client",
    "ConfigError": "errors",
    "ALL_COMPLETED": "futures", "FIRST_COMPLETED": "futures", "FIRST_EXCEPTION": "futures", "Future": "futures",
    "as_completed": "futures", "wait": "futures",
    "NodeStats": "heartbeat", "WorkerStats": "heartbeat",
}

__all__ = [
    "ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION", "CacheKeyError", "CacheStats", "ClosedError",
    "ConfigError", "Fabric", "FabricError", "Future", "NoNodesError", "NodeStats", "ProtocolError", "RemoteError",
    "RemoteTraceback", "SerializationError", "StoreError", "TaskTimeoutError", "WorkerCrashedError",
    "WorkerLostError", "WorkerStats", "as_completed", "cached", "connect", "wait",
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
