"""Cache keys: stable across processes, sensitive to every edit, exact about types."""

import dataclasses
import math
import os.path
import subprocess
import sys
import threading

import pytest
from notebook_cells import cell

from fabric.calls.guard import Guarded
from fabric.client.cache_key import MAX_DEPTH, call_key, function_digest, item_keys
from fabric.errors import CacheKeyError

BASE = "K = 3\ndef helper(x):\n    return x + K\ndef f(x, scale=2):\n    return helper(x) * scale\n"


def digest_of(source, name="f"):
    return function_digest(cell(source)[name])


def test_same_source_same_digest_and_every_edit_changes_it():
    digests = {
        "base": digest_of(BASE),
        "global": digest_of(BASE.replace("K = 3", "K = 5")),
        "default": digest_of(BASE.replace("scale=2", "scale=3")),
        "body": digest_of(BASE.replace("* scale", "* scale + 1")),
        "helper body": digest_of(BASE.replace("x + K", "x - K")),
    }
    assert digest_of(BASE) == digests["base"]
    assert len(set(digests.values())) == len(digests)


def test_closure_values_and_lambdas():
    make = cell("def make(n):\n    return lambda x: x + n\n")["make"]
    assert function_digest(make(1)) == function_digest(make(1))
    assert function_digest(make(1)) != function_digest(make(2))
    assert function_digest(lambda x: x + 1) != function_digest(lambda x: x + 2)


def test_functions_with_the_same_name_differ_by_body():
    assert digest_of("def f(x):\n    return x\n") != digest_of("def f(x):\n    return -x\n")


def test_recursive_functions_have_a_digest_that_follows_their_body():
    source = "def fact(n):\n    return 1 if n < 2 else n * fact(n - 1)\n"
    assert digest_of(source, "fact") == digest_of(source, "fact")
    assert digest_of(source, "fact") != digest_of(source.replace("n < 2", "n < 3"), "fact")


def test_importable_functions_by_name_and_options_do_not_matter():
    assert function_digest(os.path.join) == function_digest(os.path.join)
    assert function_digest(os.path.join) != function_digest(os.path.split)
    f = cell(BASE)["f"]
    assert function_digest(Guarded(f, (), 5, 2.0)) == function_digest(f)


SCRIPT = BASE + (
    "from fabric.client.cache_key import function_digest, call_key\n"
    "print(call_key(function_digest(f), (1, 'a'), {'b': [1.5]}).hex())\n"
)


def outputs_of_two_runs(tmp_path, source):
    """What ``source`` prints, run as a script twice, each with its own hash seed."""
    script = tmp_path / "s.py"
    script.write_text(source)
    return {subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True).stdout
            for _ in range(2)}


def test_stable_across_processes(tmp_path):
    here = call_key(digest_of(BASE), (1, "a"), {"b": [1.5]}).hex()
    assert outputs_of_two_runs(tmp_path, SCRIPT) == {here + "\n"}


D = function_digest(abs)


def key(*args, **kwargs):
    return call_key(D, args, kwargs)


def test_exact_types_and_unordered_containers():
    assert len({key(1), key(1.0), key(True), key("1"), key(b"1"), key((1,)), key([1]), key(None)}) == 8
    assert key(0.0) != key(-0.0) and key(math.nan) == key(math.nan)
    assert key({"a": 1, "b": 2}) == key({"b": 2, "a": 1})
    assert key({1, 2, 3}) == key({3, 1, 2}) and key({1, 2}) != key(frozenset({1, 2}))
    assert key(1, b=2) == key(1, **{"b": 2}) and key(1, b=2) != key(1, 2)
    assert key([1 + 2j, 3.0]) != key([1.0, 2 + 3j]) and key(1 + 2j) == key(complex(1, 2))
    assert key(slice(1, 2)) != key((1, 2, None)) and key(slice(1, 2)) == key(slice(1, 2, None))


@dataclasses.dataclass
class Point:
    x: int
    y: int


def test_dataclasses_and_numpy():
    assert key(Point(1, 2)) == key(Point(1, 2)) and key(Point(1, 2)) != key(Point(2, 1))
    np = pytest.importorskip("numpy")
    assert key(np.arange(5)) == key(np.arange(5))
    assert key(np.arange(5)) != key(np.arange(5.0)) and key(np.zeros((2, 3))) != key(np.zeros((3, 2)))
    assert key(np.float64(1.5)) != key(1.5)


def test_unstable_arguments_raise_naming_them(tmp_path):
    with open(tmp_path / "f", "w") as handle, pytest.raises(CacheKeyError, match="argument 0"):
        key(handle)
    with pytest.raises(CacheKeyError, match="argument 'lock'"):
        key(lock=threading.Lock())
    with pytest.raises(CacheKeyError, match="map item 1"):
        item_keys(D, [1, threading.Lock()], star=False)


class Plain:
    pass


def cyclic_values():
    as_list, as_dict, as_object, through_a_dict = [1], {}, Plain(), []
    as_list.append(as_list)
    as_dict["self"] = as_dict
    as_object.me = as_object
    through_a_dict.append({"up": through_a_dict})
    return {"list": as_list, "dict": as_dict, "object": as_object, "through a dict": through_a_dict}


@pytest.mark.parametrize("name", list(cyclic_values()))
def test_a_value_containing_itself_has_no_key(name):
    with pytest.raises(CacheKeyError, match="that contains itself"):
        key(cyclic_values()[name])


def test_nesting_deeper_than_the_limit_has_no_key_and_shallower_has_one():
    def nested(depth, wrap):
        value = 0
        for _ in range(depth):
            value = wrap(value)
        return value

    for wrap in (lambda v: [v], lambda v: (v,), lambda v: {"k": v}):
        assert key(nested(MAX_DEPTH, wrap))
        with pytest.raises(CacheKeyError, match=f"nested more than {MAX_DEPTH} levels deep"):
            key(nested(MAX_DEPTH + 2, wrap))


def test_a_value_repeated_side_by_side_is_no_cycle():
    shared = [1, 2]
    assert key([shared, shared]) == key([[1, 2], [1, 2]])


def test_unstable_global_raises_naming_it():
    namespace = cell("def f(x):\n    return LOCK\n")
    namespace["LOCK"] = threading.Lock()
    with pytest.raises(CacheKeyError, match="LOCK"):
        function_digest(namespace["f"])


def test_item_keys_match_call_key():
    assert item_keys(D, [1, "a"], star=False) == [key(1), key("a")]
    assert item_keys(D, [(1, 2), ("a", None)], star=True) == [key(1, 2), key("a", None)]


COLOR = "import enum\nclass Color(enum.Enum):\n    RED = 1\n    BLUE = 2\n"
NAMES_ITS_CLASS = "class Node:\n    def copy(self):\n        return Node()\n"


def test_notebook_enum_members_and_classes_naming_themselves_have_keys():
    color = cell(COLOR)["Color"]
    assert key(color.RED) == key(cell(COLOR)["Color"].RED) != key(color.BLUE)
    assert key(color.RED) != key(cell(COLOR.replace("RED = 1", "RED = 3"))["Color"].RED)
    node = cell(NAMES_ITS_CLASS)["Node"]
    assert key(node()) == key(cell(NAMES_ITS_CLASS)["Node"]())
    assert key(node()) != key(cell(NAMES_ITS_CLASS.replace("Node()", "Node() or 1"))["Node"]())


def test_notebook_enum_keys_are_stable_across_processes(tmp_path):
    script = COLOR + (
        "from fabric.client.cache_key import function_digest, call_key\n"
        "print(*(call_key(function_digest(abs), (c,), {}).hex() for c in (Color.RED, Color.BLUE)))\n"
    )
    color = cell(COLOR)["Color"]
    assert outputs_of_two_runs(tmp_path, script) == {f"{key(color.RED).hex()} {key(color.BLUE).hex()}\n"}
