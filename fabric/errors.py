"""Every error fabric raises, in one tree under :class:`FabricError`.

The split follows who broke it: :class:`ClosedError` means the caller closed the
fabric; :class:`WorkerLostError`, :class:`WorkerCrashedError` and
:class:`NoNodesError` mean something outside the caller broke.  A task's own
exception is not wrapped: it is re-raised with its original type and the remote
traceback as ``__cause__`` (see :func:`fabric.wire.codec.rebuild_error`).
"""

from __future__ import annotations


class FabricError(Exception):
    """Base of every error raised by fabric itself."""


class ProtocolError(FabricError):
    """A malformed or incompatible message arrived; it is dropped at the edge."""


class SerializationError(FabricError, TypeError):
    """A function, argument or result could not be serialized or deserialized."""


class ClosedError(FabricError, RuntimeError):
    """The fabric was shut down by its owner; no new work is accepted."""


class WorkerLostError(FabricError):
    """A worker disappeared while holding this task."""


class WorkerCrashedError(WorkerLostError):
    """A task killed its worker on every attempt and was given up."""


class NoNodesError(FabricError):
    """No node can be reached to run work."""


class UnknownTaskError(FabricError, LookupError):
    """A task called by name that no live node defines; the message lists the
    names the nodes do define (``fabric-node start --tasks MODULE``)."""


class AuthenticationError(NoNodesError):
    """Every node refused this client's handshake: one side has a cluster key and
    the other none, or the keys differ.  Definitive: retrying will not help."""


class CacheKeyError(FabricError, TypeError):
    """A cached call has an argument (or its function reads a value) with no
    stable encoding, so no cache key can be derived for it."""


class StoreError(FabricError):
    """A node's result store failed (disk full, locked, unreadable)."""


class TaskTimeoutError(FabricError, TimeoutError):
    """A task ran longer than its ``task_timeout``."""


class RemoteError(FabricError):
    """A task raised an exception whose type could not be rebuilt in the caller.

    ``type_name`` holds the remote exception's qualified type name.
    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message


class RemoteTraceback(Exception):
    """Carries the remote traceback text; attached as ``__cause__``."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


class ConfigError(FabricError, ValueError):
    """A cluster file, key file or node option is wrong; says where and why."""
