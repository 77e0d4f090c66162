"""Simulated Modbus energy meters, served over Modbus TCP or RTU (a pseudo-terminal).

Models (:func:`make_meter`): ``sdm630``, ``sdm120`` (Eastron register maps,
values from a simulated building supply), ``generic<N>`` (N random-walk float32
input registers) and ``typed`` (known values of every type in every word order,
48-bit integers and a string too). The meter models also serve the identity
registers of their documents (serial number, model, firmware version).

Layers, each usable alone:

* :func:`handle_pdu` / :class:`RequestHandler`: sans-I/O, PDU bytes in, PDU bytes out
  (reads, and writes of the holding registers and coils a model lets be written);
* :class:`MbapDecoder` / :func:`encode_adu`: Modbus TCP framing, sans-I/O;
* :class:`ModbusTcpSimulator`: the asyncio TCP server with fault injection;
* :class:`ModbusRtuSimulator`: RTU meters on one paced RS-485 line behind a pty.
"""

from __future__ import annotations

import re
import time

from ._banks import AddressRanges, BitBank, RegisterBank
from ._eastron import (
    EASTRON_UNMAPPED,
    SDM120_MAP_RANGES,
    SDM120_REGISTERS,
    SDM630_MAP_RANGES,
    SDM630_REGISTERS,
    Sdm120,
    Sdm630,
)
from ._mbap import (
    MAX_PDU_SIZE,
    NEED_DATA,
    Discarded,
    MbapDecoder,
    MbapFrame,
    MbapFramingError,
    NeedData,
    encode_adu,
)
from ._meter import (
    ADVANCE_PERIOD,
    UNMAPPED_POLICIES,
    Clock,
    Meter,
    Register,
    StaticMeter,
    Unmapped,
)
from ._others import OTHER_MODELS, MappedMeter, Row, make_other
from ._pdu import (
    MAX_READ_BITS,
    MAX_READ_REGISTERS,
    MAX_WRITE_BITS,
    MAX_WRITE_REGISTERS,
    Device,
    ExceptionCode,
    FunctionCode,
    Table,
    exception_response,
    handle_pdu,
    pack_bits,
)
from ._rtu import LineFault, ModbusRtuSimulator, RtuRequestDecoder, crc16, rtu_frame
from ._server import Fault, FaultKind, ModbusTcpSimulator, RequestHandler, UnknownUnit
from ._synthetic import (
    SPEC_COILS_ON,
    SPEC_DISCRETE_INPUTS_ON,
    TYPED_BASE_ADDRESS,
    TYPED_TEXT,
    TYPED_TEXT_ADDRESS,
    TYPED_TEXT_REGISTERS,
    TYPED_VALUES,
    GenericMeter,
    TypedMeter,
    typed_address,
)
from ._values import (
    ValueType,
    WordOrder,
    decode_text,
    decode_value,
    encode_value,
    rearrange,
    register_count,
)

__all__ = [
    "ADVANCE_PERIOD",
    "EASTRON_UNMAPPED",
    "MAX_PDU_SIZE",
    "MAX_READ_BITS",
    "MAX_READ_REGISTERS",
    "MAX_WRITE_BITS",
    "MAX_WRITE_REGISTERS",
    "MODELS",
    "NEED_DATA",
    "OTHER_MODELS",
    "SDM120_MAP_RANGES",
    "SDM120_REGISTERS",
    "SDM630_MAP_RANGES",
    "SDM630_REGISTERS",
    "SPEC_COILS_ON",
    "SPEC_DISCRETE_INPUTS_ON",
    "TYPED_BASE_ADDRESS",
    "TYPED_TEXT",
    "TYPED_TEXT_ADDRESS",
    "TYPED_TEXT_REGISTERS",
    "TYPED_VALUES",
    "UNMAPPED_POLICIES",
    "AddressRanges",
    "BitBank",
    "Clock",
    "Device",
    "Discarded",
    "ExceptionCode",
    "Fault",
    "FaultKind",
    "FunctionCode",
    "GenericMeter",
    "LineFault",
    "MappedMeter",
    "MbapDecoder",
    "MbapFrame",
    "MbapFramingError",
    "Meter",
    "ModbusRtuSimulator",
    "ModbusTcpSimulator",
    "NeedData",
    "Register",
    "RegisterBank",
    "RequestHandler",
    "Row",
    "RtuRequestDecoder",
    "Sdm120",
    "Sdm630",
    "StaticMeter",
    "Table",
    "TypedMeter",
    "UnknownUnit",
    "Unmapped",
    "ValueType",
    "WordOrder",
    "crc16",
    "decode_text",
    "decode_value",
    "encode_adu",
    "encode_value",
    "exception_response",
    "handle_pdu",
    "make_meter",
    "pack_bits",
    "rearrange",
    "register_count",
    "rtu_frame",
    "typed_address",
]

MODELS = ("sdm630", "sdm120", *OTHER_MODELS, "typed", "generic<N>", "generic<N>d<D>")
"""Model names :func:`make_meter` accepts (``generic<N>``: e.g. ``generic100``;
``generic<N>d<D>``: its values rounded to D decimals, e.g. ``generic20d1``)."""

_GENERIC = re.compile(r"generic([0-9]+)(?:d([0-9]))?")


def make_meter(
    model: str,
    seed: int = 0,
    *,
    clock: Clock = time.monotonic,
    speed: float = 1.0,
    start_time: float | None = None,
    unmapped: Unmapped | None = None,
) -> Meter:
    """A new meter of ``model``; ``seed`` picks its installation and noise.

    ``clock`` is the monotonic clock the state advances on, ``speed`` multiplies
    simulated time (energy, load curves; for demos), ``start_time`` is the Unix
    time at which the load curves start (default now, local time of day).
    ``unmapped`` (see :data:`Unmapped`): how reads covering unmapped registers
    are answered; None is the model's default (Eastron: ``"zero_in_map"``, the
    others: ``"exception"``). Raises ValueError for an unknown model or a bad
    parameter.
    """
    if model == "sdm630":
        return Sdm630(
            seed,
            clock=clock,
            speed=speed,
            start_time=start_time,
            unmapped=EASTRON_UNMAPPED if unmapped is None else unmapped,
        )
    if model == "sdm120":
        return Sdm120(
            seed,
            clock=clock,
            speed=speed,
            start_time=start_time,
            unmapped=EASTRON_UNMAPPED if unmapped is None else unmapped,
        )
    if model in OTHER_MODELS:
        return make_other(
            model, seed, clock=clock, speed=speed, start_time=start_time, unmapped=unmapped
        )
    if model == "typed":
        return TypedMeter(unmapped="exception" if unmapped is None else unmapped)
    generic = _GENERIC.fullmatch(model)
    if generic is not None:
        return GenericMeter(
            int(generic[1]),
            seed,
            clock=clock,
            speed=speed,
            unmapped="exception" if unmapped is None else unmapped,
            decimals=None if generic[2] is None else int(generic[2]),
        )
    raise ValueError(f"unknown meter model {model!r}; models: {', '.join(MODELS)}")
