"""``fx.statistics()`` is one frozen record; ``workers()``, ``nodes()`` and ``cache.stats()`` are its parts."""

import dataclasses

import pytest
from helpers import square, wait_for


def test_statistics_is_one_frozen_record_whose_parts_the_shortcuts_return(fx):
    fx.cache.clear()
    assert list(fx.map(square, range(50), cache=True)) == [x * x for x in range(50)]
    assert list(fx.map(square, range(50), cache=True)) == [x * x for x in range(50)]
    stats = wait_for(lambda: (s := fx.statistics()).cache.entries == 50 and s, 10, "a heartbeat counting the entries")
    [node] = stats.nodes
    assert stats.workers == fx.workers() == node.workers == 2
    assert fx.nodes() == stats.nodes  # equal but for age_s, which is not compared
    assert (stats.cache.hits, stats.cache.misses) == (50, 50) == (fx.cache.stats().hits, fx.cache.stats().misses)
    assert stats.cache.nodes == {node.name: {"entries": 50, "bytes": node.cache_bytes, "hits": node.cache_hits,
                                             "misses": node.cache_misses}}
    assert (stats.duplicates, stats.malformed) == (0, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.workers = 3
