"""MQTT 5 PUBLISH packets as a client sent them (tests/support/proxy.py records them): sizes,
topics, topic aliases and content types, read from the bytes (independent of paho)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

_CONTENT_TYPE = 0x03
_TOPIC_ALIAS = 0x23
# property id -> its value's kind: byte, two-byte int, four-byte int, varint, utf-8 / binary
# data (2-byte length), or a string pair (user property)
_KINDS = {
    0x01: "byte", 0x02: "u32", 0x03: "str", 0x08: "str", 0x09: "str", 0x0B: "var",
    0x23: "u16", 0x26: "pair",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Publish:
    """One PUBLISH packet: ``size`` is the whole packet (fixed header included)."""

    size: int
    dup: bool
    qos: int
    topic: str  # as sent: "" when only an alias names it
    alias: int | None
    content_type: str | None
    payload: bytes


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7


def _string(data: bytes, at: int) -> tuple[bytes, int]:
    length = int.from_bytes(data[at : at + 2], "big")
    return data[at + 2 : at + 2 + length], at + 2 + length


def parse_publish(packet: bytes) -> Publish:
    """An MQTT 5 PUBLISH packet (fixed header, variable header with properties, payload)."""
    flags = packet[0]
    if flags & 0xF0 != 0x30:
        raise ValueError("not a PUBLISH packet")
    qos = (flags >> 1) & 3
    remaining, at = _varint(packet, 1)
    end = at + remaining
    topic, at = _string(packet, at)
    if qos:
        at += 2  # packet identifier
    length, at = _varint(packet, at)
    properties_end = at + length
    alias = content_type = None
    while at < properties_end:
        identifier = packet[at]
        at += 1
        kind = _KINDS.get(identifier)
        if kind == "byte":
            at += 1
        elif kind == "u16":
            if identifier == _TOPIC_ALIAS:
                alias = int.from_bytes(packet[at : at + 2], "big")
            at += 2
        elif kind == "u32":
            at += 4
        elif kind == "var":
            _, at = _varint(packet, at)
        elif kind == "str":
            value, at = _string(packet, at)
            if identifier == _CONTENT_TYPE:
                content_type = value.decode()
        elif kind == "pair":
            _, at = _string(packet, at)
            _, at = _string(packet, at)
        else:
            raise ValueError(f"property 0x{identifier:02X} is not expected on a PUBLISH")
    return Publish(
        size=len(packet),
        dup=bool(flags & 0x08),
        qos=qos,
        topic=topic.decode(),
        alias=alias,
        content_type=content_type,
        payload=packet[properties_end:end],
    )


def resolve_topics(publishes: Iterable[tuple[int, bytes]]) -> list[tuple[str, Publish]]:
    """Each recorded (connection, packet) parsed, with the topic it names, following the
    aliases of its connection as a broker does (an alias is set by a packet with a topic and
    an alias, for that connection only). Raises ValueError for an alias its connection does
    not know: the broker would have closed the connection."""
    aliases: dict[int, str] = {}
    connection = None
    named: list[tuple[str, Publish]] = []
    for number, packet in publishes:
        if number != connection:
            connection, aliases = number, {}
        publish = parse_publish(packet)
        topic = publish.topic
        if publish.alias is not None:
            if topic:
                aliases[publish.alias] = topic
            elif publish.alias in aliases:
                topic = aliases[publish.alias]
            else:
                raise ValueError(f"alias {publish.alias} unknown on connection {number}")
        named.append((topic, publish))
    return named
