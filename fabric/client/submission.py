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

import collections
import concurrent.futures
import functools
import pickle
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from ..calls.by_key import FoldByKey
from ..calls.fold import NO_INITIAL, Fold, Reducer
from ..calls.guard import Guarded
from ..calls.keep import Kept
from ..calls.registry import named_digest
from ..errors import ClosedError, SerializationError, UnknownTaskError
from ..wire import codec
from ..wire.protocol import Mode
from ..wire.ref import Ref, start_collecting, stop_collecting
from .awaiting import MapResults
from .batch import Batch, next_batch_id
from .batching import BatchSizer
from .cache import CacheClient, CachedFunction, wants_cache
from .dependencies import futures_in, when_done
from .futures import Future, FutureGroup, PendingArgument
from .locality import by_data_or_owner, data_by_node
from .mapping import MapStream, sized_length, sliced_input
from .objects import ObjectTable
from .options import TaskOptions
from .placement import LeastLoaded, key_digest
from .placing import Placing
from .progress import new_bar
from .reduction import combiner, fold
from .shipping import FunctionCache
from .shuffle import Rerun, Shuffle, merge_in_client

T = TypeVar("T")
R = TypeVar("R")
MAX_GUARDS = 256  # wrapped (function, options) pairs kept, so their pickles are reused
PARTITIONS_PER_WORKER = 4  # by_key's default: enough partitions to spread over nodes by key, few enough to stay cheap


@dataclass(frozen=True)
class MapCall:
    """How one map (or fold) call runs: its mode, input length if known, and the caller's settings."""

    mode: Mode
    length: int | None
    timeout: float | None
    chunksize: int | None
    ordered: bool
    progress: bool | str = False


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Pipeline:
    """What the task API needs from its fabric, held by the fabric, its views
    and its map streams (the fabric shuts down when the last of them goes).

    ``post`` hands a batch to the I/O thread (which fails it once the fabric
    has closed); ``capacity`` (credits) and ``workers`` size map windows and
    batches; ``check_open`` raises :class:`~fabric.ClosedError` after
    ``shutdown()``; ``cache`` looks results up and stores them; ``interrupted``
    (a KeyboardInterrupt in a caller) drops the work nobody waits for any more
    and stops the workers running it; ``objects`` counts this client's Refs,
    and ``live_nodes`` with ``locality_bytes`` place a batch by the data it reads.
    None of them is a method of the fabric, which would keep it alive.
    """

    post: Callable[[Batch], None]
    capacity: Callable[[], int]
    workers: Callable[[], int]
    check_open: Callable[[], None]
    shipper: FunctionShipper
    cache: CacheClient
    max_message_bytes: int
    interrupted: Callable[[], None]
    objects: ObjectTable
    live_nodes: Callable[[], set[bytes]]
    locality_bytes: int = 1 << 20
    known_tasks: Callable[[], dict[str, list[str]]] = dict  # task name -> nodes defining it, once a node answered

    def locate(self, refs: list[Ref], owner: bytes = b"") -> dict[bytes, int] | None:
        """Where a batch holding ``refs``, or computing cache misses whose keys
        ``owner`` owns, should run (see fabric.client.locality)."""
        return by_data_or_owner(data_by_node(refs, self.locality_bytes) if refs else None, owner)

    def recomputing(self, refs: list[Ref]) -> list[concurrent.futures.Future]:
        """The recomputations of the kept results among ``refs`` whose nodes died
        (none when none did): a batch reading them is sent once they are done."""
        return [self.objects.recompute(ref) for ref in self.objects.lost(refs, self.live_nodes)]

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
        ``retry_on``, ``cache``, ``keep``, ``placement``, ``nodes``,
        ``resources``, ``affinity``); the fabric itself is unchanged."""
        return FabricView(self._pipeline, self._task_options.merged(**changes))

    def submit(self, fn: Callable[..., R] | str, /, *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` on a worker; every keyword goes to ``fn``.
        ``fn`` may be the name of a task defined on the nodes (``@fabric.task``).

        Raises :class:`~fabric.SerializationError` here, in the caller, when the
        function or an argument cannot be serialized, and
        :class:`~fabric.UnknownTaskError` for a name no node defines.
        """
        pipeline = self._pipeline
        pipeline.check_open()
        options = self._task_options
        owner = b""  # of a cached call's key, where its miss should run
        if isinstance(fn, str):
            shipped = self._shipped(fn, options, exact=False)
            future, placing = Future(fn), placing_of(fn, options)
        else:
            cached = wants_cache(fn, options.cache)
            shipped = pipeline.shipper.get(fn, options, exact=cached)  # a cached call ships what it keys
            future = Future(codec.function_name(fn))
            if cached:
                miss_owner = _cache_miss_owner(pipeline.cache, fn, args, kwargs, future)
                if miss_owner is None:  # served from the cache
                    return future
                owner = miss_owner
            placing = placing_of(fn, options) if options.placed else None
        if options.keep:  # a kept result lost with its node is computed again while this call is held
            _remember(pipeline.objects, future, _resubmit(pipeline, options, fn, args, kwargs))
        self._post_call(shipped, placing, args, kwargs, future, owner)
        return future

    def _post_call(self, shipped: tuple[bytes, bytes], placing: Placing | None, args: tuple[Any, ...],
                   kwargs: dict[str, Any], future: Future, owner: bytes = b"") -> None:
        """Send one call, or, when an argument is a future not done yet, once it is
        (``owner``: the node owning its cache key, where a cached call should run)."""
        pipeline = self._pipeline
        refs = start_collecting()
        try:
            payload = codec.pickle_call(args, kwargs)
        except PendingArgument:
            when_done(futures_in((args, kwargs)),
                      lambda failed: self._resume(shipped, placing, args, kwargs, future, owner, failed))
            return
        finally:
            stop_collecting()
        lost = pipeline.recomputing(refs) if refs else None
        if lost:  # kept results whose nodes died: computed again first, then this call reads the new ones
            when_done(lost, lambda failed: self._resume(shipped, placing, args, kwargs, future, owner, failed))
            return
        pipeline.check_size(payload, f"the arguments of {future.task}")
        batch = Batch(
            next_batch_id(), shipped[0], shipped[1], Mode.CALL, codec.PICKLE, [len(payload)], payload, 1,
            FutureGroup([future]), retries=self._task_options.retries, placing=placing,
        )
        if refs or owner:
            batch.refs, batch.data = refs or None, pipeline.locate(refs, owner)
        pipeline.post(batch)

    def _resume(self, shipped: tuple[bytes, bytes], placing: Placing | None, args: tuple[Any, ...],
                kwargs: dict[str, Any], future: Future, owner: bytes, failed: BaseException | None) -> None:
        """The futures among the call's arguments are done: fail it with the first
        failure, unrun, or send it now."""
        try:
            if failed is not None:
                raise failed
            self._post_call(shipped, placing, args, kwargs, future, owner)
        except BaseException as exc:  # noqa: BLE001 - the call's outcome, not this thread's
            if not future.done():
                future.set_exception(exc)

    def _shipped(self, fn: Callable[..., Any] | str, options: TaskOptions, exact: bool) -> tuple[bytes, bytes]:
        """(digest, pickle) of a function, or the name of a task the nodes define (no pickle)."""
        if not isinstance(fn, str):
            return self._pipeline.shipper.get(fn, options, exact)
        if options.guards() or options.cache:
            raise ValueError(f"task {fn!r} is defined on the nodes: task_timeout, retry_on, keep and cache apply "
                             "to functions shipped from the client only")
        known = self._pipeline.known_tasks()
        if known and fn not in known:
            raise UnknownTaskError(f"no live node defines a task named {fn!r}; the nodes define: "
                                   f"{', '.join(known)} (fabric-node start --tasks MODULE)")
        return named_digest(fn), b""

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        ordered: bool = True,
        partition_by: Callable[..., Any] | None = None,
        progress: bool | str = False,
        **options: Any,
    ) -> MapResults[R]:
        """Lazily apply ``fn`` to every item (``fn(*items)`` for several iterables).

        Results come in input order, or as they finish with ``ordered=False``.
        Work starts at once; input is read as results are consumed, with a
        bounded number of batches in flight.  ``chunksize`` fixes the batch
        size (default: adapted to 20-100 ms of work per batch).  ``timeout``
        bounds the caller's wait, from this call, as in ``Executor.map``;
        ``progress`` shows a bar (a string labels it; needs tqdm) moving as
        results are taken.  Task options (``task_timeout``, ``retries``,
        ``retry_on``, ``cache``, ``keep``, ``placement``, ``nodes``,
        ``resources``, ``affinity``) may be given as keywords.
        ``partition_by(*item)`` gives each item a key: items with equal keys
        run on the same node, the key's owner on the ring of the nodes able to
        run the call.  An input holding a fabric future is sent when the
        future is done.  The iterator is also an async iterator: ``async
        for`` awaits results without blocking the loop.
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
            if not isinstance(fn, str) and wants_cache(fn, task_options.cache) else None
        )
        shipped = self._shipped(fn, task_options, exact=True)
        call = MapCall(mode, sized_length(iterables), timeout, chunksize, ordered, progress)
        keys_of = None if partition_by is None else partition_keys(partition_by, mode == Mode.STARMAP)
        placing = placing_of(fn, task_options, force=keys_of is not None)
        kept = _remember_items(pipeline, task_options, fn, mode == Mode.STARMAP) if task_options.keep else None
        return self._stream(shipped, items, call, task_options, cache, placing, keys_of, kept).results()

    def _stream(
        self, shipped: tuple[bytes, bytes], items: Iterator[Any] | Sequence[Any], call: MapCall,
        task_options: TaskOptions, cache: CachedFunction | None, placing: Placing | None = None,
        keys_of: Callable[[Sequence[Any]], list[bytes]] | None = None,
        kept: Callable[[Sequence[Any], list[Any]], None] | None = None,
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
            locate=pipeline.locate,
            recomputing=pipeline.recomputing,
            kept=kept,
            placing=placing,
            keys_of=keys_of,
            bar=new_bar(call.length, call.progress) if call.progress else None,
            interrupted=pipeline.interrupted,
            keepalive=pipeline,
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
        by_key: bool = False,
        partitions: int | None = None,
        ordered: bool = False,
        chunksize: int | None = None,
        timeout: float | None = None,
        progress: bool | str = False,
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
        ``progress`` shows a bar of the items mapped, as ``map``'s.

        With ``by_key=True`` the mapper returns an iterable of ``(key, value)``
        pairs and the result is a dict ``{key: fold of its values}`` (Spark's
        ``reduceByKey``, Dask's ``Bag.foldby``): values are folded per key on
        the worker that mapped them, ``initial`` starting each key's fold;
        each batch's partial is split into ``partitions`` by key (default a
        few per worker) and left in its node's object store; once the map
        ends, each partition's partials are merged (``combine`` as above) on
        the partition's owner node (a ring over the live nodes), and the
        client joins the partitions, so neither a pair nor a partial reaches
        it.  With ``keep=True`` the merged partitions stay on their nodes and
        the call returns one :class:`~fabric.Ref` per partition (a dict
        each), ready as the input of a next ``map``.  Keys need a stable
        encoding (str, bytes, numbers, tuples, ...); one without raises
        :class:`~fabric.CacheKeyError` naming it.  A node lost mid-call costs
        the batches whose partials it held, which run again.
        """
        if combine is False and not by_key:
            if partitions is not None:
                raise TypeError("partitions= applies to map_reduce(..., by_key=True) only")
            results = self.map(mapper, iterable, timeout=timeout, chunksize=chunksize, ordered=ordered,
                               progress=progress, **options)
            return fold(reducer, results, initial)
        merge = combiner(reducer, combine or True)
        pipeline = self._pipeline
        pipeline.check_open()
        if isinstance(mapper, str):
            how = "by_key" if by_key else "combine"
            raise TypeError(f"map_reduce({how}=...) folds on the worker around a function shipped from the client; "
                            f"call task {mapper!r} by name without {how}")
        task_options = self._task_options.merged(**options)
        if task_options.keep and not by_key:  # as a keyword here or from fx.options(keep=True)
            raise ValueError(_KEEP_COMBINED)
        if wants_cache(mapper, task_options.cache):
            how = "by_key" if by_key else "combine"
            raise ValueError(f"the result cache stores each mapper call, and with {how}= a batch returns one "
                             f"folded value: use map_reduce without {how} to cache the mapper's results")
        shipper = pipeline.shipper
        call = MapCall(Mode.FOLD, sized_length([iterable]), timeout, chunksize, ordered, progress)
        placing = placing_of(mapper, task_options)
        if not by_key:
            shipped = shipper.pickles.get(Fold(shipper.wrapped(mapper, task_options), reducer, initial))
            stream = self._stream(shipped, sliced_input(iterable), call, task_options, None, placing)
            return fold(merge, stream.results(), initial)
        count = PARTITIONS_PER_WORKER * max(1, pipeline.workers()) if partitions is None else partitions
        on_nodes = task_options.keep or len(pipeline.live_nodes()) > 1  # one node: the client merges
        fold_by_key = FoldByKey(shipper.wrapped(mapper, replace(task_options, keep=False)), reducer, initial, count,
                                on_nodes)
        return self._by_key(fold_by_key, merge, iterable, call, task_options, placing)

    def _by_key(self, fold_by_key: FoldByKey, merge: Reducer, iterable: Iterable[Any], call: MapCall,
                task_options: TaskOptions, placing: Placing | None) -> dict[Any, Any] | list[Ref]:
        """Map with partials left on the nodes, then merge each partition on its owner node
        (on one node, the client merges the partials as they arrive)."""
        pipeline = self._pipeline
        shipped = pipeline.shipper.pickles.get(fold_by_key)
        if not fold_by_key.on_nodes:
            stream = self._stream(shipped, sliced_input(iterable), call, task_options, None, placing)
            return merge_in_client(stream.results(), fold_by_key.partitions, merge, call.ordered)
        # The merges and reruns go where the call may run; its other options are the mapper's.
        where = TaskOptions(retries=task_options.retries, nodes=task_options.nodes)

        again = _weak_submit(pipeline)  # reruns and merges outlive the call, as kept partitions' lineage
        lineage = pipeline.objects.lineage

        def rerun(items: Sequence[Any]) -> Rerun:
            return Rerun(functools.partial(again, where, fold_by_key, (items,), {}), lineage)

        def submit(fn: Callable[..., Any], args: tuple[Any, ...], affinity: Any) -> Future:
            return again(where.merged(affinity=affinity), fn, args, {})

        shuffle = Shuffle(fold_by_key.partitions, merge, call.ordered, task_options.keep, pipeline.objects,
                          pipeline.live_nodes, rerun)
        started = time.monotonic()
        stream = self._stream(shipped, sliced_input(iterable), call, task_options, None, placing, kept=shuffle.note)
        collections.deque(stream.results(), maxlen=0)  # the partials' Refs go to the shuffle as chunks finish
        return shuffle.reduce(submit, None if call.timeout is None else started + call.timeout)


_KEEP_COMBINED = ("keep=True keeps each call's result on its node, and with combine= a batch returns one folded "
                  "value: map with keep=True, then map_reduce over the Refs")


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
        self.guards: OrderedDict[tuple[int, TaskOptions], tuple[Callable[..., Any], Callable[..., Any]]] = OrderedDict()

    def get(self, fn: Callable[..., Any], options: TaskOptions, exact: bool = False) -> tuple[bytes, bytes]:
        return self.pickles.get(self.wrapped(fn, options), exact)

    def wrapped(self, fn: Callable[..., Any], options: TaskOptions) -> Callable[..., Any]:
        """``fn``, or the wrapper (:class:`Guarded`, :class:`Kept`) that applies its options on the worker."""
        if not callable(fn):
            raise SerializationError(f"{fn!r:.80} is not callable")
        if not options.guards():
            return fn
        key = (id(fn), options)
        entry = self.guards.get(key)
        if entry is None or entry[0] is not fn:
            wrapper: Callable[..., Any] = fn
            if options.retry_on or options.task_timeout is not None:
                wrapper = Guarded(fn, options.retry_on, options.retries or self.default_retries, options.task_timeout)
            if options.keep:
                wrapper = Kept(wrapper)
            entry = self.guards[key] = (fn, wrapper)
            if len(self.guards) > MAX_GUARDS:
                self.guards.popitem(last=False)
        return entry[1]


def _weak_submit(pipeline: Pipeline) -> Callable[[TaskOptions, Callable[..., Any] | str, tuple[Any, ...],
                                                  dict[str, Any]], Future]:
    """Submits through ``pipeline`` held weakly: the lineage of a kept Ref lives in
    the I/O thread, and must not keep a fabric let go of open."""
    weak_pipeline = weakref.ref(pipeline)

    def submit(options: TaskOptions, fn: Callable[..., Any] | str, args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> Future:
        alive = weak_pipeline()
        if alive is None:
            raise ClosedError("the fabric that kept this result has shut down; it cannot compute it again")
        return FabricView(alive, options).submit(fn, *args, **kwargs)

    return submit


def _resubmit(pipeline: Pipeline, options: TaskOptions, fn: Callable[..., Any] | str, args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> Callable[[], Future]:
    """The call submitted again (a kept result's lineage)."""
    return functools.partial(_weak_submit(pipeline), options, fn, args, kwargs)


def _remember(table: ObjectTable, future: Future, recompute: Callable[[], Future]) -> None:
    """Note how to compute a kept result again, once its Ref is known."""

    def note(done: concurrent.futures.Future) -> None:
        if not done.cancelled() and done.exception() is None and isinstance(done.result(), Ref):
            table.lineage[done.result().key] = recompute

    future.add_done_callback(note)


def _remember_items(pipeline: Pipeline, options: TaskOptions, fn: Callable[..., Any], star: bool,
                    ) -> Callable[[Sequence[Any], list[Any]], None]:
    """For a ``map(..., keep=True)``: note how to compute each kept result again,
    its item submitted alone (so a lost one is rerun on a live node, not its chunk)."""
    lineage = pipeline.objects.lineage

    def note(items: Sequence[Any], results: list[Any]) -> None:
        for item, result in zip(items, results):
            if isinstance(result, Ref):
                lineage[result.key] = _resubmit(pipeline, options, fn, tuple(item) if star else (item,), {})

    return note


def _name_of(fn: Callable[..., Any] | str) -> str:
    return fn if isinstance(fn, str) else codec.function_name(fn)


def placing_of(fn: Callable[..., Any] | str, options: TaskOptions, force: bool = False) -> Placing | None:
    """Where the call's batches may run, or None for the default path (no option set)."""
    task = fn if isinstance(fn, str) else None
    if task is None and not force and not options.placed:
        return None
    return Placing(options.placement or LeastLoaded(), _name_of(fn), options, options.nodes, options.resources,
                   task, options.affinity_key())


def partition_keys(keyfn: Callable[..., Any], star: bool) -> Callable[[Sequence[Any]], list[bytes]]:
    """Each item's partition key digest, computed in the caller's thread as chunks are cut."""
    if star:
        return lambda items: [key_digest(keyfn(*item)) for item in items]
    return lambda items: [key_digest(keyfn(item)) for item in items]


def _cache_miss_owner(cache: CacheClient, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                      future: Future) -> bytes | None:
    """Resolve ``future`` from the cache if the call is stored (None); otherwise
    arrange for its result (not an exception) to be stored when it arrives, and
    return the node owning its key (b"" if none), where it should run."""
    cached_fn = CachedFunction(cache, fn)
    key = cached_fn.call_key(args, kwargs)
    hits, owners = cached_fn.lookup([key])
    hit = hits.get(0)
    if hit is not None:
        future.set_running_or_notify_cancel()
        future.set_result(pickle.loads(hit))
        return None

    def store(done: concurrent.futures.Future) -> None:
        if not done.cancelled() and done.exception() is None:
            cached_fn.store([key], [done.result()])

    future.add_done_callback(store)
    return next(iter(owners), b"")
