"""A refused handshake is reported with the one reason that fits this side's key."""

import zmq

from fabric.wire.security import refusal_reason


def test_a_protocol_failure_names_the_side_without_a_key():
    unkeyed = refusal_reason(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, keyed=False)
    keyed = refusal_reason(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, keyed=True)
    assert unkeyed is not None and "this side has none" in unkeyed and "key_file" in unkeyed
    assert keyed is not None and "it has no cluster key" in keyed
    assert "differs" not in unkeyed + keyed


def test_different_keys_are_said_to_differ():
    for event in (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_AUTH):
        why = refusal_reason(event, keyed=True)
        assert why is not None and "differs" in why


def test_success_is_no_refusal():
    assert refusal_reason(zmq.EVENT_HANDSHAKE_SUCCEEDED, keyed=True) is None
