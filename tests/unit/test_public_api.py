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


def test_names_load_on_first_use_and_nodes_and_workers_never_import_client_code():
    code = (
        "import sys, fabric.node.worker, fabric.node.loop, fabric.cli, fabric.task.guard, fabric.task.fold\n"
        "client = sorted(m for m in sys.modules if m.startswith('fabric.client'))\n"
        "assert not client, client\n"
        "assert fabric.connect is sys.modules['fabric.client.executor'].connect\n"
        "from fabric import *\n"
        "assert Future is sys.modules['fabric.client.futures'].Future\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert set(fabric.__all__) <= set(dir(fabric))
