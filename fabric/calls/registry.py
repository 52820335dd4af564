"""Tasks defined on the nodes: ``@fabric.task`` and the registry a node and its workers build.

A node names its task modules (``fabric-node start --tasks mypkg.jobs`` or
``[[node]] tasks = ["mypkg.jobs"]``); the node imports them to publish the
names and a digest of each module's source in its heartbeats, and each worker
imports them to run the tasks::

    mypkg/jobs.py: @fabric.task def wordcount(path): ...
    node:   load(modules) ─► names + source digests ─► heartbeat ─► client: fx.tasks(), placement
    worker: load(modules) ─► {b"task:wordcount": fn} ─► a batch whose digest is b"task:wordcount" runs it

A client calls a task by its name wherever it takes a function, without
importing or shipping it.  ``fabric-node reload`` (or SIGHUP) imports the
modules again, and the node restarts its workers between batches.
"""

from __future__ import annotations

import hashlib
import importlib
import sys
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

F = TypeVar("F", bound=Callable[..., Any])
TASK_ATTRIBUTE = "__fabric_task__"
NAMED_PREFIX = b"task:"  # the digest a client sends for a task called by name


@overload
def task(fn: F, /) -> F: ...
@overload
def task(fn: None = None, /, *, name: str | None = None) -> Callable[[F], F]: ...
def task(fn: F | None = None, /, *, name: str | None = None) -> F | Callable[[F], F]:
    """Mark a function of a task module as a task the node offers by name
    (its ``__name__``, or ``name``).  The function itself is unchanged."""

    def mark(f: F) -> F:
        if not callable(f):
            raise TypeError(f"@fabric.task marks functions, not {f!r:.80}")
        label = name or f.__name__
        if not isinstance(label, str) or not label or len(label) > 200:
            raise ValueError(f"a task's name is a string of 1 to 200 characters, got {label!r:.80}")
        setattr(f, TASK_ATTRIBUTE, label)
        return f

    return mark(fn) if fn is not None else mark


@dataclass(frozen=True)
class TaskModules:
    """What a set of task modules defines: each task by name, and each module's source digest."""

    functions: dict[str, Callable[..., Any]]
    digests: tuple[tuple[str, str], ...]  # (module, digest of its source)

    def registry(self) -> dict[bytes, Callable[..., Any]]:
        """The tasks under the digests clients send for them."""
        return {named_digest(name): fn for name, fn in self.functions.items()}


def named_digest(name: str) -> bytes:
    return NAMED_PREFIX + name.encode()


def load(modules: Iterable[str], reload: bool = False) -> TaskModules:
    """Import (or, with ``reload``, import again) the modules and collect their
    tasks; raises what the import raises, and ValueError for a name two
    modules define."""
    functions: dict[str, Callable[..., Any]] = {}
    digests = []
    for name in modules:
        module = sys.modules.get(name) if reload else None
        module = importlib.reload(module) if module is not None else importlib.import_module(name)
        digests.append((name, _source_digest(module)))
        for value in vars(module).values():
            label = getattr(value, TASK_ATTRIBUTE, None) if callable(value) else None
            if isinstance(label, str):
                if label in functions and functions[label] is not value:
                    raise ValueError(f"task {label!r} is defined twice (in {name} and another task module)")
                functions[label] = value
    return TaskModules(functions, tuple(digests))


def _source_digest(module: types.ModuleType) -> str:
    import inspect  # the node's only: a worker starts without it

    try:
        source = inspect.getsource(module).encode()
    except (OSError, TypeError):
        source = repr(sorted(vars(module))).encode()
    return hashlib.blake2b(source, digest_size=16).hexdigest()
