"""The Modbus driver's I/O shell: pymodbus's TCP client under citygate's control,
and Modbus RTU on a runtime-owned serial line (:class:`citygate.drivers.api.SerialLine`)
with citygate's own sans-I/O framing (:mod:`citygate.drivers.modbus.rtu`).

pymodbus's own retries and automatic reconnection are off: every request runs
under ``asyncio.timeout(timeout)`` and is retried ``retries`` times on timeout
only; a connection lost between polls is reopened once at the next poll, and
the supervisor's backoff governs anything beyond that.

Errors (all :class:`~citygate.drivers.api.DriverError`, never logged here):

* :class:`~citygate.drivers.api.TransportError` — refused, unreachable, no answer in
  time, connection closed;
* :class:`~citygate.drivers.api.DeviceError` — a Modbus exception reply, named by code
  (:class:`ModbusExceptionError`, which carries the code);
* :class:`~citygate.drivers.api.DecodeError` — a malformed reply (checked by
  :mod:`citygate.drivers.modbus.frame` before pymodbus sees it, and by register count).

Strict meters answer exception 02 (illegal data address) to a read that
bridges unused addresses. When a coalesced request that bridges a gap gets 02,
the driver splits it into its gap-free runs (:func:`~citygate.drivers.modbus.plan.split_at_gaps`),
reads them at once and keeps them in the device's plan from then on, logging
one info line per device. A 02 to a gap-free request is a DeviceError.

pymodbus logs every one of these conditions itself; its logger is held at
CRITICAL unless this module's logger is enabled for DEBUG.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from citygate.drivers.api import (
    DecodeError,
    DeviceContext,
    DeviceError,
    DriverFactory,
    Field,
    HubFactory,
    Measurement,
    ScanCommand,
    SerialLine,
    SerialWire,
    TransportError,
    __version__,
)
from citygate.drivers.modbus.config import FIELDS, ModbusConfig, configure
from citygate.drivers.modbus.decode import BIT_TABLES, Table
from citygate.drivers.modbus.frame import ReadRequestFrame, check_reply, parse_read_request
from citygate.drivers.modbus.plan import MAX_BITS, MAX_REGISTERS, ReadRequest, split_at_gaps
from citygate.drivers.modbus.rtu import (
    BadReply,
    ExceptionReply,
    RtuReplyFramer,
    encode_read_request,
)

__all__ = [
    "EXCEPTION_NAMES",
    "ILLEGAL_DATA_ADDRESS",
    "ModbusExceptionError",
    "ModbusFactory",
    "ModbusRtuDriver",
    "ModbusTcpDriver",
    "RtuSession",
    "factory",
    "read_raw",
    "read_raw_serial",
]

_log = logging.getLogger(__name__)

EXCEPTION_NAMES: Final[dict[int, str]] = {
    0x01: "illegal function",
    0x02: "illegal data address",
    0x03: "illegal data value",
    0x04: "server device failure",
    0x05: "acknowledge",
    0x06: "server device busy",
    0x08: "memory parity error",
    0x0A: "gateway path unavailable",
    0x0B: "gateway target device failed to respond",
}
"""Exception codes of the Modbus Application Protocol spec (v1.1b3, 7)."""
ILLEGAL_DATA_ADDRESS: Final = 0x02

_FUNCTION: Final[dict[Table, int]] = {
    "coil": 0x01,
    "discrete": 0x02,
    "holding": 0x03,
    "input": 0x04,
}
_WHAT: Final[dict[Table, str]] = {
    "coil": "coils",
    "discrete": "discrete inputs",
    "holding": "holding registers",
    "input": "input registers",
}
# pymodbus's own reply timeout stays longer than ours, so ours always fires first
# and pymodbus never counts a timeout, retries or drops the connection on its own.
_LIBRARY_TIMEOUT_MARGIN: Final = 5.0
# pymodbus 3.16 empties its receive buffer when it holds more than one largest frame
# (264 bytes), so a late reply to an abandoned request arriving in one segment with
# the current reply (two 80-register replies: 338 bytes) would lose both and the
# request would time out. With room for a few frames its framer skips the late ones
# by transaction id (retries ≤ 10: at most 11 late replies and the current one).
_RECEIVE_BUFFER_BYTES: Final = 16 * 264

_Reader = Callable[[AsyncModbusTcpClient, int, int, int], Awaitable[ModbusPDU]]
_READERS: Final[dict[Table, _Reader]] = {
    "coil": lambda c, a, n, u: c.read_coils(a, count=n, device_id=u),
    "discrete": lambda c, a, n, u: c.read_discrete_inputs(a, count=n, device_id=u),
    "holding": lambda c, a, n, u: c.read_holding_registers(a, count=n, device_id=u),
    "input": lambda c, a, n, u: c.read_input_registers(a, count=n, device_id=u),
}


def _seconds(value: float) -> str:
    return f"{value * 1000:g}ms" if value < 1 else f"{value:g}s"


def _span(table: Table, address: int, count: int) -> str:
    if count == 1:
        return f"{_WHAT[table]} 0x{address:04X}"
    return f"{_WHAT[table]} 0x{address:04X}–0x{address + count - 1:04X}"


class ModbusExceptionError(DeviceError):
    """The device answered a read with a Modbus exception response.

    ``code`` is the exception code; ``table``, ``address`` and ``count`` the read.
    """

    def __init__(self, code: int, table: Table, address: int, count: int) -> None:
        name = EXCEPTION_NAMES.get(code, "unknown exception")
        super().__init__(f"exception {code} ({name}) reading {_span(table, address, count)}")
        self.code = code
        self.table: Table = table
        self.address = address
        self.count = count


def _quiet_pymodbus() -> None:
    debug = _log.isEnabledFor(logging.DEBUG)
    logging.getLogger("pymodbus").setLevel(logging.NOTSET if debug else logging.CRITICAL)


def _widen_receive_buffer(client: AsyncModbusTcpClient) -> None:
    # Reaches into pymodbus's transaction manager (pinned to 3.16); without it a
    # late reply can cost the next request a timeout (see _RECEIVE_BUFFER_BYTES).
    client.ctx.max_buffer_size = max(client.ctx.max_buffer_size, _RECEIVE_BUFFER_BYTES)


class _TcpSession:
    """One TCP connection to one unit: connect, read with timeout and retries."""

    def __init__(self, host: str, port: int, unit: int, timeout: float, retries: int) -> None:
        self.host = host
        self.port = port
        self.unit = unit
        self.timeout = timeout
        self.retries = retries
        self._client: AsyncModbusTcpClient | None = None
        self._sent: ReadRequestFrame | None = None
        self._bad_reply: str | None = None
        self._waiting = False

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def connect(self) -> None:
        """Open a fresh connection; raise TransportError."""
        self.close()
        _quiet_pymodbus()
        client = AsyncModbusTcpClient(
            self.host,
            port=self.port,
            name=f"citygate {self.host}:{self.port}",
            reconnect_delay=0,
            timeout=self.timeout + _LIBRARY_TIMEOUT_MARGIN,
            retries=0,
            trace_packet=self._trace_packet,
        )
        _widen_receive_buffer(client)
        try:
            async with asyncio.timeout(self.timeout):
                connected = await client.connect()
        except TimeoutError:
            client.close()
            raise TransportError(
                f"no answer from {self.host}:{self.port} within {_seconds(self.timeout)}"
            ) from None
        if not connected:
            client.close()
            raise TransportError(
                f"cannot connect to {self.host}:{self.port} (refused, unreachable or unknown host)"
            )
        self._client = client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def read(self, table: Table, address: int, count: int) -> list[int] | list[bool]:
        """Read once (plus retries on timeout); raise a DriverError."""
        reader = _READERS[table]
        for _ in range(self.retries + 1):
            client = self._client
            if client is None or not client.connected:
                raise TransportError(f"connection to {self.host}:{self.port} closed by the device")
            self._bad_reply = None
            self._waiting = True
            try:
                async with asyncio.timeout(self.timeout):
                    response = await reader(client, address, count, self.unit)
            except TimeoutError:
                if self._bad_reply is not None:
                    raise self._malformed(table, address, count) from None
                if not client.connected:
                    raise TransportError(
                        f"connection to {self.host}:{self.port} closed while waiting"
                        f" for unit {self.unit}"
                    ) from None
                continue
            except DecodeError:
                raise self._malformed(table, address, count) from None
            except ConnectionException:
                raise TransportError(
                    f"connection to {self.host}:{self.port} closed by the device"
                ) from None
            except ModbusIOException as exc:
                raise DecodeError(
                    f"bad reply to reading {_span(table, address, count)}"
                    f" from {self.host}:{self.port} unit {self.unit}: {exc}"
                ) from None
            except ModbusException as exc:
                raise TransportError(f"{self.host}:{self.port} unit {self.unit}: {exc}") from None
            finally:
                self._waiting = False
            return self._values(response, table, address, count)
        attempts = f" ({self.retries + 1} attempts)" if self.retries else ""
        raise TransportError(
            f"no answer from {self.host}:{self.port} unit {self.unit}"
            f" within {_seconds(self.timeout)}{attempts}"
        )

    def _values(
        self, response: ModbusPDU, table: Table, address: int, count: int
    ) -> list[int] | list[bool]:
        if response.isError():
            raise ModbusExceptionError(response.exception_code, table, address, count)
        if table in BIT_TABLES:
            bits = list(response.bits)
            if len(bits) < count:
                raise DecodeError(
                    f"reply to reading {_span(table, address, count)} holds {len(bits)} bits"
                )
            return bits[:count]
        registers = list(response.registers)
        if len(registers) != count:
            raise DecodeError(
                f"reply to reading {_span(table, address, count)}"
                f" holds {len(registers)} registers, expected {count}"
            )
        return registers

    def _malformed(self, table: Table, address: int, count: int) -> DecodeError:
        return DecodeError(
            f"malformed reply to reading {_span(table, address, count)}"
            f" from {self.host}:{self.port} unit {self.unit}: {self._bad_reply}"
        )

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        # Runs inside pymodbus's protocol callbacks: must not raise.
        if sending:
            self._sent = parse_read_request(data)
            return data
        if self._bad_reply is not None:
            return b""
        if self._sent is None:
            return data
        problem = check_reply(data, self._sent)
        if problem is None:
            return data
        self._bad_reply = problem
        self._fail_waiting_request()
        return b""  # pymodbus never sees it; the buffer is reset by the next request

    def _fail_waiting_request(self) -> None:
        # Wake the pending request at once instead of at its timeout. This
        # reaches into pymodbus's transaction manager (pinned to 3.16); without
        # it the request still ends, as DecodeError, when its timeout expires.
        if not self._waiting or self._client is None:
            return
        future = getattr(getattr(self._client, "ctx", None), "response_future", None)
        if isinstance(future, asyncio.Future) and not future.done():
            future.set_exception(DecodeError(self._bad_reply or "malformed reply"))


class ModbusTcpDriver:
    """A Modbus TCP device, polled: ``async with driver: await driver.poll()``.

    ``device_id`` names the device in log lines (default: its address).
    """

    def __init__(self, config: ModbusConfig, device_id: str | None = None) -> None:
        if config.host is None:
            raise ValueError("ModbusTcpDriver needs a config with host")
        self.config = config
        self.device_id = device_id if device_id is not None else config.where
        self._session = _TcpSession(
            config.host, config.port, config.unit, config.timeout, config.retries
        )

    async def __aenter__(self) -> Self:
        await self._session.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._session.close()

    async def poll(self) -> list[Measurement]:
        """Read every register of the plan once; raise a DriverError on failure.

        A connection the device closed since the last poll is reopened once. A
        request bridging unused addresses that the device refuses (exception 02)
        is split into gap-free requests, read now and in every later poll.
        """
        if not self._session.connected:
            await self._session.connect()
        return await _read_plan(self.config, self.device_id, self._read)

    async def _read(self, request: ReadRequest) -> list[int] | list[bool]:
        return await self._session.read(request.table, request.address, request.count)


async def _read_plan(
    config: ModbusConfig,
    device_id: str,
    read: Callable[[ReadRequest], Awaitable[list[int] | list[bool]]],
) -> list[Measurement]:
    """Read a device's plan with ``read``, splitting requests a strict meter refuses."""
    plan = config.plan
    splits_before = plan.split_count
    replies: list[list[int] | list[bool]] = []
    split: list[tuple[ReadRequest, int]] = []
    try:
        for request in plan.requests:  # this poll's requests, even if the plan splits
            try:
                replies.append(await read(request))
            except ModbusExceptionError as exc:
                if exc.code != ILLEGAL_DATA_ADDRESS or len(split_at_gaps(request)) < 2:
                    raise
                parts = plan.split_request(len(replies))
                split.append((request, len(parts)))
                for part in parts:
                    replies.append(await read(part))
    finally:
        if split:
            _log_split(device_id, split, first=splits_before == 0)
    return plan.decode(replies)


def _log_split(device_id: str, split: list[tuple[ReadRequest, int]], *, first: bool) -> None:
    # One info line per device: later splits (a poll cut short earlier) at debug.
    _log.log(
        logging.INFO if first else logging.DEBUG,
        "%s: meter refuses reads across unused registers; reading %s from now on",
        device_id,
        ", ".join(
            f"0x{request.address:04X}–0x{request.end - 1:04X} in {parts} requests"
            for request, parts in split
        ),
    )


class RtuSession:
    """Reads of one unit on a serial line, one exchange per attempt, inside a turn
    the caller holds (``async with line.turn(...) as wire``)."""

    def __init__(self, line: SerialLine, unit: int, timeout: float, retries: int) -> None:
        self.line = line
        self.unit = unit
        self.timeout = timeout
        self.retries = retries

    @property
    def where(self) -> str:
        return f"serial {self.line.config.id} unit {self.unit}"

    async def read(
        self, wire: SerialWire, table: Table, address: int, count: int
    ) -> list[int] | list[bool]:
        """Read once (plus retries on silence); raise a DriverError."""
        function = _FUNCTION[table]
        request = encode_read_request(self.unit, function, address, count)
        for _ in range(self.retries + 1):
            framer = RtuReplyFramer(self.unit, function, count)
            await wire.exchange(request, framer, self.timeout)
            if framer.stray_bytes:
                wire.note("stray_bytes")
            if framer.wrong_units:
                wire.note("wrong_unit")
            outcome = framer.outcome
            if outcome is None:
                kind, message = framer.failure()
                if kind == "silent":
                    continue
                wire.note(kind)
                raise DecodeError(f"{message} reading {_span(table, address, count)}")
            if isinstance(outcome, BadReply):
                wire.note(outcome.kind)
                raise DecodeError(
                    f"{outcome.message} reading {_span(table, address, count)} from {self.where}"
                )
            if isinstance(outcome, ExceptionReply):
                wire.note("exception")
                raise ModbusExceptionError(outcome.code, table, address, count)
            if table in BIT_TABLES:
                return outcome.bits(count)
            return outcome.registers()
        attempts = f" ({self.retries + 1} attempts)" if self.retries else ""
        raise TransportError(
            f"no answer from {self.where} within {_seconds(self.timeout)}{attempts}"
        )


class ModbusRtuDriver:
    """A Modbus RTU device on a ``[[serial]]`` line: ``async with driver: await driver.poll()``.

    ``line`` is the runtime's owner of the line (entering the driver without one
    raises TransportError). A poll takes one turn on the line for all its
    requests; a request without an answer gives the line to the other devices
    before its retry.
    """

    def __init__(
        self, config: ModbusConfig, device_id: str | None = None, line: SerialLine | None = None
    ) -> None:
        if config.serial is None:
            raise ValueError("ModbusRtuDriver needs a config with serial")
        self.config = config
        self.device_id = device_id if device_id is not None else config.where
        self._line = line
        self._session: RtuSession | None = None

    async def __aenter__(self) -> Self:
        if self._line is None:
            assert self.config.serial is not None
            raise TransportError(
                f"serial {self.config.serial.id}: no owner of this line was handed to"
                f" {self.device_id} (DeviceContext.lines)"
            )
        self._session = RtuSession(
            self._line, self.config.unit, self.config.timeout, self.config.retries
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._session = None

    async def poll(self) -> list[Measurement]:
        """Read every register of the plan once, in one turn on the line."""
        session = self._session
        if session is None:
            raise RuntimeError("enter the driver (async with) before polling")
        async with session.line.turn(self.device_id) as wire:

            async def read(request: ReadRequest) -> list[int] | list[bool]:
                return await session.read(wire, request.table, request.address, request.count)

            return await _read_plan(self.config, self.device_id, read)

    async def read_raw(self, table: Table, address: int, count: int) -> list[int] | list[bool]:
        """Read ``count`` registers (or bits) once, outside the plan (the assistant, scan)."""
        session = self._session
        if session is None:
            raise RuntimeError("enter the driver (async with) before reading")
        async with session.line.turn(self.device_id) as wire:
            return await session.read(wire, table, address, count)


async def read_raw(
    host: str,
    port: int,
    unit: int,
    address: int,
    count: int,
    table: Table,
    timeout: float,  # noqa: ASYNC109 - per request (with retries), not a deadline
    *,
    retries: int = 1,
) -> list[int] | list[bool]:
    """Read ``count`` registers (or bits) once, for the byte-order assistant.

    Raises ValueError for arguments out of range, DriverError for the device.
    """
    _check_raw(unit, address, count, table, timeout)
    session = _TcpSession(host, port, unit, timeout, retries)
    await session.connect()
    try:
        return await session.read(table, address, count)
    finally:
        session.close()


def _check_raw(unit: int, address: int, count: int, table: Table, timeout: float) -> None:
    if table not in _FUNCTION:
        raise ValueError(f'table must be one of {", ".join(_FUNCTION)}, not "{table}"')
    limit = MAX_BITS if table in BIT_TABLES else MAX_REGISTERS
    if not 1 <= count <= limit:
        raise ValueError(f"count must be 1–{limit} for {_WHAT[table]}")
    if not 0 <= address <= 0xFFFF or address + count > 0x10000:
        raise ValueError("address and count must stay within 0x0000–0xFFFF")
    if not 0 <= unit <= 247:
        raise ValueError("unit must be 0–247")
    if timeout <= 0:
        raise ValueError("timeout must be more than 0")


async def read_raw_serial(
    line: SerialLine,
    unit: int,
    address: int,
    count: int,
    table: Table,
    timeout: float,  # noqa: ASYNC109 - per request (with retries), not a deadline
    *,
    retries: int = 1,
) -> list[int] | list[bool]:
    """Like :func:`read_raw`, on a serial line (Modbus RTU), in one turn."""
    _check_raw(unit, address, count, table, timeout)
    if unit == 0:
        raise ValueError("unit must be 1–247 on a serial line (0 is the broadcast address)")
    session = RtuSession(line, unit, timeout, retries)
    async with line.turn("scan") as wire:
        return await session.read(wire, table, address, count)


class ModbusFactory:
    """The ``modbus`` driver: energy meters over Modbus TCP or RTU."""

    name: str = "modbus"
    version: str = __version__  # a built-in driver ships with citygate
    default_interval: float = 10.0
    fields: Mapping[str, Field] = FIELDS
    hub: HubFactory | None = None

    @property
    def scan(self) -> ScanCommand:
        """``citygate scan modbus``: the unit probe and the byte-order assistant."""
        # Imported when asked: the scan module builds on this one (and only
        # `citygate scan` needs it).
        from citygate.drivers.modbus.scan import command  # noqa: PLC0415

        return command

    def configure(self, options: Mapping[str, object], context: DeviceContext) -> ModbusConfig:
        """Check a device's options; see :func:`citygate.drivers.modbus.config.configure`."""
        return configure(options, context)

    def create(
        self, config: ModbusConfig, context: DeviceContext
    ) -> ModbusTcpDriver | ModbusRtuDriver:
        """One driver per device."""
        if config.serial is not None:
            return ModbusRtuDriver(config, context.device_id, context.lines.get(config.serial.id))
        return ModbusTcpDriver(config, context.device_id)


factory: Final = ModbusFactory()
"""The entry point ``citygate.drivers: modbus``."""

if TYPE_CHECKING:
    _: DriverFactory = factory
