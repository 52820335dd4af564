"""The result cache on the embedded cluster: hits, misses, invalidation, persistence, stats."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import fabric

CALLS = []


def double(x):
    return 2 * x


def fails_on_odd(x):
    if x % 2:
        raise ValueError(f"odd {x}")
    return x


def test_second_map_hits_with_the_same_results(fx):
    fx.cache.clear()
    before = fx.cache.stats()
    first = list(fx.map(double, range(500), cache=True))
    middle = fx.cache.stats()
    second = list(fx.map(double, range(500), cache=True))
    after = fx.cache.stats()
    assert first == second == [2 * x for x in range(500)]
    assert (middle.hits - before.hits, middle.misses - before.misses) == (0, 500)
    assert (after.hits - middle.hits, after.misses - middle.misses) == (500, 0)


def logged_square(item: tuple[str, int]) -> int:
    """Squares, and appends a line to a file per computation (from any worker)."""
    path, x = item
    with open(path, "a") as log:
        log.write(f"{x}\n")
    return x * x


def test_repeated_arguments_in_a_chunk_are_computed_once(fx, tmp_path):
    log = str(tmp_path / "computed.txt")
    items = [(log, x) for x in [1, 1, 1, 2, 2, 3] * 10]
    assert list(fx.map(logged_square, items, cache=True, chunksize=100)) == [x * x for _, x in items]
    assert sorted(open(log).read().split()) == ["1", "2", "3"]
    got = []
    with pytest.raises(ZeroDivisionError):  # a failure at a repeated key fails at its first position
        for value in fx.map(lambda x: 10 // x, [5, 0, 0, 7, 0], cache=True, chunksize=100):
            got.append(value)
    assert got == [2]


def test_partial_hits_keep_order(fx):
    fx.cache.clear(double)
    list(fx.map(double, range(0, 1000, 2), cache=True))  # every even item is stored
    stats = fx.cache.stats()
    assert list(fx.map(double, range(1000), cache=True)) == [2 * x for x in range(1000)]
    assert fx.cache.stats().hits - stats.hits == 500
    assert sorted(fx.map(double, range(1000), cache=True, ordered=False)) == [2 * x for x in range(1000)]


def test_submit_and_decorator_share_the_map_keys(fx):
    fx.cache.clear(double)
    list(fx.map(double, [21], cache=True))
    stats = fx.cache.stats()
    assert fx.options(cache=True).submit(double, 21).result() == 42
    assert fx.cache.stats().hits == stats.hits + 1
    marked = fabric.cached(double)
    assert fx.submit(marked, 21).result() == 42
    assert fx.cache.stats().hits == stats.hits + 2


def test_exceptions_are_not_cached(fx):
    fx.cache.clear(fails_on_odd)
    with pytest.raises(ValueError, match="odd 1"):
        list(fx.map(fails_on_odd, range(4), cache=True))
    stats = fx.cache.stats()
    with pytest.raises(ValueError, match="odd 1"):
        fx.options(cache=True).submit(fails_on_odd, 1).result()
    assert fx.cache.stats().hits == stats.hits


def test_an_argument_without_a_stable_key_raises_naming_it(fx, tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("x")
    with open(path) as handle, pytest.raises(fabric.CacheKeyError, match="argument 0"):
        fx.options(cache=True).submit(len, handle)
    with open(path) as handle, pytest.raises(fabric.CacheKeyError, match="map item"):
        list(fx.map(len, ["ok", handle], cache=True))


def test_clear_one_function_keeps_the_others(fx):
    fx.cache.clear()
    list(fx.map(double, range(10), cache=True))
    list(fx.map(abs, range(10), cache=True))
    assert fx.cache.clear(double) == 10
    stats = fx.cache.stats()
    list(fx.map(abs, range(10), cache=True))
    list(fx.map(double, range(10), cache=True))
    after = fx.cache.stats()
    assert (after.hits - stats.hits, after.misses - stats.misses) == (10, 10)


NOTEBOOK = textwrap.dedent(
    """
    import json, sys
    import fabric

    K = 3
    def helper(x):
        return x + K
    def task(x, scale=1):
        return helper(x) * scale
    def make(offset):
        return lambda x: x + offset

    runs = {}
    with fabric.connect(workers=1) as fx:
        def run(name, fn):
            before = fx.cache.stats()
            values = list(fx.map(fn, range(20), cache=True))
            after = fx.cache.stats()
            runs[name] = [after.hits - before.hits, after.misses - before.misses, values[:3]]
        run("first", task)
        run("again", task)
        K = 5                                  # a global read two calls deep
        run("global edited", task)
        def task(x, scale=2):                  # a default edited
            return helper(x) * scale
        run("default edited", task)
        def task(x, scale=2):                  # the body edited
            return helper(x) * scale + 1
        run("body edited", task)
        run("closure 1", make(1))
        run("closure 1 again", make(1))
        run("closure 2", make(2))
        run("lambda a", lambda x: x * 10)
        run("lambda b", lambda x: x * 11)
    print(json.dumps(runs))
    """
)


def run_script(tmp_path, source: str, cache_dir) -> dict:
    script = tmp_path / "notebook.py"
    script.write_text(source)
    env_cmd = [sys.executable, str(script)]
    out = subprocess.run(env_cmd, capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "FABRIC_CACHE_DIR": str(cache_dir)})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_notebook_edits_invalidate_and_a_new_process_hits(tmp_path):
    cache_dir = tmp_path / "cache"
    first = run_script(tmp_path, NOTEBOOK, cache_dir)
    assert first["first"] == [0, 20, [3, 4, 5]]
    assert first["again"] == [20, 0, [3, 4, 5]]
    assert first["global edited"] == [0, 20, [5, 6, 7]]
    assert first["default edited"] == [0, 20, [10, 12, 14]]
    assert first["body edited"] == [0, 20, [11, 13, 15]]
    assert first["closure 1"][:2] == [0, 20] and first["closure 1 again"][:2] == [20, 0]
    assert first["closure 2"] == [0, 20, [2, 3, 4]]
    assert first["lambda b"] == [0, 20, [0, 11, 22]]
    second = run_script(tmp_path, NOTEBOOK, cache_dir)  # a new process and a new node: the shard persisted
    assert second["first"] == [20, 0, [3, 4, 5]]
    assert second["body edited"] == [20, 0, [11, 13, 15]]
