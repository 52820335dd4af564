"""fabric: run a Python function over a lot of data on every core of one machine, then of many.

The import name is ``fabric``; the distribution is ``zmq-fabric``.
"""

from .cache import CacheStats, cached
from .client import Fabric, connect
from .config import ConfigError
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
from .futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, Future, as_completed, wait
from .heartbeat import NodeStats, WorkerStats

__version__ = "0.1.0"

__all__ = [
    "CacheKeyError",
    "CacheStats",
    "StoreError",
    "cached",
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "ClosedError",
    "ConfigError",
    "Fabric",
    "FabricError",
    "Future",
    "NoNodesError",
    "NodeStats",
    "ProtocolError",
    "RemoteError",
    "RemoteTraceback",
    "SerializationError",
    "TaskTimeoutError",
    "WorkerCrashedError",
    "WorkerLostError",
    "WorkerStats",
    "as_completed",
    "connect",
    "wait",
]
