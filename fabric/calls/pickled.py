"""A callable cloudpickled whole in the client, with everything it holds, and called on a worker.

For callables that carry their own arguments, such as joblib's batches of
calls (:mod:`fabric.joblib`): their arguments may hold functions of the
user's script or notebook, which plain pickle would send by a name the worker
cannot import, so the client cloudpickles the whole callable once, and the
worker runs :func:`call_pickled` (shipped by reference) on the bytes.
"""

from __future__ import annotations

import pickle
from typing import Any


def call_pickled(payload: bytes) -> Any:
    """Unpickle the callable in ``payload`` and call it."""
    return pickle.loads(payload)()
