"""The proxy's MQTT packet splitter: whatever the chunking, the same whole packets come out."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.support.proxy import MqttSplitter


def encode(first_byte: int, body: bytes) -> bytes:
    """An MQTT control packet: fixed header byte, remaining length (variable int), body."""
    length, encoded = len(body), bytearray()
    while True:
        digit, length = length % 128, length // 128
        encoded.append(digit | (0x80 if length else 0))
        if not length:
            return bytes([first_byte]) + bytes(encoded) + body


packets = st.lists(st.builds(encode, st.integers(0x10, 0xF0), st.binary(max_size=300)), max_size=20)


@given(packets, st.lists(st.integers(1, 64), min_size=1))
def test_any_chunking_yields_the_same_packets(sent: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(sent)
    splitter = MqttSplitter()
    out: list[bytes] = []
    position, i = 0, 0
    while position < len(stream):
        size = cuts[i % len(cuts)]
        out += splitter.feed(stream[position : position + size])
        position += size
        i += 1
    assert out == sent


def test_a_long_remaining_length_is_read_across_chunks() -> None:
    packet = encode(0x30, bytes(20_000))  # three length bytes
    splitter = MqttSplitter()
    assert splitter.feed(packet[:2]) == []
    assert splitter.feed(packet[2:]) == [packet]
