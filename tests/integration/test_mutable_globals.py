"""In-place edits of what a notebook function reads reach the workers and the
result cache: never the old value, never a stale hit."""

from __future__ import annotations

import numpy as np
from notebook_cells import cell

from fabric.client.shipping import LARGE_BUFFER_BYTES


def test_a_dict_global_mutated_in_place_is_seen_by_submit_and_by_a_cached_map(fx):
    namespace = cell("CFG = {'scale': 1}\ndef scaled(i):\n    return i * CFG['scale']\n")
    scaled = namespace["scaled"]
    assert fx.submit(scaled, 2).result() == 2
    assert list(fx.map(scaled, range(3), cache=True)) == [0, 1, 2]
    namespace["CFG"]["scale"] = 100
    assert fx.submit(scaled, 2).result() == 200
    before = fx.cache.stats()
    assert list(fx.map(scaled, range(3), cache=True)) == [0, 100, 200]
    after = fx.cache.stats()
    assert (after.hits - before.hits, after.misses - before.misses) == (0, 3)


def test_a_large_array_rewritten_or_edited_in_place_is_seen(fx):
    namespace = cell("def total(i):\n    return float(DATA.sum()) + i\n")
    namespace["DATA"] = data = np.ones(LARGE_BUFFER_BYTES // 8 * 4)
    total = namespace["total"]
    assert fx.submit(total, 0).result() == data.size
    assert list(fx.map(total, [0], cache=True)) == [data.size]
    data[:] = 7
    assert fx.submit(total, 0).result() == 7 * data.size
    data[5] = 8  # a sparse edit: maps and cached calls digest the whole array
    assert list(fx.map(total, [0], cache=True)) == [7 * data.size + 1]
    data[6] = 9  # a cached submit ships what it keys: no sampling window for it either
    assert fx.options(cache=True).submit(total, 0).result() == 7 * data.size + 3
