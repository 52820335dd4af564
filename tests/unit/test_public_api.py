"""The public names are exactly these; everything else is private."""

import concurrent.futures

import fabric


def test_exported_names():
    assert sorted(fabric.__all__) == sorted([
        "ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION", "CacheKeyError", "CacheStats", "ClosedError",
        "ConfigError", "Fabric", "FabricError", "Future", "NoNodesError", "NodeStats", "ProtocolError", "RemoteError",
        "RemoteTraceback", "SerializationError", "StoreError", "TaskTimeoutError", "WorkerCrashedError",
        "WorkerLostError", "WorkerStats", "as_completed", "cached", "connect", "wait",
    ])


def test_error_tree():
    for name in fabric.__all__:
        obj = getattr(fabric, name)
        if isinstance(obj, type) and issubclass(obj, Exception) and obj is not fabric.RemoteTraceback:
            assert issubclass(obj, fabric.FabricError), name
    assert issubclass(fabric.TaskTimeoutError, TimeoutError)
    assert issubclass(fabric.Fabric, concurrent.futures.Executor)
    assert issubclass(fabric.Future, concurrent.futures.Future)
