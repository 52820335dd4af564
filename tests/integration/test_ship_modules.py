"""connect(ship_modules=...): a helper module only the client has reaches a node by
value (and its edits with it); ``False`` sends it by reference, ``[...]`` forces
a module that looks installed by value."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import cloudpickle
import pytest
from helpers import free_address

import fabric
from fabric.client import shipping

FAST = {"heartbeat_interval_s": 0.2, "liveness_s": 1.0}
HELPER = "fabric_test_client_helper"
INSTALLED = "fabric_test_installed_helper"


@pytest.fixture
def remote(start_node) -> str:
    """A node started before the client's helper folders exist on its path."""
    address = free_address()
    start_node(address)
    return address


@pytest.fixture
def client_modules(tmp_path: Path, monkeypatch):
    """A helper beside the script, and one in a folder that looks like site-packages;
    the shipping settings are restored afterwards."""
    beside = tmp_path / "project"
    looks_installed = tmp_path / "lib" / "site-packages"
    for folder, name in ((beside, HELPER), (looks_installed, INSTALLED)):
        folder.mkdir(parents=True)
        (folder / f"{name}.py").write_text("def tag(x):\n    return ('v1', x)\n")
        monkeypatch.syspath_prepend(str(folder))
    yield importlib.import_module(HELPER), importlib.import_module(INSTALLED), beside / f"{HELPER}.py"
    shipping.ship_modules_by_value(True)
    for name in (HELPER, INSTALLED):
        shipping._forced.discard(name)
        if name in cloudpickle.list_registry_pickle_by_value():
            cloudpickle.unregister_pickle_by_value(sys.modules[name])
        sys.modules.pop(name, None)
    shipping.user_module.cache_clear()


def test_a_helper_only_the_client_has_runs_on_a_node_and_its_edits_follow(remote, client_modules):
    helper, _, path = client_modules
    with fabric.connect(remote, **FAST) as fx:
        assert fx.submit(helper.tag, 1).result(timeout=30) == ("v1", 1)
        path.write_text("def tag(x):\n    return ('v2', x * 10)\n")
        importlib.invalidate_caches()
        importlib.reload(helper)
        assert list(fx.map(helper.tag, range(3))) == [("v2", 0), ("v2", 10), ("v2", 20)]


def test_ship_modules_false_sends_by_reference_and_a_list_forces_by_value(remote, client_modules):
    helper, installed, _ = client_modules
    with fabric.connect(remote, **FAST) as fx:
        with pytest.raises(ModuleNotFoundError, match=INSTALLED):  # looks installed: by reference
            fx.submit(installed.tag, 1).result(timeout=30)
    with fabric.connect(remote, **FAST, ship_modules=[INSTALLED]) as fx:
        assert fx.submit(installed.tag, 2).result(timeout=30) == ("v1", 2)
    shipping._forced.discard(INSTALLED)
    cloudpickle.unregister_pickle_by_value(sys.modules[INSTALLED])
    with fabric.connect(remote, **FAST, ship_modules=False) as fx:
        with pytest.raises(ModuleNotFoundError, match=HELPER):
            fx.submit(helper.tag, 3).result(timeout=30)
