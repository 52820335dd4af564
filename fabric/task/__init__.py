"""What runs on a worker around the user's code, and tasks defined on the nodes.

Wrappers built in the client and shipped with a user's function
(:mod:`.guard`, :mod:`.fold`) are imported on the worker when a shipped
function is unpickled, so nothing here imports :mod:`fabric.client`.
:mod:`.registry` holds ``@fabric.task``; :mod:`.context` what
``fabric.current_worker()`` says.

This package is itself the decorator: ``@fabric.task`` and
``@fabric.task(name="wc")`` call :func:`.registry.task` (the package's module
class is given a ``__call__``), since ``fabric.task`` names this package once
any of its modules is imported.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from .registry import task


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return task(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
