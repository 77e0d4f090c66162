"""Modbus write PDUs, sans-I/O (Modbus Application Protocol V1.1b3, 6.5, 6.6, 6.11, 6.12).

Shared by the TCP framing (:mod:`citygate.drivers.modbus.frame`) and the RTU
framing (:mod:`citygate.drivers.modbus.rtu`). A :class:`WriteRequest` is one of

* FC 05 write single coil (value ``FF00`` on, ``0000`` off),
* FC 06 write single register,
* FC 15 (0x0F) write multiple coils (at most 1968),
* FC 16 (0x10) write multiple registers (at most 123);

its normal reply echoes the function code, the address and the value (FC 05/06)
or the quantity (FC 15/16): :func:`parse_write_reply` accepts exactly that echo
(or an exception reply) and raises :class:`~citygate.drivers.api.DecodeError`
for anything else.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from citygate.drivers.api import DecodeError

__all__ = [
    "MAX_WRITE_BITS",
    "MAX_WRITE_REGISTERS",
    "WRITE_MULTIPLE_COILS",
    "WRITE_MULTIPLE_REGISTERS",
    "WRITE_SINGLE_COIL",
    "WRITE_SINGLE_REGISTER",
    "ExceptionReply",
    "WriteReply",
    "WriteRequest",
    "parse_write_reply",
]

WRITE_SINGLE_COIL: Final = 0x05
WRITE_SINGLE_REGISTER: Final = 0x06
WRITE_MULTIPLE_COILS: Final = 0x0F
WRITE_MULTIPLE_REGISTERS: Final = 0x10
MAX_WRITE_BITS: Final = 0x07B0
"""The protocol's limit on coils per FC 15 request (1968)."""
MAX_WRITE_REGISTERS: Final = 0x7B
"""The protocol's limit on registers per FC 16 request (123)."""

_WRITE_FUNCTIONS: Final = frozenset(
    {WRITE_SINGLE_COIL, WRITE_SINGLE_REGISTER, WRITE_MULTIPLE_COILS, WRITE_MULTIPLE_REGISTERS}
)
_COIL_ON: Final = 0xFF00
_ECHO: Final = struct.Struct(">BHH")
_ECHO_SIZE: Final = _ECHO.size


@dataclass(frozen=True, slots=True)
class ExceptionReply:
    """The device refused the request with an exception code."""

    code: int


@dataclass(frozen=True, slots=True)
class WriteReply:
    """A write's normal reply: it echoed the request."""

    function: int
    address: int


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """One write: ``values`` are register words (FC 06, 16) or bits, 0 or 1 (FC 05, 15).

    Raises ValueError for a function that is not a write, or values the
    function cannot carry.
    """

    function: int
    address: int
    values: tuple[int, ...]

    def __post_init__(self) -> None:
        function, values = self.function, self.values
        if function not in _WRITE_FUNCTIONS:
            raise ValueError(f"function {function} is not a write (5, 6, 15, 16)")
        single = function in (WRITE_SINGLE_COIL, WRITE_SINGLE_REGISTER)
        bits = function in (WRITE_SINGLE_COIL, WRITE_MULTIPLE_COILS)
        limit = 1 if single else MAX_WRITE_BITS if bits else MAX_WRITE_REGISTERS
        if not 1 <= len(values) <= limit:
            raise ValueError(f"function {function} writes 1–{limit} values, not {len(values)}")
        top = 1 if bits else 0xFFFF
        if any(not 0 <= value <= top for value in values):
            raise ValueError(f"function {function} writes values 0–{top}")
        if not 0 <= self.address <= 0xFFFF or self.address + len(values) > 0x10000:
            raise ValueError(f"address {self.address} + {len(values)} values out of range")

    @classmethod
    def registers(cls, address: int, words: Sequence[int]) -> WriteRequest:
        """FC 06 for one word, FC 16 for more."""
        function = WRITE_SINGLE_REGISTER if len(words) == 1 else WRITE_MULTIPLE_REGISTERS
        return cls(function, address, tuple(words))

    @classmethod
    def coils(cls, address: int, bits: Sequence[bool]) -> WriteRequest:
        """FC 05 for one coil, FC 15 for more."""
        function = WRITE_SINGLE_COIL if len(bits) == 1 else WRITE_MULTIPLE_COILS
        return cls(function, address, tuple(1 if bit else 0 for bit in bits))

    @property
    def echo(self) -> bytes:
        """The PDU of the normal reply: function, address, value (05/06) or quantity (15/16)."""
        if self.function == WRITE_SINGLE_COIL:
            second = _COIL_ON if self.values[0] else 0
        elif self.function == WRITE_SINGLE_REGISTER:
            second = self.values[0]
        else:
            second = len(self.values)
        return _ECHO.pack(self.function, self.address, second)

    def pdu(self) -> bytes:
        """The request PDU."""
        if self.function in (WRITE_SINGLE_COIL, WRITE_SINGLE_REGISTER):
            return self.echo
        head = self.echo
        if self.function == WRITE_MULTIPLE_REGISTERS:
            data = struct.pack(f">{len(self.values)}H", *self.values)
        else:
            packed = bytearray((len(self.values) + 7) // 8)
            for index, bit in enumerate(self.values):
                if bit:
                    packed[index >> 3] |= 1 << (index & 7)
            data = bytes(packed)
        return head + bytes((len(data),)) + data

    def describe(self) -> str:
        """``holding registers 0x0010–0x0011``: what is written, for messages."""
        bits = self.function in (WRITE_SINGLE_COIL, WRITE_MULTIPLE_COILS)
        what = "coil" if bits else "holding register"
        if len(self.values) == 1:
            return f"{what} 0x{self.address:04X}"
        return f"{what}s 0x{self.address:04X}–0x{self.address + len(self.values) - 1:04X}"


def parse_write_reply(request: WriteRequest, pdu: bytes) -> WriteReply | ExceptionReply:
    """The reply ``pdu`` gives to ``request``: its echo or an exception.

    Raises DecodeError for a reply of the wrong function or length, or one that
    does not echo the request's address, value or quantity.
    """
    if not pdu:
        raise DecodeError("empty reply")
    function = pdu[0]
    if function == request.function | 0x80:
        if len(pdu) != 2:
            raise DecodeError(f"exception reply of {len(pdu)} bytes, expected 2")
        return ExceptionReply(pdu[1])
    if function != request.function:
        raise DecodeError(f"reply with function code {function}, expected {request.function}")
    if len(pdu) != _ECHO_SIZE:
        raise DecodeError(f"write reply of {len(pdu)} bytes, expected {_ECHO_SIZE}")
    expected = request.echo
    if pdu != expected:
        _, address, second = _ECHO.unpack(pdu)
        _, want_address, want_second = _ECHO.unpack(expected)
        if address != want_address:
            problem = f"address 0x{address:04X}, expected 0x{want_address:04X}"
        elif request.function in (WRITE_MULTIPLE_COILS, WRITE_MULTIPLE_REGISTERS):
            problem = f"quantity {second}, expected {want_second}"
        else:
            problem = f"value 0x{second:04X}, expected 0x{want_second:04X}"
        raise DecodeError(f"write reply does not echo the request: {problem}")
    return WriteReply(function, request.address)
