import msgpack
import pytest

from nomade_common import wire


def test_envelope_round_trip_keeps_every_field():
    env = wire.Envelope(wire.SAMPLES, "node7", 1700000000123, 42, {"rows": [[5, 1.5, None]]})
    back = wire.unpack(env.pack())
    assert back == env


def test_stored_payload_envelope_equals_a_freshly_packed_one():
    payload = {"rows": [[1, 2.0] + [None] * (len(wire.SAMPLE_FIELDS) - 2)]}
    raw = wire.pack_stored(wire.SAMPLES, "n1", 9, 3, wire.pack_payload(payload))
    assert raw == wire.Envelope(wire.SAMPLES, "n1", 9, 3, payload).pack()


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"\xc1garbage", "not msgpack"),
        (msgpack.packb({"a": 1}), "5-element"),
        (msgpack.packb([99, "samples", "n", [1, 2], {}]), "unsupported envelope version 99"),
        (msgpack.packb([1, "samples", "", [1, 2], {}]), "Slurm node name"),
        (msgpack.packb([1, "samples", "n" * 8_000_000, [1, 2], {}]), "at most 128"),
        (msgpack.packb([1, "samples", "n1\x1b[2J", [1, 2], {}]), "Slurm node name"),
        (msgpack.packb([1, "samples", "n", [1], {}]), "[epoch, seq]"),
        (msgpack.packb([1, "samples", "n", [1, (1 << 64) - 1], {}]), "[epoch, seq]"),
        (msgpack.packb([1, "samples", "n", [-1, 2], {}]), "[epoch, seq]"),
        (msgpack.packb([1, "", "n", [1, 2], {}]), "type must be"),
        (b"\x91" * 100_000 + b"\xc0", "not msgpack"),
    ],
)
def test_foreign_or_malformed_messages_are_rejected_with_a_reason(data, reason):
    with pytest.raises(wire.WireError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        wire.unpack(data)


def test_a_malformed_envelope_whose_key_is_readable_can_be_answered():
    """The receiver answers with a NACK what it can address: node, epoch and seq were read."""
    with pytest.raises(wire.WireError) as err:
        wire.unpack(msgpack.packb([2, "samples", "c7", [5, 9], {}]))
    assert err.value.key == ("c7", 5, 9)
    with pytest.raises(wire.WireError) as err:
        wire.unpack(msgpack.packb([1, "samples", "c7", [5], {}]))
    assert err.value.key is None
