"""The public names are exactly these; everything else is private."""

import concurrent.futures
import dataclasses
import subprocess
import sys
import types
import typing

import fabric


def test_exported_names():
    assert sorted(fabric.__all__) == sorted([
        "ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION", "AuthenticationError", "BatchInfo", "CacheKeyError",
        "CacheStats", "Candidate", "ClosedError", "ConfigError", "Fabric", "FabricCache", "FabricError",
        "FabricStatistics", "FabricView", "Future", "NoNodesError", "NodeStats", "ObjectInfo", "ObjectLostError",
        "Placement", "Ref", "RemoteError", "RemoteTraceback", "SerializationError", "StoreError", "TaskOptions",
        "TaskTimeoutError", "UnknownObjectError", "UnknownTaskError", "WorkerCrashedError", "WorkerInfo",
        "WorkerLostError", "WorkerStats", "as_completed", "cached", "connect", "current_worker", "progress", "task",
        "wait",
    ])
    for name in fabric.__all__:
        assert getattr(fabric, name) is not None, name


def test_fabric_task_is_the_decorator_function_and_no_package_shadows_it():
    import fabric.calls.registry  # the decorator's module, imported: fabric.task is still the function

    assert isinstance(fabric.task, types.FunctionType) and fabric.task is fabric.calls.registry.task

    @fabric.task
    def plain(x):
        return x

    @fabric.task(name="wc")
    def counted(x):
        return x

    assert plain.__fabric_task__ == "plain" and counted.__fabric_task__ == "wc"
    assert issubclass(fabric.UnknownTaskError, fabric.FabricError) and issubclass(fabric.UnknownTaskError, LookupError)
    assert fabric.current_worker() is None  # outside a task


def test_protocol_errors_stay_inside():
    # A malformed message is dropped and counted (statistics().malformed); no user call raises it.
    assert not hasattr(fabric, "ProtocolError")
    assert issubclass(fabric.errors.ProtocolError, fabric.FabricError)


def test_what_users_are_handed_is_exported_and_documented():
    for name in ("FabricView", "TaskOptions", "FabricCache", "FabricStatistics", "CacheStats", "Ref", "ObjectInfo"):
        assert getattr(fabric, name).__doc__, name
    assert issubclass(fabric.FabricView, fabric.client.submission.TaskAPI)


def test_statistics_is_one_frozen_record_whose_parts_the_shortcuts_return():
    fields = {f.name: f.type for f in dataclasses.fields(fabric.FabricStatistics)}
    assert fields == {
        "nodes": "tuple[NodeStats, ...]", "workers": "int", "cache": "CacheStats", "duplicates": "int",
        "malformed": "int", "refused_workers": "int", "recomputed": "int",
    }
    assert fabric.FabricStatistics.__dataclass_params__.frozen
    assert fabric.CacheStats.__dataclass_params__.frozen
    hints = {name: typing.get_type_hints(method)["return"] for name, method in [
        ("statistics", fabric.Fabric.statistics), ("workers", fabric.Fabric.workers),
        ("nodes", fabric.Fabric.nodes), ("cache", fabric.FabricCache.stats),
    ]}
    assert hints == {
        "statistics": fabric.FabricStatistics, "workers": int, "nodes": tuple[fabric.NodeStats, ...],
        "cache": fabric.CacheStats,
    }


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
        "import sys, types, fabric.node.worker, fabric.node.loop, fabric.cli, fabric.calls.guard, fabric.calls.fold\n"
        "client = sorted(m for m in sys.modules if m.startswith('fabric.client'))\n"
        "assert not client, client\n"
        "assert isinstance(fabric.task, types.FunctionType), fabric.task\n"
        "assert fabric.connect is sys.modules['fabric.client.executor'].connect\n"
        "from fabric import *\n"
        "assert Future is sys.modules['fabric.client.futures'].Future\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert set(fabric.__all__) <= set(dir(fabric))
