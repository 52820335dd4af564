"""The initializer's assigned globals, found in its code and handed to functions of
its module that arrive later with a copy of their own."""

from __future__ import annotations

import types

from fabric.calls import setup


def test_the_globals_an_initializer_assigns_are_found_in_nested_code_too():
    source = "def init():\n    global A\n    A = 1\n    def inner():\n        global B\n        B = 2\n    inner()\n"
    namespace: dict[str, object] = {"__name__": "user_code"}
    exec(compile(source, "<init>", "exec"), namespace)  # noqa: S102 - the test's own source
    assert setup.stored_globals(namespace["init"].__code__) == {"A", "B"}


def test_a_later_function_of_the_module_gets_them_and_one_by_reference_is_left_alone(monkeypatch):
    monkeypatch.setattr(setup, "SETUP_GLOBALS", {})
    init_globals = {"__name__": "user_code", "MODEL": None}
    exec("def init():\n    global MODEL\n    MODEL = 'loaded'\n", init_globals)  # noqa: S102
    setup.Setup(init_globals["init"])()
    copy = {"__name__": "user_code", "MODEL": None}  # what cloudpickle gives a by-value task: its own copy
    exec("def task():\n    return MODEL\n", copy)  # noqa: S102
    assert setup.with_setup_globals(copy["task"])() == "loaded"
    elsewhere = {"__name__": "other_module", "MODEL": None}
    exec("def task():\n    return MODEL\n", elsewhere)  # noqa: S102
    assert setup.with_setup_globals(elsewhere["task"])() is None
    assert setup.with_setup_globals(types.SimpleNamespace) is types.SimpleNamespace  # no globals: unchanged
