"""submit / map / map_reduce / options: the task API of a fabric and of its views.

User threads call these; they serialize in the calling thread, so an
unserializable function or argument raises here, and hand batches to the
client's I/O thread (no socket here)::

    user thread ── submit/map ──► TaskAPI ── Pipeline.post(Batch) ──► I/O thread ──► workers

:class:`TaskAPI` is shared by :class:`~fabric.Fabric` and by
:class:`FabricView`, the object ``fx.options(...)`` returns.  Both hold the
same :class:`Pipeline`, the few callables and objects the task API needs from
the fabric, as :class:`~fabric.client.mapping.MapStream` receives ``post`` and
``capacity``; a view adds its own :class:`~fabric.TaskOptions` and nothing else.
"""

from __future__ import annotations

import concurrent.futures
import pickle
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import SerializationError
from ..task.fold import NO_INITIAL, Fold
from ..task.guard import Guarded
from ..wire import codec
from ..wire.protocol import Mode
from .batching import BatchSizer
from .cache import CacheClient, CachedFunction, wants_cache
from .futures import Future, FutureGroup
from .mapping import MapStream, sized_length, sliced_input
from .options import TaskOptions
from .reduction import combiner, fold
from .shipping import FunctionCache
from .ventilator import Batch, next_batch_id

T = TypeVar("T")
R = TypeVar("R")
MAX_GUARDS = 256  # wrapped (function, options) pairs kept, so their pickles are reused


@dataclass(frozen=True)
class MapCall:
    """How one map (or fold) call runs: its mode, input length if known, and the caller's settings."""

    mode: Mode
    length: int | None
    timeout: float | None
    chunksize: int | None
    ordered: bool


@dataclass(frozen=True, slots=True)
class Pipeline:
    """What the task API needs from its fabric, held by the fabric and its views.

    ``post`` hands a batch to the I/O thread (which fails it once the fabric
    has closed); ``capacity`` (credits) and ``workers`` size map windows and
    batches; ``check_open`` raises :class:`~fabric.ClosedError` after
    ``shutdown()``; ``cache`` looks results up and stores them.
    """

    post: Callable[[Batch], None]
    capacity: Callable[[], int]
    workers: Callable[[], int]
    check_open: Callable[[], None]
    shipper: FunctionShipper
    cache: CacheClient
    max_message_bytes: int

    def check_size(self, payload: list[Any], what: str) -> None:
        """Refuse, in the caller, a batch no node would accept."""
        size = codec.frames_size(payload)
        if size > self.max_message_bytes:
            raise SerializationError(
                f"{what} serialize to {size:,} bytes, over max_message_bytes={self.max_message_bytes:,}; "
                "raise it with connect(max_message_bytes=...) or in cluster.toml, or send a reference instead"
            )


class TaskAPI:
    """Task submission, parameterised by the options of ``self``."""

    _pipeline: Pipeline
    _task_options: TaskOptions

    def options(self, **changes: Any) -> FabricView:
        """A view whose calls use these options (``task_timeout``, ``retries``,
        ``retry_on``, ``cache``); the fabric itself is unchanged."""
        return FabricView(self._pipeline, self._task_options.merged(**changes))

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` on a worker; every keyword goes to ``fn``.

        Raises :class:`~fabric.SerializationError` here, in the caller, when the
        function or an argument cannot be serialized.
        """
        pipeline = self._pipeline
        pipeline.check_open()
        options = self._task_options
        cached = wants_cache(fn, options.cache)
        digest, fn_payload = pipeline.shipper.get(fn, options, exact=cached)  # a cached call ships what it keys
        name = codec.function_name(fn)
        future = Future(name)
        if cached and _served_from_cache(pipeline.cache, fn, args, kwargs, future):
            return future
        payload = codec.pickle_call(args, kwargs)
        pipeline.check_size(payload, f"the arguments of {name}")
        batch = Batch(
            next_batch_id(), digest, fn_payload, Mode.CALL, codec.PICKLE, [len(payload)], payload, 1,
            FutureGroup([future]), retries=options.retries,
        )
        pipeline.post(batch)
        return future

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        ordered: bool = True,
        **options: Any,
    ) -> Iterator[R]:
        """Lazily apply ``fn`` to every item (``fn(*items)`` for several iterables).

        Results come in input order, or as they finish with ``ordered=False``.
        Work starts at once; input is read as results are consumed, with a
        bounded number of batches in flight.  ``chunksize`` fixes the batch
        size (default: adapted to 20-100 ms of work per batch).  ``timeout``
        bounds the caller's wait, from this call, as in ``Executor.map``; task
        options (``task_timeout``, ``retries``, ``retry_on``, ``cache``) may be
        given as keywords.
        """
        pipeline = self._pipeline
        pipeline.check_open()
        if not iterables:
            raise TypeError("map() needs at least one iterable")
        task_options = self._task_options.merged(**options)
        mode = Mode.MAP if len(iterables) == 1 else Mode.STARMAP
        items = sliced_input(iterables[0]) if len(iterables) == 1 else zip(*iterables)
        cache = (
            CachedFunction(pipeline.cache, fn, mode == Mode.STARMAP)
            if wants_cache(fn, task_options.cache) else None
        )
        shipped = pipeline.shipper.get(fn, task_options, exact=True)
        call = MapCall(mode, sized_length(iterables), timeout, chunksize, ordered)
        return self._stream(shipped, items, call, task_options, cache).results()

    def _stream(
        self, shipped: tuple[bytes, bytes], items: Iterator[Any] | Sequence[Any], call: MapCall,
        task_options: TaskOptions, cache: CachedFunction | None,
    ) -> MapStream:
        """A started map stream of the pickled function ``shipped`` over ``items``."""
        pipeline = self._pipeline
        stream = MapStream(
            shipped,
            call.mode,
            items,
            post=pipeline.post,
            capacity=pipeline.capacity,
            sizer=BatchSizer(call.chunksize, call.length, pipeline.workers() or 1),
            ordered=call.ordered,
            deadline=None if call.timeout is None else time.monotonic() + call.timeout,
            retries=task_options.retries,
            check_size=pipeline.check_size,
            cache=cache,
        )
        stream.start()
        return stream

    def map_reduce(
        self,
        mapper: Callable[[T], R],
        reducer: Callable[[Any, R], Any],
        iterable: Iterable[T],
        *,
        initial: Any = NO_INITIAL,
        combine: Callable[[Any, Any], Any] | bool = False,
        ordered: bool = False,
        chunksize: int | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> Any:
        """``reduce(reducer, map(mapper, iterable), initial)``.

        The mapper runs on the workers.  By default the reducer folds each
        result into the accumulator in the client as it arrives, so no list of
        all results is kept.  With ``combine`` each batch is folded on its
        worker too (MapReduce's combiner), and only one partial result per
        batch travels: ``True`` folds the partials with the reducer, a function
        ``combine(partial, partial)`` with itself.  ``initial`` then starts each
        batch's fold as well, so it must be an identity (0, [], ``Counter()``).
        Results are folded in completion order (the reducer should be
        associative and commutative), or in input order with ``ordered=True``.
        """
        if combine is False:
            results = self.map(mapper, iterable, timeout=timeout, chunksize=chunksize, ordered=ordered, **options)
            return fold(reducer, results, initial)
        merge = combiner(reducer, combine)
        self._pipeline.check_open()
        task_options = self._task_options.merged(**options)
        if wants_cache(mapper, task_options.cache):
            raise ValueError("the result cache stores each mapper call, and with combine= a batch returns one "
                             "folded value: use map_reduce without combine to cache the mapper's results")
        shipper = self._pipeline.shipper
        batch_fold = Fold(shipper.wrapped(mapper, task_options), reducer, initial)
        call = MapCall(Mode.FOLD, sized_length([iterable]), timeout, chunksize, ordered)
        stream = self._stream(shipper.pickles.get(batch_fold), sliced_input(iterable), call, task_options, None)
        return fold(merge, stream.results(), initial)


class FabricView(TaskAPI):
    """What ``fx.options(...)`` returns: the fabric's ``submit``, ``map``,
    ``map_reduce`` and ``options`` with other per-call :class:`~fabric.TaskOptions`.

    A view exists because ``submit`` passes every keyword to the function, so
    options cannot ride on the call.  It shares everything else with its
    fabric (workers, queues, cache) and closes with it; it is cheap, so make
    one wherever the options differ.  Not constructed directly.
    """

    def __init__(self, pipeline: Pipeline, options: TaskOptions) -> None:
        self._pipeline = pipeline
        self._task_options = options

    def __repr__(self) -> str:
        return f"<fabric.FabricView with {self._task_options}>"


class FunctionShipper:
    """Digest and pickle of each function, wrapped in :class:`Guarded` when its
    options need it (wrappers are kept, so their pickles are reused too)."""

    def __init__(self, default_retries: int) -> None:
        self.default_retries = default_retries
        self.pickles = FunctionCache()
        self.guards: OrderedDict[tuple[int, TaskOptions], Guarded] = OrderedDict()

    def get(self, fn: Callable[..., Any], options: TaskOptions, exact: bool = False) -> tuple[bytes, bytes]:
        return self.pickles.get(self.wrapped(fn, options), exact)

    def wrapped(self, fn: Callable[..., Any], options: TaskOptions) -> Callable[..., Any]:
        """``fn``, or the :class:`Guarded` that applies its options on the worker."""
        if not callable(fn):
            raise SerializationError(f"{fn!r:.80} is not callable")
        if not options.guards():
            return fn
        key = (id(fn), options)
        guarded = self.guards.get(key)
        if guarded is None or guarded.__wrapped__ is not fn:
            guarded = self.guards[key] = Guarded(
                fn, options.retry_on, options.retries or self.default_retries, options.task_timeout
            )
            if len(self.guards) > MAX_GUARDS:
                self.guards.popitem(last=False)
        return guarded


def _served_from_cache(cache: CacheClient, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                       future: Future) -> bool:
    """Resolve ``future`` from the cache if the call is stored; otherwise arrange
    for its result (not an exception) to be stored when it arrives."""
    cached_fn = CachedFunction(cache, fn)
    key = cached_fn.call_key(args, kwargs)
    hit = cached_fn.lookup([key]).get(0)
    if hit is not None:
        future.set_running_or_notify_cancel()
        future.set_result(pickle.loads(hit))
        return True

    def store(done: concurrent.futures.Future) -> None:
        if not done.cancelled() and done.exception() is None:
            cached_fn.store([key], [done.result()])

    future.add_done_callback(store)
    return False
