"""The ``mbus`` driver's I/O shell: wired M-Bus meters on a ``[[serial]]`` line.

A poll takes one turn on the line (:class:`citygate.drivers.api.SerialLine`) and reads
one full readout (EN 13757-2):

* primary address: ``SND_NKE`` first when the link needs a reset (the first
  poll, and after any failed poll: a half-read multi-telegram readout starts
  again), answered by ``E5``; then ``REQ_UD2`` with the FCB set after the
  reset and toggled after every good telegram;
* secondary address: every poll selects the meter first (``SND_UD``, CI 0x52,
  to 253: ``E5``; another device on the line may have selected another meter
  since), then ``REQ_UD2`` to 253, FCB set after the selection;
* a telegram ending in DIF 0x1F has more records: ``REQ_UD2`` again with the
  FCB toggled until one does not (at most :data:`MAX_TELEGRAMS`); the
  telegrams are joined (:func:`~citygate.drivers.mbus.decode.combine`);
* every exchange is read by :class:`MbusReplyFramer` (the streaming
  :class:`~citygate.drivers.mbus.link.FrameDecoder`: length, checksum and stop byte
  checked); the reply timeout comes from the baud rate
  (:func:`~citygate.drivers.mbus.link.reply_timeout`: 330 bit times + 50 ms + margin +
  the reply's wire time); a request without a good answer is repeated
  ``retries`` times with the same FCB (the meter repeats its telegram).

Errors (all :class:`~citygate.drivers.api.DriverError`, never logged here):

* :class:`~citygate.drivers.api.TransportError` — no answer to any attempt, port gone;
* :class:`~citygate.drivers.api.DecodeError` — answers that stay garbled (bad checksum,
  collision garbage, a truncated frame) or a telegram that cannot be decoded;
* :class:`~citygate.drivers.mbus.decode.MeterApplicationError` — the meter answered
  CI 0x70 (also a :class:`~citygate.drivers.api.DeviceError`).

Bad answers are counted by kind (``silent``, ``checksum``, ``collision``,
``truncated``, ``wrong_address``, ``undecodable``) in the line's per-device
figures (``wire.note``) and in :meth:`MbusDriver.status_facts`, with the
meter's header (``"meter"``) and the unknown and invalid records of the last
readout. Those counts live in the factory per device id, so they survive the
driver being rebuilt after a transport failure.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Self

from citygate.drivers.api import (
    DecodeError,
    DeviceContext,
    DriverFactory,
    Field,
    HubFactory,
    Measurement,
    ReportsStatus,
    ScanCommand,
    SerialLine,
    SerialWire,
    TransportError,
    __version__,
)
from citygate.drivers.mbus import config as mbus_config
from citygate.drivers.mbus.config import MbusConfig, PrimaryAddress, SecondaryAddress
from citygate.drivers.mbus.decode import Telegram, combine, decode_frame, to_measurements
from citygate.drivers.mbus.link import (
    NETWORK_LAYER_ADDRESS,
    Ack,
    Discarded,
    Frame,
    FrameDecoder,
    NeedData,
    encode_req_ud2,
    encode_select,
    encode_snd_nke,
    reply_timeout,
)

__all__ = [
    "MAX_LONG_FRAME",
    "MAX_TELEGRAMS",
    "RETRIES",
    "DeviceStats",
    "MbusDriver",
    "MbusFactory",
    "MbusReplyFramer",
    "MbusSession",
    "ReportsStatus",
    "factory",
]

_log = logging.getLogger(__name__)

RETRIES: Final = 2
"""Attempts after the first for a request without a good answer."""
MAX_TELEGRAMS: Final = 16
"""Most telegrams of one multi-telegram readout (a meter that never ends is an error)."""
MAX_LONG_FRAME: Final = 261
"""Bytes of the longest long frame (L = 255)."""
PROBLEMS: Final = ("silent", "checksum", "collision", "truncated", "wrong_address", "undecodable")


# --------------------------------------------------------------------------- framing


Expect = Literal["ack", "frame"]


class MbusReplyFramer:
    """Finds the answer to one M-Bus request in the bytes received after it.

    A :class:`citygate.drivers.api.ReplyFramer`. ``expect="ack"`` waits for ``E5``,
    ``expect="frame"`` for a long frame (RSP_UD) from ``address`` (any address
    when None: the meter selected by secondary address answers with its own).
    A frame that fails its checksum is the verdict at once; anything else that
    is not the answer (garbage, frames from other addresses, an unexpected
    ``E5``) is set aside and reading goes on until the timeout.
    """

    def __init__(self, expect: Expect, address: int | None = None) -> None:
        self.expect: Expect = expect
        self.address = address
        self.answer: Frame | Ack | None = None
        self.bad_checksum = False
        # Counts, not lists: a babbling bus must not grow memory within one reply window.
        self.discarded_bytes = 0
        self.discarded_events = 0
        self.truncated = False  # an incomplete frame that started like one
        self.wrong_addresses: set[int] = set()
        self.stray_acks = 0
        self._decoder = FrameDecoder()

    def feed(self, data: bytes) -> bool:
        """Take received bytes; True once the answer (or a bad checksum) is in."""
        if self.answer is not None or self.bad_checksum:
            return True
        self._decoder.feed(data)
        while not isinstance(event := self._decoder.next_event(), NeedData):
            if self._take(event):
                return True
        return False

    def _take(self, event: Frame | Ack | Discarded) -> bool:
        if isinstance(event, Discarded):
            self._set_aside(event)
            if event.reason == "checksum mismatch":
                self.bad_checksum = True
                return True
            return False
        if isinstance(event, Ack):
            if self.expect == "ack":
                self.answer = event
                return True
            self.stray_acks += 1
            return False
        if self.expect == "frame" and event.kind == "long":
            if self.address is None or event.address == self.address:
                self.answer = event
                return True
            self.wrong_addresses.add(event.address)
            return False
        self._set_aside(Discarded(event.raw, f"unexpected {event.kind} frame"))
        return False

    def _set_aside(self, event: Discarded) -> None:
        self.discarded_events += 1
        self.discarded_bytes += len(event.data)
        if event.reason.startswith("incomplete frame") and event.data[:1] in (b"\x68", b"\x10"):
            self.truncated = True

    def finish(self) -> None:
        """The reply window is over: decode what is left (a false frame start in
        garbage may hide the answer behind it)."""
        if self.answer is not None or self.bad_checksum:
            return
        for event in self._decoder.finish():
            if self._take(event):
                return

    def failure(self) -> tuple[str, str]:
        """``(kind, message)`` of a reply window that ended without the answer:
        ``silent``, ``checksum``, ``truncated``, ``wrong_address`` or ``collision``."""
        self.finish()
        if self.bad_checksum:
            return "checksum", "a frame that fails its checksum"
        if self.truncated:
            got = self.discarded_bytes
            return "truncated", f"a truncated frame ({got} bytes received)"
        if self.discarded_events:
            garbage = self.discarded_bytes
            return "collision", f"{garbage} bytes of garbage (a collision on the bus?)"
        if self.wrong_addresses:
            shown = ", ".join(str(a) for a in sorted(self.wrong_addresses))
            return "wrong_address", f"an answer from address {shown}"
        if self.stray_acks:
            return "collision", "an E5 where a frame was due"
        return "silent", "no answer"


# --------------------------------------------------------------------------- the link


@dataclass(slots=True)
class DeviceStats:
    """One device's counts of bad answers (kept across driver rebuilds) and its last readout."""

    problems: collections.Counter[str] = field(default_factory=collections.Counter)
    meter: dict[str, str | int] | None = None
    unknown_records: int = 0
    invalid_records: int = 0
    telegrams: int = 0
    records_checked: bool = False  # the ``records`` filter was compared with a readout

    def facts(self) -> dict[str, Any]:
        """The device status keys: ``meter`` (once known) and ``mbus`` counts."""
        facts: dict[str, Any] = {}
        if self.meter is not None:
            facts["meter"] = dict(self.meter)
        facts["mbus"] = {
            **{kind: self.problems[kind] for kind in PROBLEMS},
            "unknown_records": self.unknown_records,
            "invalid_records": self.invalid_records,
            "telegrams": self.telegrams,
        }
        return facts


def _where(line: SerialLine, address: PrimaryAddress | SecondaryAddress) -> str:
    if isinstance(address, PrimaryAddress):
        return f"serial {line.config.id} address {address.value}"
    return f"serial {line.config.id} secondary address {address}"


def _id_matches(pattern: str, ident: str) -> bool:
    return len(pattern) == len(ident) and all(
        p in ("F", i) for p, i in zip(pattern, ident, strict=True)
    )


class MbusSession:
    """The link to one meter: resets, selection, FCB, retries. Used within a turn."""

    def __init__(
        self,
        line: SerialLine,
        address: PrimaryAddress | SecondaryAddress,
        stats: DeviceStats,
        *,
        retries: int = RETRIES,
    ) -> None:
        self.line = line
        self.address = address
        self.stats = stats
        self.retries = retries
        self.reset_needed = True
        self.fcb = True
        baudrate = line.config.baudrate
        self.ack_timeout = reply_timeout(baudrate, 1)
        self.frame_timeout = reply_timeout(baudrate, MAX_LONG_FRAME)

    @property
    def where(self) -> str:
        return _where(self.line, self.address)

    def _note(self, wire: SerialWire, kind: str) -> None:
        self.stats.problems[kind] += 1
        wire.note(kind)

    async def _exchange(
        self, wire: SerialWire, request: bytes, expect: Expect, address: int | None, what: str
    ) -> Frame | Ack:
        """One request, repeated unchanged up to ``retries`` times; the good answer."""
        timeout = self.ack_timeout if expect == "ack" else self.frame_timeout
        failure = ("silent", "no answer")
        for _ in range(self.retries + 1):
            framer = MbusReplyFramer(expect, address)
            await wire.exchange(request, framer, timeout)
            framer.finish()
            if framer.answer is not None:
                if framer.wrong_addresses:
                    self._note(wire, "wrong_address")
                return framer.answer
            failure = framer.failure()
            self._note(wire, failure[0])
        kind, message = failure
        attempts = f" ({self.retries + 1} attempts)" if self.retries else ""
        if kind == "silent":
            raise TransportError(f"no answer from {self.where} to {what}{attempts}")
        raise DecodeError(f"{message} from {self.where} to {what}{attempts}")

    async def read(self, wire: SerialWire) -> tuple[Telegram, int]:
        """One full readout: the joined telegram and how many telegrams it took."""
        try:
            return await self._read(wire)
        except BaseException:
            self.reset_needed = True  # start the next readout from its first telegram
            raise

    async def _read(self, wire: SerialWire) -> tuple[Telegram, int]:
        address = self.address
        if isinstance(address, SecondaryAddress):
            await self._exchange(wire, encode_select(str(address)), "ack", None, "a selection")
            target, expect_from = NETWORK_LAYER_ADDRESS, None
            self.fcb = True
        else:
            target = expect_from = address.value
            if self.reset_needed:
                await self._exchange(wire, encode_snd_nke(target), "ack", None, "SND_NKE")
                self.fcb = True
        self.reset_needed = False
        telegrams: list[Telegram] = []
        for _ in range(MAX_TELEGRAMS):
            answer = await self._exchange(
                wire, encode_req_ud2(target, self.fcb), "frame", expect_from, "REQ_UD2"
            )
            assert isinstance(answer, Frame)
            self.fcb = not self.fcb  # the meter took this one: the next is a new request
            try:
                telegram = decode_frame(answer)
            except DecodeError as exc:
                self._note(wire, "undecodable")
                raise DecodeError(f"{self.where}: {exc}") from None
            self._check_identity(telegram)
            telegrams.append(telegram)
            if not telegram.more_records_follow:
                return combine(telegrams), len(telegrams)
        raise DecodeError(f"{self.where}: more than {MAX_TELEGRAMS} telegrams in one readout")

    def _check_identity(self, telegram: Telegram) -> None:
        address = self.address
        if not isinstance(address, SecondaryAddress) or telegram.header is None:
            return
        if not _id_matches(address.id, telegram.header.id):
            raise DecodeError(
                f"{self.where}: answer from meter {telegram.header.id}, not the one selected"
            )


# --------------------------------------------------------------------------- the driver


class MbusDriver:
    """A wired M-Bus meter: ``async with driver: await driver.poll()``.

    ``line`` is the runtime's owner of the meter's line (entering the driver
    without one raises TransportError).
    """

    def __init__(
        self,
        config: MbusConfig,
        device_id: str | None = None,
        line: SerialLine | None = None,
        *,
        stats: DeviceStats | None = None,
        retries: int = RETRIES,
    ) -> None:
        self.config = config
        self.device_id = device_id if device_id is not None else _where_config(config)
        self.stats = stats if stats is not None else DeviceStats()
        self.retries = retries
        self._line = line
        self._session: MbusSession | None = None

    async def __aenter__(self) -> Self:
        if self._line is None:
            raise TransportError(
                f"serial {self.config.serial.id}: no owner of this line was handed to"
                f" {self.device_id} (DeviceContext.lines)"
            )
        self._session = MbusSession(
            self._line, self.config.address, self.stats, retries=self.retries
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._session = None

    async def read_telegram(self) -> Telegram:
        """One full readout, in one turn on the line; raise a DriverError."""
        session = self._session
        if session is None:
            raise RuntimeError("enter the driver (async with) before polling")
        async with session.line.turn(self.device_id) as wire:
            telegram, count = await session.read(wire)
        stats = self.stats
        stats.telegrams = count
        if telegram.header is not None:
            stats.meter = telegram.header.meter_info()
        stats.unknown_records = sum(1 for r in telegram.records if r.quantity.startswith("vif_"))
        stats.invalid_records = sum(1 for r in telegram.records if r.value is None)
        return telegram

    async def poll(self) -> list[Measurement]:
        """Read the meter once: ``meter_status`` and its records (``records`` filter applied)."""
        telegram = await self.read_telegram()
        keep = self.config.records
        if keep is not None and not self.stats.records_checked:
            self.stats.records_checked = True
            missing = sorted(keep - {r.name for r in telegram.records})
            if missing:
                _log.warning(
                    "%s: records %s are not in the meter's readout (it sends %s)",
                    self.device_id,
                    ", ".join(missing),
                    ", ".join(r.name for r in telegram.records),
                )
        return to_measurements(telegram, keep)

    def status_facts(self) -> dict[str, Any]:
        """``{"meter": {id, manufacturer, version, medium}, "mbus": {counts}}``."""
        return self.stats.facts()


def _where_config(config: MbusConfig) -> str:
    address = config.address
    if isinstance(address, PrimaryAddress):
        return f"serial {config.serial.id} address {address.value}"
    return f"serial {config.serial.id} secondary address {address}"


class MbusFactory:
    """The ``mbus`` driver: wired M-Bus water and heat meters (EN 13757-2/-3)."""

    name: str = "mbus"
    version: str = __version__  # a built-in driver ships with citygate
    default_interval: float = mbus_config.DEFAULT_INTERVAL
    fields: Mapping[str, Field] = mbus_config.FIELDS
    hub: HubFactory | None = None

    def __init__(self) -> None:
        self._stats: dict[str, DeviceStats] = {}

    def configure(self, options: Mapping[str, Any], context: DeviceContext) -> MbusConfig:
        """Check a device's options; see :func:`citygate.drivers.mbus.config.configure`."""
        return mbus_config.configure(options, context)

    def create(self, config: MbusConfig, context: DeviceContext) -> MbusDriver:
        """One driver per device, on the runtime's owner of its line."""
        stats = self._stats.setdefault(context.device_id, DeviceStats())
        return MbusDriver(
            config, context.device_id, context.lines.get(config.serial.id), stats=stats
        )

    def expected_readings(self, config: MbusConfig) -> int | None:
        """Readings per sample (``citygate check`` sizing): the kept records and
        ``meter_status``; None without ``records`` (only a readout can tell)."""
        return None if config.records is None else len(config.records) + 1

    @property
    def scan(self) -> ScanCommand:
        """``citygate scan mbus``: the primary probe and the secondary search."""
        # Imported when asked: the scan module builds on this one (and only
        # `citygate scan` needs it).
        from citygate.drivers.mbus.scan import command  # noqa: PLC0415

        return command


factory: Final = MbusFactory()
"""The entry point ``citygate.drivers: mbus``."""

if TYPE_CHECKING:
    _: DriverFactory = factory
