"""Fuzz targets: one function per decoder or framer, taking any bytes.

A target raises nothing but its decoder's documented error (:attr:`Target.documented`);
any other exception — or a broken documented property, raised as AssertionError — is a
finding. Most targets catch the documented error of each step themselves so that one
input reaches as much code as it can; what they let through is still only documented.

Inputs that carry parameters (the Modbus targets: the request, the chunking) start
with a few header bytes; :func:`rtu_input` and :func:`tcp_input` build them, so the
seeds in corpus/ and the targets agree on the layout.

:func:`check` runs one input: a documented error is fine, anything else propagates;
with ``timed=True`` (``make fuzz``) an input slower than :func:`budget` raises
:class:`SlowInput` after two confirming re-runs (a loaded machine is noisy).
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from citygate.config import ConfigError, load
from citygate.drivers.api import DecodeError, DriverFactory
from citygate.drivers.ble import bthome, pvvx, ruuvi
from citygate.drivers.ble.advert import Advert
from citygate.drivers.ble.decode import FORMAT_NAMES, AdvertDecoder
from citygate.drivers.ble.replay import ReplaySource
from citygate.drivers.mbus.decode import (
    Telegram,
    combine,
    decode_frame,
    decode_user_data,
    to_measurements,
)
from citygate.drivers.mbus.link import Ack, Discarded, Frame, FrameDecoder, NeedData, parse_frame
from citygate.drivers.modbus.decode import (
    BYTE_ORDERS,
    DATA_TYPES,
    TEXT_TYPES,
    BlockDecoder,
    RegisterSpec,
    register_width,
)
from citygate.drivers.modbus.frame import (
    MbapDecoder,
    MbapFrame,
    MbapFramingError,
    ReadRequestFrame,
    parse_read_reply,
)
from citygate.drivers.modbus.rtu import ExceptionReply, RegisterReply, RtuReplyFramer
from citygate.drivers.wmbus.decode import decode_telegram, inspect
from citygate.drivers.wmbus.frame import FrameFormat, WmbusError
from citygate.registry import factories

__all__ = [
    "TARGETS",
    "SlowInput",
    "Target",
    "budget",
    "check",
    "rtu_input",
    "tcp_input",
    "wmbus_input",
]

# The encrypted vector of bthome.io's encryption page: lets a fuzzed packet reach decryption.
BINDKEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
BLE_ADDRESS = "54:48:E6:8F:80:A5"


class SlowInput(Exception):
    """An input took longer than :func:`budget` allows (``make fuzz`` only)."""


def budget(n_bytes: int) -> float:
    """Seconds one input of ``n_bytes`` may take: 10 ms per KB, at least 50 ms (noise)."""
    return max(0.050, 0.010 * n_bytes / 1024)


@dataclass(frozen=True, slots=True)
class Target:
    """A fuzz target: its function and the errors its decoders document."""

    name: str
    run: Callable[[bytes], None]
    documented: tuple[type[BaseException], ...]
    max_len: int = 4096
    """Largest input worth generating (libFuzzer's -max_len)."""


# --------------------------------------------------------------------------- M-Bus


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _link_events(data: bytes, chunk: int) -> list[Frame | Ack | Discarded]:
    decoder = FrameDecoder()
    events: list[Frame | Ack | Discarded] = []
    for part in _chunks(data, chunk):
        decoder.feed(part)
        while not isinstance(event := decoder.next_event(), NeedData):
            events.append(event)
    events.extend(decoder.finish())
    assert decoder.pending == 0, "finish() left bytes in the buffer"
    return events


def _kept(events: list[Frame | Ack | Discarded]) -> tuple[list[Frame | Ack], bytes]:
    discarded = b"".join(e.data for e in events if isinstance(e, Discarded))
    return [e for e in events if not isinstance(e, Discarded)], discarded


def mbus_link(data: bytes) -> None:
    """M-Bus link layer: the stream decoder (whole and chunked), parse_frame, and the
    application layer of every RSP_UD frame found. Raises DecodeError only."""
    events = _link_events(data, len(data) or 1)
    chunk = 1 + len(data) % 7
    # The promise is about frames (and acks); garbage may be discarded in other slices.
    assert _kept(_link_events(data, chunk)) == _kept(events), (
        f"frames differ when fed {chunk} bytes at a time"
    )
    consumed = [e.raw if isinstance(e, Frame) else e.data if isinstance(e, Discarded) else b"\xe5"
                for e in events]  # fmt: skip
    assert b"".join(consumed) == data, "the events do not account for every byte"
    with contextlib.suppress(DecodeError):
        parse_frame(data)
    for event in events:
        if isinstance(event, Frame):
            with contextlib.suppress(DecodeError):
                _application(decode_frame(event))


def _application(telegram: Telegram) -> None:
    names = [record.name for record in telegram.records]
    assert len(set(names)) == len(names), f"record names not unique: {names}"
    to_measurements(telegram)
    to_measurements(telegram, frozenset(names[:1]))
    joined = combine([telegram, telegram])
    joined_names = [record.name for record in joined.records]
    assert len(set(joined_names)) == len(joined_names), f"names not unique: {joined_names}"


def mbus_app(data: bytes) -> None:
    """M-Bus application layer: the first byte is the CI field, the rest the user data.
    Raises DecodeError (MeterApplicationError is one) only."""
    if not data:
        return
    _application(decode_user_data(data[0], data[1:]))


# --------------------------------------------------------------------------- BLE


def bthome_target(data: bytes) -> None:
    """BTHome v2 service data, without and with a bindkey, through the repeat filter.
    Raises BTHomeError only."""
    seen = bthome.BTHomeFilter()
    for key in (None, BINDKEY):
        with contextlib.suppress(bthome.BTHomeError):
            packet = bthome.parse(data, BLE_ADDRESS, key)
            seen.accept(packet, 0.0)
            seen.accept(packet, 10.0)


def pvvx_target(data: bytes) -> None:
    """Service data 0x181A (pvvx / ATC1441), any layout. Raises PvvxError only."""
    for layout in (None, "atc", "pvvx"):
        with contextlib.suppress(pvvx.PvvxError):
            pvvx.parse(data, layout)


def ruuvi_target(data: bytes) -> None:
    """Ruuvi data format 5 manufacturer data. Raises RuuviError only."""
    ruuvi.parse(data)


async def _no_sleep(_seconds: float) -> None:
    return None


def capture(data: bytes) -> None:
    """A capture file (JSON lines) replayed by ReplaySource into an AdvertDecoder of every
    format. ReplaySource skips and counts bad lines; the decoders never raise."""
    decoders = [AdvertDecoder("auto"), *(AdvertDecoder(f, BINDKEY) for f in FORMAT_NAMES)]

    def deliver(advert: Advert) -> None:
        for decoder in decoders:
            decoder.decode(advert)

    with tempfile.TemporaryDirectory(prefix="fuzz-capture-") as directory:
        path = Path(directory) / "capture.jsonl"
        path.write_bytes(data)
        source = ReplaySource(path, sleep=_no_sleep, wall_clock=lambda: 0.0)
        # No awaits suspend (the sleep returns at once): the coroutine runs to its end here.
        coroutine = source.run(deliver, lambda: None)
        try:
            coroutine.send(None)
        except StopIteration:
            pass
        else:  # pragma: no cover - only if run() started waiting on something real
            coroutine.close()
            raise AssertionError("ReplaySource.run suspended")


# --------------------------------------------------------------------------- wireless M-Bus

# None, then the keys of real telegrams in tests/drivers/wmbus/vectors.py (kadenwater mode 5,
# Kamstrup ELL AES-CTR, Homegear mode 7): lets fuzzed telegrams reach decryption.
WMBUS_KEYS: tuple[bytes | None, ...] = (
    None,
    bytes.fromhex("82B0551191F51D66EFCDAB8967452301"),
    bytes.fromhex("28F64A24988064A079AA2C807D6102AE"),
    bytes.fromhex("00112233445566778899AABBCCDDEEFF"),
)
_WMBUS_FORMATS: tuple[FrameFormat | None, ...] = (None, "A", "B", None)


def wmbus_input(key: int, crc_present: bool, fmt: int, predecrypted: bool, frame: bytes) -> bytes:
    """A wmbus target input: one flag byte (key index bits 0–1, CRCs bit 2, frame format
    bits 3–4, predecrypted bit 5), then the telegram from its L-field on."""
    flags = key & 3 | crc_present << 2 | (fmt & 3) << 3 | predecrypted << 5
    return bytes((flags,)) + frame


def wmbus(data: bytes) -> None:
    """A wireless M-Bus telegram through every layer and the records; ``inspect`` too.
    Raises WmbusError only."""
    if not data:
        return
    flags, frame = data[0], data[1:]
    crc_present = bool(flags & 4)
    frame_format = _WMBUS_FORMATS[(flags >> 3) & 3]
    with contextlib.suppress(WmbusError):
        inspect(frame, crc_present, frame_format=frame_format)
    telegram = decode_telegram(
        frame,
        WMBUS_KEYS[flags & 3],
        crc_present,
        frame_format=frame_format,
        predecrypted=bool(flags & 32),
    )
    _application(telegram)


# --------------------------------------------------------------------------- Modbus


def _request(selector: int, count_byte: int) -> tuple[int, int]:
    """(function, count) from two header bytes: FC 01–04, 1–125 registers or 1–256 bits."""
    function = 1 + selector % 4
    return function, 1 + (count_byte % 125 if function >= 3 else count_byte)


def rtu_input(unit: int, function: int, count: int, chunk: int, stream: bytes) -> bytes:
    """The :func:`modbus_rtu` input reading ``count`` of FC ``function`` from ``unit``."""
    return bytes((unit, function - 1, count - 1, chunk)) + stream


def tcp_input(function: int, count: int, chunk: int, stream: bytes) -> bytes:
    """The :func:`modbus_tcp` input: a request of FC ``function`` for ``count``."""
    return bytes((function - 1, count - 1, chunk)) + stream


@functools.cache
def _block_decoders(count: int) -> tuple[BlockDecoder, ...]:
    """Decoders over ``count`` registers: every type in every order, packed and overlapping
    (strings of 1 to 5 registers, unscaled)."""
    decoders = []
    for order in BYTE_ORDERS:
        specs: list[RegisterSpec] = []
        address = 0
        for index, data_type in enumerate(DATA_TYPES * 2):
            text = data_type in TEXT_TYPES
            width = register_width(data_type, 1 + index % 5)
            if address + width > count:
                break
            specs.append(
                RegisterSpec(f"v{index}", address, "holding", data_type, order, count=width)
                if text
                else RegisterSpec(
                    f"v{index}", address, "holding", data_type, order, 0.1, -3.0, "kW"
                )
            )
            address += 1 if index % 3 == 0 else width  # some overlap, some pack
        decoders.append(BlockDecoder("holding", 0, count, specs))
    return tuple(decoders)


def _decode_registers(reply: RegisterReply | ExceptionReply, function: int, count: int) -> None:
    if not isinstance(reply, RegisterReply):
        return
    if function >= 3:
        words = reply.registers()
        for decoder in _block_decoders(count):
            decoder.decode(words)
    else:
        bits = reply.bits(count)
        BlockDecoder(
            "coil", 0, count, [RegisterSpec("b0", 0, "coil", "bool"),
                               RegisterSpec("b1", count - 1, "coil", "bool")]
        ).decode(bits)  # fmt: skip


def modbus_rtu(data: bytes) -> None:
    """RtuReplyFramer fed a received stream in chunks, then its verdict or failure().
    Header: unit, function selector, count byte, chunk size. Never raises."""
    if len(data) < 4:
        return
    unit = data[0]
    function, count = _request(data[1], data[2])
    chunk = 1 + data[3] % 64
    framer = RtuReplyFramer(unit, function, count)
    done = False
    for part in _chunks(data[4:], chunk):
        done = framer.feed(part)
        if done:
            break
    if done:
        assert framer.outcome is not None
        assert framer.feed(b"\x00") is True
        if isinstance(framer.outcome, RegisterReply | ExceptionReply):
            _decode_registers(framer.outcome, function, count)
    else:
        assert framer.outcome is None
        kind, _message = framer.failure()
        assert kind in ("silent", "truncated", "wrong_unit", "garbage"), kind


def _mbap_frames(stream: bytes, chunk: int) -> tuple[list[MbapFrame], str | None]:
    decoder = MbapDecoder()
    frames: list[MbapFrame] = []
    for part in _chunks(stream, chunk):
        try:
            frames.extend(decoder.feed(part))
        except MbapFramingError as exc:
            return frames, str(exc)
    if decoder.error is not None:
        return frames, str(decoder.error)
    return frames, None


def modbus_tcp(data: bytes) -> None:
    """MbapDecoder fed a stream whole and in chunks (same outcome), and every frame read as
    the reply to a request. Header: function selector, count byte, chunk size.
    Raises DecodeError (MbapFramingError is one) only."""
    if len(data) < 3:
        return
    function, count = _request(data[0], data[1])
    chunk = 1 + data[2] % 32
    stream = data[3:]
    whole = _mbap_frames(stream, len(stream) or 1)
    assert _mbap_frames(stream, chunk) == whole, f"outcome differs in chunks of {chunk}"
    for frame in whole[0]:
        request = ReadRequestFrame(frame.transaction_id, frame.unit, function, 0, count)
        with contextlib.suppress(DecodeError):
            _decode_registers(parse_read_reply(frame, request), function, count)


# --------------------------------------------------------------------------- config


@functools.cache
def _factories() -> Mapping[str, DriverFactory]:
    return factories()


_FILE_KEYS = frozenset({"include", "replay", "profile", "data_dir"})


def _leaves_sandbox(value: object, file_key: bool = False) -> bool:
    """True if a key naming files (include, *_file, replay, profile, data_dir) holds a path
    out of the config's directory (absolute, ~, ..): an operator may point anywhere, a
    fuzzer must not glob / or read /dev/zero. Other strings (a serial port) are kept."""
    if isinstance(value, str):
        return file_key and (value.startswith(("/", "~", "\\")) or ".." in value)
    if isinstance(value, dict):
        return any(
            _leaves_sandbox(v, file_key or k in _FILE_KEYS or k.endswith("file"))
            for k, v in value.items()
        )
    if isinstance(value, list):
        return any(_leaves_sandbox(v, file_key) for v in value)
    return False


def config(data: bytes) -> None:
    """gateway.toml written to a file and loaded with the built-in drivers.
    Raises ConfigError only."""
    try:
        parsed = tomllib.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        parsed = {}
    if _leaves_sandbox(parsed):
        return
    with tempfile.TemporaryDirectory(prefix="fuzz-config-") as directory:
        path = Path(directory) / "gateway.toml"
        path.write_bytes(data)
        os.chmod(path, 0o600)
        load(path, _factories(), environ={})


# --------------------------------------------------------------------------- the table

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("mbus_link", mbus_link, (DecodeError,), max_len=2048),
        Target("mbus_app", mbus_app, (DecodeError,), max_len=1024),
        Target("bthome", bthome_target, (bthome.BTHomeError,), max_len=256),
        Target("pvvx", pvvx_target, (pvvx.PvvxError,), max_len=64),
        Target("ruuvi", ruuvi_target, (ruuvi.RuuviError,), max_len=64),
        Target("wmbus", wmbus, (WmbusError,), max_len=300),
        Target("capture", capture, (), max_len=4096),
        Target("modbus_rtu", modbus_rtu, (), max_len=1024),
        Target("modbus_tcp", modbus_tcp, (DecodeError,), max_len=2048),
        Target("config", config, (ConfigError,), max_len=8192),
    )
}


def check(target: Target, data: bytes, *, timed: bool = False) -> None:
    """Run ``target`` on ``data``: its documented errors pass, anything else propagates;
    ``timed``: raise :class:`SlowInput` if it is slower than :func:`budget`, three times."""
    allowed = budget(len(data))
    best = float("inf")
    for _ in range(3 if timed else 1):
        started = time.perf_counter()
        with contextlib.suppress(*target.documented):
            target.run(data)
        best = min(best, time.perf_counter() - started)
        if best <= allowed:
            return
    if timed:
        raise SlowInput(
            f"{target.name}: {len(data)} bytes took {best * 1000:.1f} ms"
            f" (budget {allowed * 1000:.0f} ms)"
        )
