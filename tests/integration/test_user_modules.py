"""A module of the user's own (``mymod.py`` beside the script) goes by value:
after an edit and ``importlib.reload`` every worker runs the new code, never a
mix, and cached results of the old code are not served for the new."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
from notebook_cells import cell

from fabric.client import shipping
from fabric.client.cache_key import function_digest
from fabric.client.shipping import pickled_by_value

MODULE = "fabric_test_user_module"
OLD = "OFFSET = 1000\n\n\ndef shift(x):\n    return x + OFFSET\n"
NEW = "OFFSET = 1\n\n\ndef shift(x):\n    return helper(x) + OFFSET\n\n\ndef helper(x):\n    return 2 * x\n"


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """Writes the module beside a pretend script and imports it; returns (module, edit)."""
    path = tmp_path / f"{MODULE}.py"
    path.write_text(OLD)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    module = importlib.import_module(MODULE)

    def edit(source: str) -> None:
        path.write_text(source)  # another size than OLD: the cached bytecode is not reused
        importlib.invalidate_caches()
        importlib.reload(module)

    yield module, edit
    sys.modules.pop(MODULE, None)


def digest_in_a_new_process(directory) -> str:
    script = f"from fabric.client.cache_key import function_digest\nimport {MODULE}\n" \
             f"print(function_digest({MODULE}.shift).hex())\n"
    return subprocess.run([sys.executable, "-c", script], cwd=directory, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_an_edited_reloaded_user_module_runs_new_code_on_every_worker_and_misses_the_cache(fx, user_module, tmp_path):
    module, edit = user_module
    assert pickled_by_value(module.shift)
    old_key = function_digest(module.shift)
    assert list(fx.map(module.shift, range(40), chunksize=1, cache=True)) == [x + 1000 for x in range(40)]
    edit(NEW)
    new_key = function_digest(module.shift)
    assert new_key != old_key
    before = fx.cache.stats()
    assert list(fx.map(module.shift, range(40), chunksize=1, cache=True)) == [2 * x + 1 for x in range(40)]
    assert list(fx.map(module.shift, range(40), chunksize=1)) == [2 * x + 1 for x in range(40)]
    assert fx.cache.stats().hits == before.hits
    assert digest_in_a_new_process(tmp_path) == new_key.hex()


def test_a_function_reading_a_user_module_as_a_global_sees_its_reload(fx, user_module):
    module, edit = user_module
    via_module = cell(f"import {MODULE}\ndef via_module(x):\n    return {MODULE}.shift(x)\n")["via_module"]
    old_key = function_digest(via_module)
    assert fx.submit(via_module, 1).result() == 1001
    edit(NEW)
    assert function_digest(via_module) != old_key
    assert fx.submit(via_module, 1).result() == 3


def test_installed_and_standard_modules_still_go_by_reference():
    import json

    import numpy

    import fabric
    assert not any(pickled_by_value(fn) for fn in (json.dumps, numpy.sum, fabric.connect))


@pytest.fixture
def nothing_installed(monkeypatch):
    """As if no distribution were installed: fabric imported from its source tree."""
    monkeypatch.setattr(shipping, "installed_distributions", lambda: {})
    shipping.user_module.cache_clear()
    yield
    shipping.user_module.cache_clear()


def test_fabric_goes_by_reference_even_from_a_source_tree(nothing_installed):
    import fabric.calls.guard

    assert not pickled_by_value(fabric.calls.guard.Guarded)
    assert pickled_by_value(digest_in_a_new_process)  # this test module, likewise not installed, is the user's
