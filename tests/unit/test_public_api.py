"""The public names are exactly these; everything else is private."""

import concurrent.futures
import subprocess
import sys

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


def test_names_load_on_first_use_and_workers_skip_the_client():
    code = (
        "import sys, fabric.worker, fabric.node\n"
        "assert 'fabric.client' not in sys.modules and 'fabric.cache' not in sys.modules, sorted(sys.modules)\n"
        "assert fabric.connect is sys.modules['fabric.client'].connect\n"
        "from fabric import *\n"
        "assert Future is sys.modules['fabric.futures'].Future\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert set(fabric.__all__) <= set(dir(fabric))
