"""A simulated IMST iM871A wireless M-Bus stick on a pseudo-terminal, and the air it hears.

:class:`Air` (sans-I/O) schedules the meters' telegrams in simulated time, each at
its own interval with a little jitter. :class:`WmbusSimulator` is the stick: on its
pty it answers the host's HCI requests (:mod:`._hci`) —

* ``PING_REQ`` → ``PING_RSP``;
* ``GET_DEVICEINFO_REQ`` → module type 0x33 (iM871A), device mode 0 (other),
  firmware 0x15, HCI version 0x01, a 4-byte UID;
* ``SET_CONFIG_REQ`` (NVM flag, IIFlag1 and its fields — device mode, link mode,
  C, M, A, version, medium, channel —, IIFlag2 and its fields — power, data rate, RX
  window, power saving, auto RSSI, auto time stamp, LED, RTC) → ``SET_CONFIG_RSP``
  status 0x00, or 0x01 for a request it cannot apply (unknown link mode, truncated);
* ``GET_CONFIG_REQ`` → device mode, link mode, auto RSSI, auto time stamp;
* ``RESET_REQ`` → ``RESET_RSP``; the configuration falls back to what was saved;

and sends every telegram it hears as ``RADIOLINK_MSG_WMBUSMSG_IND`` (RSSI byte
attached when auto RSSI is on, a millisecond time stamp when auto time stamp is on,
always a CRC). The stick starts in link mode S2 with auto RSSI off — a mode none of
the demo meters sends in: a driver must configure it. With ``corrupt_rate`` > 0 that
share of the indications arrive with one byte damaged (their CRC no longer matches,
as after noise on the serial line).

Time: the air runs ``fast`` times faster than the wall clock, intervals included.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import json
import logging
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Final

from .._pty import PtyLine
from . import _hci as hci
from ._meters import DEMO_METERS, MeterSpec, Transmission, WirelessMeter, make_meter

__all__ = ["Air", "StickConfig", "WmbusSimulator", "capture_line", "write_capture"]

logger = logging.getLogger("citygate_sim.wmbus")

_JITTER: Final = 0.03
_MODULE_IM871A: Final = 0x33
_FIRMWARE: Final = 0x15
_HCI_VERSION: Final = 0x01
_STATUS_OK: Final = 0x00
_STATUS_ERROR: Final = 0x01
# IIFlag1 fields in order: (flag, bytes).
_IIFLAG1_FIELDS: Final = (
    ("device_mode", 1),
    ("link_mode", 1),
    ("c_field", 1),
    ("manufacturer", 2),
    ("ident", 4),
    ("version", 1),
    ("medium", 1),
    ("channel", 1),
)
_IIFLAG2_FIELDS: Final = (
    ("power", 1),
    ("data_rate", 1),
    ("rx_window", 1),
    ("power_saving", 1),
    ("auto_rssi", 1),
    ("auto_timestamp", 1),
    ("led", 1),
    ("rtc", 1),
)


def capture_line(tx: Transmission) -> str:
    """One line of a replay capture (config.md ``[[wmbus]] replay``)."""
    record = {"t": round(tx.t, 3), "hex": tx.telegram.hex(), "rssi": tx.rssi_dbm}
    return json.dumps(record, separators=(", ", ": "))


class Air:
    """The meters' telegrams in time order (simulated Unix time), sans-I/O."""

    def __init__(
        self, specs: Sequence[MeterSpec] = DEMO_METERS, *, seed: int = 0, start: float | None = None
    ) -> None:
        self.start = time.time() if start is None else start
        self.meters: list[WirelessMeter] = [
            make_meter(spec, seed=seed * 1000 + i, start=self.start) for i, spec in enumerate(specs)
        ]
        self._rng = random.Random(seed)
        # The first telegram of each meter somewhere in its first interval.
        self._queue = [
            (self.start + self._rng.uniform(0, m.spec.interval), i)
            for i, m in enumerate(self.meters)
        ]
        heapq.heapify(self._queue)

    def next_due(self) -> float | None:
        """When the next telegram goes out (None: no meters)."""
        return self._queue[0][0] if self._queue else None

    def until(self, t: float) -> Iterator[Transmission]:
        """Every telegram sent up to ``t``, in time order."""
        while self._queue and self._queue[0][0] <= t:
            due, index = heapq.heappop(self._queue)
            meter = self.meters[index]
            interval = meter.spec.interval
            gap = interval * self._rng.uniform(1 - _JITTER, 1 + _JITTER)
            heapq.heappush(self._queue, (due + gap, index))
            yield meter.transmit(due)


def write_capture(
    stream: IO[str],
    seconds: float,
    specs: Sequence[MeterSpec] = DEMO_METERS,
    *,
    seed: int = 0,
    start: float | None = None,
) -> int:
    """Write ``seconds`` of simulated telegrams as a replay capture; return how many."""
    air = Air(specs, seed=seed, start=start)
    count = 0
    for tx in air.until(air.start + seconds):
        stream.write(capture_line(tx) + "\n")
        count += 1
    return count


@dataclass(frozen=True, slots=True)
class StickConfig:
    """The part of the stick's configuration the simulator acts on."""

    device_mode: int = 0  # 0: other (a collector), 1: meter
    link_mode: int = 0x02  # S2
    auto_rssi: bool = False
    auto_timestamp: bool = False

    @property
    def link_mode_name(self) -> str:
        """``T1``, ``C1a`` …"""
        return hci.LINK_MODES.get(self.link_mode, f"0x{self.link_mode:02X}")

    def hears(self, radio_mode: str) -> bool:
        """Does a stick in this link mode hear a meter sending in ``radio_mode``?"""
        return radio_mode in hci.HEARD.get(self.link_mode_name, frozenset())


class WmbusSimulator(PtyLine):
    """An iM871A with meters around it, on a pty (see the module docstring).

    ``async with`` it; :attr:`port` is what a client opens. ``record``: a file that
    gets every telegram on the air as a replay capture line (whatever the stick's
    mode, undamaged).
    """

    _logger = logger

    def __init__(
        self,
        specs: Sequence[MeterSpec] = DEMO_METERS,
        *,
        fast: float = 1.0,
        corrupt_rate: float = 0.0,
        seed: int = 0,
        link: Path | str | None = None,
        record: Path | str | None = None,
        start: float | None = None,
        config: StickConfig | None = None,
        baudrate: int = 57600,
    ) -> None:
        if not fast > 0:
            raise ValueError("fast must be positive")
        if not 0.0 <= corrupt_rate <= 1.0:
            raise ValueError("corrupt_rate must be within 0..1")
        super().__init__(baudrate=baudrate, character_bits=10, turnaround=0.002, link=link)
        self.air = Air(specs, seed=seed, start=start)
        self.fast = fast
        self.corrupt_rate = corrupt_rate
        self.record = Path(record) if record is not None else None
        self.config = config or StickConfig()
        self.saved_config = self.config
        self.uid = random.Random(seed).getrandbits(32)
        self.requests: collections.Counter[str] = collections.Counter()
        """Valid requests received, by kind (``ping``, ``set_config`` … ``other``)."""
        self.indications = 0
        """Telegrams sent to the host (damaged ones included)."""
        self.corrupted = 0
        self.not_heard = 0
        """Telegrams on the air the stick's link mode does not receive."""
        self.sent: collections.deque[Transmission] = collections.deque(maxlen=1000)
        """The latest telegrams sent to the host (undamaged), for tests."""
        self._rng = random.Random(seed + 1)
        self._decoder = hci.HciDecoder()
        self._timer: asyncio.TimerHandle | None = None
        self._loop_start = 0.0
        self._record_stream: IO[str] | None = None

    # -- the host's side (sans-I/O) ---------------------------------------------------

    @property
    def bad_requests(self) -> int:
        """Requests dropped for a CRC that did not match."""
        return self._decoder.bad_crc

    def answer(self, frame: hci.HciFrame) -> bytes | None:
        """The stick's reply to one HCI request (None: it does not answer)."""
        if frame.endpoint != hci.DEVMGMT:
            self.requests["other"] += 1
            return None
        msg = frame.msg_id
        if msg == hci.PING_REQ:
            self.requests["ping"] += 1
            return hci.encode_frame(hci.DEVMGMT, hci.PING_RSP)
        if msg == hci.GET_DEVICEINFO_REQ:
            self.requests["device_info"] += 1
            info = bytes((_MODULE_IM871A, self.config.device_mode, _FIRMWARE, _HCI_VERSION))
            return hci.encode_frame(
                hci.DEVMGMT, hci.GET_DEVICEINFO_RSP, info + self.uid.to_bytes(4, "little")
            )
        if msg == hci.SET_CONFIG_REQ:
            self.requests["set_config"] += 1
            status = self._set_config(frame.payload)
            return hci.encode_frame(hci.DEVMGMT, hci.SET_CONFIG_RSP, bytes((status,)))
        if msg == hci.GET_CONFIG_REQ:
            self.requests["get_config"] += 1
            c = self.config
            payload = bytes(
                (0x03, c.device_mode, c.link_mode, 0x30, int(c.auto_rssi), int(c.auto_timestamp))
            )
            return hci.encode_frame(hci.DEVMGMT, hci.GET_CONFIG_RSP, payload)
        if msg == hci.RESET_REQ:
            self.requests["reset"] += 1
            self.config = self.saved_config
            return hci.encode_frame(hci.DEVMGMT, hci.RESET_RSP, bytes((_STATUS_OK,)))
        self.requests["other"] += 1
        return None

    def _set_config(self, payload: bytes) -> int:
        fields: dict[str, int] = {}
        at = 0

        def take(size: int) -> int | None:
            nonlocal at
            if at + size > len(payload):
                return None
            value = int.from_bytes(payload[at : at + size], "little")
            at += size
            return value

        save = take(1)
        for table in (_IIFLAG1_FIELDS, _IIFLAG2_FIELDS):
            flags = take(1)
            if flags is None:
                if table is _IIFLAG2_FIELDS:
                    break  # IIFlag2 may be left out
                return _STATUS_ERROR
            for bit, (name, size) in enumerate(table):
                if flags & (1 << bit):
                    value = take(size)
                    if value is None:
                        return _STATUS_ERROR
                    fields[name] = value
        if save is None or at != len(payload):
            return _STATUS_ERROR
        link_mode = fields.get("link_mode", self.config.link_mode)
        if link_mode not in hci.LINK_MODES or fields.get("device_mode", 0) not in (0, 1):
            return _STATUS_ERROR
        config = replace(
            self.config,
            device_mode=fields.get("device_mode", self.config.device_mode),
            link_mode=link_mode,
            auto_rssi=bool(fields.get("auto_rssi", self.config.auto_rssi)),
            auto_timestamp=bool(fields.get("auto_timestamp", self.config.auto_timestamp)),
        )
        self.config = config
        if save:
            self.saved_config = config
        logger.info(
            "configured: link mode %s, RSSI %s%s",
            config.link_mode_name,
            "on" if config.auto_rssi else "off",
            " (saved)" if save else "",
        )
        return _STATUS_OK

    def indication(self, tx: Transmission, timestamp: int | None = None) -> bytes | None:
        """The ``WMBUSMSG_IND`` for ``tx`` (None: the stick does not hear it), maybe damaged."""
        if not self.config.hears(tx.spec.mode):
            self.not_heard += 1
            return None
        frame = hci.encode_frame(
            hci.RADIOLINK,
            hci.WMBUSMSG_IND,
            tx.telegram[1:],  # from C on: LEN is the L-field
            timestamp=timestamp if self.config.auto_timestamp else None,
            rssi=hci.rssi_byte(tx.rssi_dbm) if self.config.auto_rssi else None,
        )
        self.indications += 1
        self.sent.append(tx)
        if self.corrupt_rate and self._rng.random() < self.corrupt_rate:
            self.corrupted += 1
            damaged = bytearray(frame)
            damaged[4 + self._rng.randrange(len(tx.telegram) - 1)] ^= self._rng.randrange(1, 256)
            return bytes(damaged)
        return frame

    # -- time and the wire ------------------------------------------------------------

    def sim_time(self) -> float:
        """Simulated Unix time now."""
        return self.air.start + (self._now() - self._loop_start) * self.fast

    async def start(self) -> None:
        """Create the pty and start the meters sending."""
        if self.record is not None:
            self._record_stream = self.record.open("w", encoding="utf-8")
        try:
            await super().start()
        except BaseException:
            if self._record_stream is not None:
                self._record_stream.close()
                self._record_stream = None
            raise
        self._loop_start = self._now()
        self._schedule_next()

    async def close(self) -> None:
        """Stop sending; the pty (and the link) go away."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._record_stream is not None:
            self._record_stream.close()
            self._record_stream = None
        await super().close()

    def _schedule_next(self) -> None:
        assert self._loop is not None
        due = self.air.next_due()
        if due is None:
            return
        at = self._loop_start + (due - self.air.start) / self.fast
        self._timer = self._loop.call_at(at, self._emit)

    def _emit(self) -> None:
        self._timer = None
        if self._loop is None:
            return
        now = self._now()
        stamp = int((now - self._loop_start) * 1000)
        for tx in self.air.until(self.sim_time()):
            if self._record_stream is not None:
                self._record_stream.write(capture_line(tx) + "\n")
                self._record_stream.flush()
            frame = self.indication(tx, stamp)
            logger.debug(
                "meter %08d: %d-byte telegram, %d dBm%s",
                tx.spec.ident,
                len(tx.telegram),
                tx.rssi_dbm,
                "" if frame is not None else f" (not heard in {self.config.link_mode_name})",
            )
            if frame is not None:
                self._send(frame, now)
        self._schedule_next()

    def _received(self, data: bytes, now: float) -> None:
        received_at = self._arrived(data, now)
        for frame in self._decoder.feed(data):
            reply = self.answer(frame)
            logger.debug(
                "request endpoint %d message 0x%02X -> %s",
                frame.endpoint,
                frame.msg_id,
                "no answer" if reply is None else reply.hex(" "),
            )
            if reply is not None:
                self._send(reply, received_at + self.turnaround)
