"""Sans-I/O checks of Modbus TCP frames (MBAP header + PDU).

The driver parses the read request it sends (:func:`parse_read_request`) and
checks every received byte buffer against it (:func:`check_reply`) before the
client library sees it, so a malformed reply becomes a
:class:`~citygate.drivers.api.DecodeError` instead of a stalled request.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

__all__ = ["MBAP", "ReadRequestFrame", "check_reply", "parse_read_request"]

MBAP: Final = struct.Struct(">HHHB")
"""Transaction id, protocol id (0), length of what follows, unit id."""
_READ_PDU: Final = struct.Struct(">BHH")
_REGISTER_FUNCTIONS: Final = frozenset({0x03, 0x04})
_BIT_FUNCTIONS: Final = frozenset({0x01, 0x02})
_MAX_LENGTH: Final = 254  # unit id + the largest PDU (253 bytes)


@dataclass(frozen=True, slots=True)
class ReadRequestFrame:
    """A read request as it went on the wire."""

    transaction_id: int
    unit: int
    function: int
    address: int
    count: int

    @property
    def reply_data_bytes(self) -> int:
        """The byte count a well-formed reply carries."""
        if self.function in _REGISTER_FUNCTIONS:
            return 2 * self.count
        return (self.count + 7) // 8


def parse_read_request(frame: bytes) -> ReadRequestFrame | None:
    """The read request (FC 01–04) in ``frame``, or None for anything else."""
    if len(frame) != MBAP.size + _READ_PDU.size:
        return None
    transaction_id, protocol, length, unit = MBAP.unpack_from(frame)
    function, address, count = _READ_PDU.unpack_from(frame, MBAP.size)
    if protocol != 0 or length != 1 + _READ_PDU.size:
        return None
    if function not in _REGISTER_FUNCTIONS | _BIT_FUNCTIONS:
        return None
    return ReadRequestFrame(transaction_id, unit, function, address, count)


def check_reply(buffer: bytes, request: ReadRequestFrame) -> str | None:
    """What is wrong with the reply to ``request`` in ``buffer``, or None.

    None also when the buffer is still incomplete. Whole frames of other
    transactions (late replies to abandoned requests) are skipped.
    """
    position = 0
    while True:
        available = len(buffer) - position
        if available >= 4 and buffer[position + 2 : position + 4] != b"\x00\x00":
            protocol = int.from_bytes(buffer[position + 2 : position + 4], "big")
            return f"not a Modbus TCP frame (protocol id {protocol}, expected 0)"
        if available < MBAP.size:
            return None
        transaction_id, _, length, unit = MBAP.unpack_from(buffer, position)
        if not 2 <= length <= _MAX_LENGTH:
            return f"frame length {length} out of range 2–{_MAX_LENGTH}"
        if available < 6 + length:
            return None
        if transaction_id != request.transaction_id:
            position += 6 + length
            continue
        if request.unit not in (unit, 0):  # unit 0 means "any unit" on TCP
            return f"reply from unit {unit}, expected unit {request.unit}"
        function = buffer[position + MBAP.size]
        pdu_length = length - 1
        if function == request.function | 0x80:
            if pdu_length != 2:
                return f"exception reply of {pdu_length} bytes, expected 2"
            return None
        if function != request.function:
            return f"reply with function code {function}, expected {request.function}"
        if pdu_length < 2:
            return "reply without a byte count"
        expected = request.reply_data_bytes
        byte_count = buffer[position + MBAP.size + 1]
        if byte_count != expected:
            return f"reply carries {byte_count} data bytes, expected {expected}"
        if pdu_length != 2 + byte_count:
            return f"reply frame holds {pdu_length - 2} data bytes but says {byte_count}"
        return None
