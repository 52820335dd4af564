"""Whatever bytes arrive, the decoders either return a well-formed message or raise
ProtocolError: nothing else escapes into a receive loop (hypothesis)."""

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from fabric.cluster.stats import NodeStats
from fabric.errors import ProtocolError
from fabric.wire.message import Kind, Message
from fabric.wire.protocol import PROTOCOL_VERSION, from_frames, to_frames

plain = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.floats()
    | st.text(max_size=40) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=20,
)
# Headers that look right (version, a real kind) with arbitrary fields: the decoder's
# field checks are what they exercise, not just its first byte.
plausible_header = st.builds(
    lambda kind, fields: msgpack.packb([PROTOCOL_VERSION, int(kind), *fields], use_bin_type=True),
    st.sampled_from(list(Kind)), st.lists(plain, max_size=9),
)
frames = st.lists(st.binary(max_size=64), max_size=4)


def decodes_or_refuses(message_frames):
    try:
        msg = from_frames(message_frames)
    except ProtocolError:
        return
    assert isinstance(msg, Message)
    assert from_frames(to_frames(msg)) is not None  # what was accepted is well-formed enough to send back


@settings(max_examples=200, deadline=None)
@given(frames)
def test_random_frames(message_frames):
    decodes_or_refuses(message_frames)


@settings(max_examples=300, deadline=None)
@given(plausible_header, frames)
def test_plausible_headers_with_arbitrary_fields(header, payload):
    decodes_or_refuses([header, *payload])


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(
    ["node_id", "name", "control", "pub", "workers", "busy", "accepting", "peers", "per_worker", "cache_weight",
     "tasks_per_s", "max_load"]), plain, max_size=12))
def test_heartbeat_contents(info):
    try:
        stats = NodeStats.from_info(info)
    except ProtocolError:
        return
    assert NodeStats.from_info(stats.to_info()) == stats  # every field it accepted has its declared type
