"""The host controller interface (HCI) of an IMST iM871A wireless M-Bus stick, sans-I/O.

Written from IMST's *WMBus HCI* description (the message ids and flags that open
source receivers also use). Every message on the serial line (57600 baud, 8N1)::

    A5  CE  ID  LEN  payload[LEN]  [timestamp 4]  [RSSI 1]  [CRC 2]

``CE``: the control field in the high nibble (0x20 a time stamp follows the
payload, 0x40 an RSSI byte follows, 0x80 a CRC follows; 0x10 is reserved), the
endpoint in the low nibble (1 device management, 2 radio link, 3 radio link test,
4 hardware test). The CRC is CRC-16/X-25 (polynomial x¹⁶+x¹²+x⁵+1 bit-reversed,
initial 0xFFFF, complemented) over everything after ``A5`` up to it, sent least
significant byte first.

A received telegram is ``RADIOLINK_MSG_WMBUSMSG_IND`` whose payload is the wireless
M-Bus message from its C-field on, block CRCs removed: the L-field is not sent, LEN
is its value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "CTRL_CRC",
    "CTRL_RSSI",
    "CTRL_TIMESTAMP",
    "DEVMGMT",
    "HWTEST",
    "LINK_MODES",
    "RADIOLINK",
    "RADIOLINKTEST",
    "SOF",
    "HciDecoder",
    "HciFrame",
    "crc16",
    "encode_frame",
    "rssi_byte",
    "rssi_dbm",
]

SOF: Final = 0xA5
DEVMGMT: Final = 0x01
RADIOLINK: Final = 0x02
RADIOLINKTEST: Final = 0x03
HWTEST: Final = 0x04
CTRL_TIMESTAMP: Final = 0x20
CTRL_RSSI: Final = 0x40
CTRL_CRC: Final = 0x80
_CTRL_RESERVED: Final = 0x10

# Device management messages (requests odd, their responses the next even id).
PING_REQ: Final = 0x01
PING_RSP: Final = 0x02
SET_CONFIG_REQ: Final = 0x03
SET_CONFIG_RSP: Final = 0x04
GET_CONFIG_REQ: Final = 0x05
GET_CONFIG_RSP: Final = 0x06
RESET_REQ: Final = 0x07
RESET_RSP: Final = 0x08
GET_DEVICEINFO_REQ: Final = 0x0F
GET_DEVICEINFO_RSP: Final = 0x10
# Radio link messages.
WMBUSMSG_IND: Final = 0x03

LINK_MODES: Final[dict[int, str]] = {
    0x00: "S1",
    0x01: "S1m",
    0x02: "S2",
    0x03: "T1",
    0x04: "T2",
    0x05: "R2",
    0x06: "C1a",
    0x07: "C1b",
    0x08: "C2a",
    0x09: "C2b",
    0x0A: "C1T1",  # firmware 1.4 on: C1 and T1 together (listed as N1a/CT in some tables)
}
"""The link mode byte of the configuration, and the mode it selects."""

HEARD: Final[dict[str, frozenset[str]]] = {
    "S1": frozenset({"S1"}),
    "S1m": frozenset({"S1"}),
    "S2": frozenset({"S1"}),
    "T1": frozenset({"T1"}),
    "T2": frozenset({"T1"}),
    "R2": frozenset(),
    "C1a": frozenset({"C1"}),
    "C1b": frozenset({"C1"}),
    "C2a": frozenset({"C1"}),
    "C2b": frozenset({"C1"}),
    "C1T1": frozenset({"C1", "T1"}),
}
"""Which meters' radio modes (``T1``, ``C1``, ``S1``) a stick in a link mode hears."""


def crc16(data: bytes) -> int:
    """CRC-16/X-25 of ``data`` (check value of ``b"123456789"``: 0x906E)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc ^ 0xFFFF


def rssi_byte(dbm: float) -> int:
    """The stick's raw RSSI byte for ``dbm``: about 2 steps a dB, 45 at −100 dBm.

    An approximation of the receiver chip's RSSI curve (Si1002 data sheet, figure
    "RSSI vs. input power"), as open-source readers convert it: dBm ≈ −100 + (raw − 45)/2.
    """
    return max(0, min(255, round(45 + 2 * (dbm + 100))))


def rssi_dbm(raw: int) -> float:
    """The inverse of :func:`rssi_byte`."""
    return -100 + (raw - 45) / 2


def encode_frame(
    endpoint: int,
    msg_id: int,
    payload: bytes = b"",
    *,
    timestamp: int | None = None,
    rssi: int | None = None,
    crc: bool = True,
) -> bytes:
    """One HCI message; ``rssi`` is the raw byte, ``timestamp`` a 32-bit counter."""
    if len(payload) > 255:
        raise ValueError(f"an HCI payload holds at most 255 bytes, not {len(payload)}")
    control = (
        (CTRL_TIMESTAMP if timestamp is not None else 0)
        | (CTRL_RSSI if rssi is not None else 0)
        | (CTRL_CRC if crc else 0)
    )
    body = bytes((control | (endpoint & 0x0F), msg_id, len(payload))) + payload
    if timestamp is not None:
        body += (timestamp & 0xFFFF_FFFF).to_bytes(4, "little")
    if rssi is not None:
        body += bytes((rssi & 0xFF,))
    if crc:
        body += crc16(body).to_bytes(2, "little")
    return bytes((SOF,)) + body


@dataclass(frozen=True, slots=True)
class HciFrame:
    """One HCI message as received."""

    endpoint: int
    msg_id: int
    payload: bytes
    timestamp: int | None = None
    rssi: int | None = None
    crc: bool = False
    """A CRC was present (and matched)."""


class HciDecoder:
    """Frames HCI messages in a byte stream; what frames nothing is counted and dropped.

    A message whose CRC does not match is dropped (``bad_crc``) and the decoder
    resynchronises on the next ``A5`` after its start. The buffer never holds more
    than one maximal message (4 + 255 + 7 bytes).
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.dropped_bytes = 0
        self.bad_crc = 0

    @property
    def buffered(self) -> int:
        """Bytes held for a message not complete yet."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[HciFrame]:
        """Take bytes; return the complete, valid messages."""
        self._buffer += data
        buf = self._buffer
        frames: list[HciFrame] = []
        while buf:
            if buf[0] != SOF:
                self._skip(1)
                continue
            if len(buf) < 4:
                break
            control = buf[1] & 0xF0
            if control & _CTRL_RESERVED or not 1 <= buf[1] & 0x0F <= 4:
                self._skip(1)
                continue
            size = (
                4
                + buf[3]
                + (4 if control & CTRL_TIMESTAMP else 0)
                + (1 if control & CTRL_RSSI else 0)
                + (2 if control & CTRL_CRC else 0)
            )
            if len(buf) < size:
                break
            frame = bytes(buf[:size])
            if control & CTRL_CRC and crc16(frame[1:-2]) != int.from_bytes(frame[-2:], "little"):
                self.bad_crc += 1
                self._skip(1)
                continue
            del buf[:size]
            frames.append(_parse(frame, control))
        return frames

    def _skip(self, count: int) -> None:
        del self._buffer[:count]
        self.dropped_bytes += count


def _parse(frame: bytes, control: int) -> HciFrame:
    length = frame[3]
    at = 4 + length
    timestamp = rssi = None
    if control & CTRL_TIMESTAMP:
        timestamp = int.from_bytes(frame[at : at + 4], "little")
        at += 4
    if control & CTRL_RSSI:
        rssi = frame[at]
    return HciFrame(
        frame[1] & 0x0F,
        frame[2],
        frame[4 : 4 + length],
        timestamp,
        rssi,
        bool(control & CTRL_CRC),
    )
