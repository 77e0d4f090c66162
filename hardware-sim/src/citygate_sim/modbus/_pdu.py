"""Modbus PDUs, sans-I/O: request bytes in, response bytes out.

Written from the Modbus Application Protocol Specification V1.1b3: a request PDU
is a function code and its data; a response echoes the function code, an
exception response sets its high bit and carries one exception code. The read
functions are checked in the order of the specification's state diagrams:
function code, then quantity (exception 03), then address range (02), then the
device's own answer (02 for unmapped registers, 04 when it fails).

The write functions (05, 06, 15, 16) likewise: function code, then the request's
length, byte count, quantity and coil value (03), then the address range (02),
then the device (02 for a read-only or unmapped address); a written request is
answered with its echo (05/06: the whole request; 15/16: address and quantity).
"""

from __future__ import annotations

import struct
from enum import IntEnum, StrEnum
from typing import Protocol

__all__ = [
    "MAX_READ_BITS",
    "MAX_READ_REGISTERS",
    "MAX_WRITE_BITS",
    "MAX_WRITE_REGISTERS",
    "Device",
    "ExceptionCode",
    "FunctionCode",
    "Table",
    "exception_response",
    "handle_pdu",
    "pack_bits",
]

MAX_READ_REGISTERS = 125
MAX_READ_BITS = 2000
MAX_WRITE_REGISTERS = 123
MAX_WRITE_BITS = 1968
_COIL_ON = 0xFF00
_ADDRESS_SPACE = 0x10000
_READ_REQUEST = struct.Struct(">BHH")


class FunctionCode(IntEnum):
    """The public function codes the simulator answers."""

    READ_COILS = 0x01
    READ_DISCRETE_INPUTS = 0x02
    READ_HOLDING_REGISTERS = 0x03
    READ_INPUT_REGISTERS = 0x04
    WRITE_SINGLE_COIL = 0x05
    WRITE_SINGLE_REGISTER = 0x06
    WRITE_MULTIPLE_COILS = 0x0F
    WRITE_MULTIPLE_REGISTERS = 0x10


class ExceptionCode(IntEnum):
    """Exception codes of the Modbus Application Protocol (section 7)."""

    ILLEGAL_FUNCTION = 0x01
    ILLEGAL_DATA_ADDRESS = 0x02
    ILLEGAL_DATA_VALUE = 0x03
    SERVER_DEVICE_FAILURE = 0x04
    ACKNOWLEDGE = 0x05
    SERVER_DEVICE_BUSY = 0x06
    GATEWAY_PATH_UNAVAILABLE = 0x0A
    GATEWAY_TARGET_FAILED_TO_RESPOND = 0x0B


class Table(StrEnum):
    """The four Modbus data tables, named as in config.md's ``table`` key."""

    COILS = "coil"
    DISCRETE_INPUTS = "discrete"
    HOLDING_REGISTERS = "holding"
    INPUT_REGISTERS = "input"


_TABLE_OF_FUNCTION: dict[int, Table] = {
    FunctionCode.READ_COILS: Table.COILS,
    FunctionCode.READ_DISCRETE_INPUTS: Table.DISCRETE_INPUTS,
    FunctionCode.READ_HOLDING_REGISTERS: Table.HOLDING_REGISTERS,
    FunctionCode.READ_INPUT_REGISTERS: Table.INPUT_REGISTERS,
}
_BIT_TABLES = frozenset({Table.COILS, Table.DISCRETE_INPUTS})
_WRITE_FUNCTIONS = frozenset(
    {
        FunctionCode.WRITE_SINGLE_COIL,
        FunctionCode.WRITE_SINGLE_REGISTER,
        FunctionCode.WRITE_MULTIPLE_COILS,
        FunctionCode.WRITE_MULTIPLE_REGISTERS,
    }
)
_WRITE_HEAD = struct.Struct(">BHH")


class Device(Protocol):
    """What a PDU handler serves: one unit's data tables.

    ``address`` and ``count`` are already checked against the protocol's limits;
    a device answers with the data bytes of the response (register bytes as on
    the wire, or bits packed by :func:`pack_bits`) or an exception code.
    """

    @property
    def function_codes(self) -> frozenset[int]:
        """Function codes this device implements (others: exception 01)."""
        ...

    def read_bits(self, table: Table, address: int, count: int) -> bytes | ExceptionCode:
        """Packed bits ``address .. address + count - 1`` of a bit table."""
        ...

    def read_registers(self, table: Table, address: int, count: int) -> bytes | ExceptionCode:
        """``2 * count`` bytes of registers ``address .. address + count - 1``."""
        ...

    def write_bits(self, address: int, bits: list[bool]) -> ExceptionCode | None:
        """Set coils ``address ..``; None when written, else the exception."""
        ...

    def write_registers(self, address: int, data: bytes) -> ExceptionCode | None:
        """Store wire bytes in holding registers ``address ..``; None when written."""
        ...


def exception_response(function_code: int, code: int) -> bytes:
    """An exception response PDU: the function code with its high bit set, then ``code``."""
    return bytes(((function_code | 0x80) & 0xFF, code & 0xFF))


def pack_bits(bits: list[bool] | bytes | bytearray) -> bytes:
    """Bits packed eight to a byte, the first bit in the low bit of the first byte."""
    packed = bytearray((len(bits) + 7) // 8)
    for index, bit in enumerate(bits):
        if bit:
            packed[index >> 3] |= 1 << (index & 7)
    return bytes(packed)


def handle_pdu(device: Device, pdu: bytes) -> bytes:
    """Answer one request PDU (at least the function code) for ``device``.

    Never raises on any input: a malformed request gets an exception response
    (a read request of the wrong length: exception 03, ILLEGAL DATA VALUE).
    """
    if not pdu:
        raise ValueError("a PDU holds at least a function code")
    function_code = pdu[0]
    if function_code in _WRITE_FUNCTIONS:
        if function_code not in device.function_codes:
            return exception_response(function_code, ExceptionCode.ILLEGAL_FUNCTION)
        return _handle_write(device, pdu)
    table = _TABLE_OF_FUNCTION.get(function_code)
    if table is None or function_code not in device.function_codes:
        return exception_response(function_code, ExceptionCode.ILLEGAL_FUNCTION)
    if len(pdu) != _READ_REQUEST.size:
        return exception_response(function_code, ExceptionCode.ILLEGAL_DATA_VALUE)
    _, address, count = _READ_REQUEST.unpack(pdu)
    is_bits = table in _BIT_TABLES
    limit = MAX_READ_BITS if is_bits else MAX_READ_REGISTERS
    if not 1 <= count <= limit:
        return exception_response(function_code, ExceptionCode.ILLEGAL_DATA_VALUE)
    if address + count > _ADDRESS_SPACE:
        return exception_response(function_code, ExceptionCode.ILLEGAL_DATA_ADDRESS)
    if is_bits:
        answer = device.read_bits(table, address, count)
    else:
        answer = device.read_registers(table, address, count)
    if isinstance(answer, ExceptionCode):
        return exception_response(function_code, answer)
    return bytes((function_code, len(answer))) + answer


def _handle_write(device: Device, pdu: bytes) -> bytes:
    """Answer a write request (05, 06, 15, 16) with its echo or an exception."""
    function_code = pdu[0]
    if len(pdu) < _WRITE_HEAD.size:
        return exception_response(function_code, ExceptionCode.ILLEGAL_DATA_VALUE)
    _, address, second = _WRITE_HEAD.unpack_from(pdu)
    answer: ExceptionCode | None
    if function_code in (FunctionCode.WRITE_SINGLE_COIL, FunctionCode.WRITE_SINGLE_REGISTER):
        if len(pdu) != _WRITE_HEAD.size:
            return exception_response(function_code, ExceptionCode.ILLEGAL_DATA_VALUE)
        if function_code == FunctionCode.WRITE_SINGLE_COIL:
            if second not in (0, _COIL_ON):
                return exception_response(function_code, ExceptionCode.ILLEGAL_DATA_VALUE)
            answer = device.write_bits(address, [second == _COIL_ON])
        else:
            answer = device.write_registers(address, pdu[3:5])
        return pdu if answer is None else exception_response(function_code, answer)
    count = second
    bits = function_code == FunctionCode.WRITE_MULTIPLE_COILS
    limit = MAX_WRITE_BITS if bits else MAX_WRITE_REGISTERS
    byte_count = (count + 7) // 8 if bits else 2 * count
    if (
        not 1 <= count <= limit
        or len(pdu) < _WRITE_HEAD.size + 1
        or pdu[_WRITE_HEAD.size] != byte_count
        or len(pdu) != _WRITE_HEAD.size + 1 + byte_count
    ):
        return exception_response(function_code, ExceptionCode.ILLEGAL_DATA_VALUE)
    if address + count > _ADDRESS_SPACE:
        return exception_response(function_code, ExceptionCode.ILLEGAL_DATA_ADDRESS)
    data = pdu[_WRITE_HEAD.size + 1 :]
    if bits:
        values = [bool(data[i >> 3] >> (i & 7) & 1) for i in range(count)]
        answer = device.write_bits(address, values)
    else:
        answer = device.write_registers(address, data)
    if answer is not None:
        return exception_response(function_code, answer)
    return pdu[: _WRITE_HEAD.size]
