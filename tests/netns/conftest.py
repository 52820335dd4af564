"""Hosts for the multi-host tests: three network namespaces on a bridge
(:mod:`benchmarks.netns`, the same hosts the scale benchmark runs on), made for
each test and deleted after it.  Host 0 runs the client, hosts 1 and 2 the
nodes; nothing is ever sent outside their 198.18.0.0/15 addresses."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from benchmarks import netns


@pytest.fixture
def hosts() -> Iterator[netns.Hosts]:
    reason = netns.unavailable()
    if reason:
        pytest.skip(reason)
    with netns.hosts(3) as made:
        yield made
