"""``citygate top``: a live full-screen view of a running agent, read from ``data_dir``.

The header says which gateway, whether the agent runs, the broker link and the backlog; one
line per device (state, age of its last sample, errors, up to three key readings); ↑/↓ select
a device, Enter/→ shows all its readings, Esc/← goes back, PgUp/PgDn scroll, ``q`` quits.
``citygate demo`` shows the same view.

Where the figures come from: the agent writes ``top.json`` only while this view touches
``top.watch`` (agent/livesnap.py); without a fresh snapshot (the agent is not running, or the
file is garbled) the view says so and shows the backlog and device states from the buffer, as
``citygate status`` does.

Drawn with rich's ``Live`` on the alternate screen: each frame overwrites the previous in
place (no clearing, no flicker), only when its text changed, and leaving restores the
terminal. rich rather than textual: it is one small pure-Python dependency that draws and
nothing else, starts in a fraction of textual's time on a gateway's CPU, and needs no mouse or
special terminal; the few keys are read here, from the terminal in cbreak mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from citygate.app import BUFFER_FILE
from citygate.buffer import BufferError, open_readonly_stats
from citygate.config import Config
from citygate.drivers.api import Value
from citygate.livesnap import Snapshot, read_snapshot, touch_watch

__all__ = [
    "DeviceRow",
    "TopModel",
    "TopSource",
    "TopState",
    "decode_keys",
    "format_value",
    "human_unit",
    "key_readings",
    "render_lines",
    "run_top",
]

REFRESH_S: Final = 0.25  # the snapshot is read this often (the agent writes it once a second)
BUFFER_EVERY_S: Final = 1.0  # without live data, the buffer is read at most this often
TOUCH_S: Final = 1.0
STALE_S: Final = 3.0  # an older snapshot: the agent does not run (or does not see us)
GRACE_S: Final = 2.5  # how long the agent may take to notice a new viewer
GATHER_TIMEOUT_S: Final = 5.0

HUMAN_UNITS: Final[dict[str, str]] = {
    "Cel": "°C",
    "m3": "m³",
    "m3/h": "m³/h",
    "%RH": "%",
    "/": "",
    "ug/m3": "µg/m³",
    "m/s2": "m/s²",
    "deg": "°",
    "count": "",
}
"""SenML symbols (quantities.md) as a person reads them; on the wire they stay symbols."""

# Per driver: groups of reading names; the first name present in each group is a key reading.
KEY_READINGS: Final[dict[str, tuple[tuple[str, ...], ...]]] = {
    "modbus": (
        ("active_power", "power"),
        ("energy_import", "energy_total", "energy"),
        ("voltage_avg", "voltage", "voltage_l1"),
    ),
    "mbus": (("volume",), ("volume_flow",), ("energy",), ("power",), ("flow_temperature",)),
    "wmbus": (("volume",), ("volume_flow",), ("energy",), ("power",), ("flow_temperature",)),
    "ble": (("temperature",), ("humidity",), ("battery",), ("pressure",)),
}
KEYS_SHOWN: Final = 3

Reading = tuple[str, Value, str | None]


# ---------------------------------------------------------------------------- values


def human_unit(unit: str | None) -> str:
    """The unit as shown to a person: ``Cel`` → ``°C``, ``/`` → nothing."""
    if unit is None:
        return ""
    return HUMAN_UNITS.get(unit, unit)


def format_value(value: Value, unit: str | None) -> str:
    """``value`` with its human unit: ``21.5 °C``, ``0.925`` (a power factor), ``true``."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = f"{value:.6g}"
    else:
        text = str(value)
    shown = human_unit(unit)
    return f"{text} {shown}" if shown else text


def key_readings(driver: str, readings: Sequence[Reading]) -> list[Reading]:
    """Up to three readings that say most about a device of ``driver``: power and energy for
    a meter, volume and flow for water, temperature and humidity for a sensor; then the first
    readings."""
    by_name = {r[0]: r for r in readings}
    chosen: list[Reading] = []
    for group in KEY_READINGS.get(driver, ()):
        for name in group:
            if name in by_name:
                chosen.append(by_name[name])
                break
        if len(chosen) == KEYS_SHOWN:
            return chosen
    for reading in readings:
        if len(chosen) == KEYS_SHOWN:
            break
        if reading not in chosen:
            chosen.append(reading)
    return chosen


def _age(now: float, then: float | None) -> str:
    if then is None:
        return "-"
    seconds = max(0.0, now - then)
    if seconds < 100:
        return f"{seconds:.0f}s"
    if seconds < 6000:
        return f"{seconds / 60:.0f}m"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


# ---------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class DeviceRow:
    """One device as the view shows it."""

    id: str
    driver: str
    state: str
    error: str | None = None
    errors_total: int | None = None
    last_sample: float | None = None
    readings: tuple[Reading, ...] = ()
    more: int = 0


@dataclass(frozen=True, slots=True)
class TopModel:
    """Everything one frame shows."""

    gateway: str
    agent: str  # "running", or why there is no live data
    live: bool
    connected: bool | None = None
    broker: str = ""
    backlog_samples: int | None = None
    backlog_bytes: int | None = None
    oldest_unsent_age_s: float | None = None
    dropped_samples: int | None = None
    refused_samples: int | None = None
    devices: tuple[DeviceRow, ...] = ()


def _from_snapshot(snapshot: Snapshot) -> TopModel:
    return TopModel(
        gateway=snapshot.gateway,
        agent="running",
        live=True,
        connected=snapshot.connected,
        broker=snapshot.broker,
        backlog_samples=snapshot.backlog_samples,
        backlog_bytes=snapshot.backlog_bytes,
        oldest_unsent_age_s=snapshot.oldest_unsent_age_s,
        dropped_samples=snapshot.dropped_samples,
        refused_samples=snapshot.refused_samples,
        devices=tuple(
            DeviceRow(
                d.id, d.driver, d.state, d.error, d.errors_total, d.last_sample, d.readings, d.more
            )
            for d in snapshot.devices
        ),
    )


def _saved_status(raw: str | None) -> dict[str, Any]:
    try:
        status = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return status if isinstance(status, dict) else {}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class TopSource:
    """Gathers a :class:`TopModel` from ``data_dir``: the live snapshot, else the buffer."""

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time) -> None:
        self.data_dir = config.gateway.data_dir
        self.gateway = config.gateway.id
        self.broker = config.mqtt.url
        self.devices = [(d.id, d.driver) for d in config.devices]
        self._clock = clock
        self._started = clock()
        self._touched = -TOUCH_S
        self._touch_error: str | None = None
        self._busy = threading.Lock()  # gather runs in a thread; never two at once
        self._from_buffer_at = -BUFFER_EVERY_S
        self._buffer_model: TopModel | None = None

    def gather(self) -> TopModel | None:
        """The model now; None if a previous gather still hangs on the storage."""
        if not self._busy.acquire(blocking=False):
            return None
        try:
            return self._gather()
        finally:
            self._busy.release()

    def _gather(self) -> TopModel:
        now = self._clock()
        if now - self._touched >= TOUCH_S or now < self._touched:
            self._touched = now
            try:
                touch_watch(self.data_dir)
                self._touch_error = None
            except OSError as exc:
                self._touch_error = exc.strerror or str(exc)
        snapshot, why = read_snapshot(self.data_dir)
        if snapshot is not None and -STALE_S <= now - snapshot.written <= STALE_S:
            return _from_snapshot(snapshot)
        if self._touch_error is not None:
            agent = f"no live data (cannot touch {self.data_dir}: {self._touch_error})"
        elif why == "unreadable":
            agent = "no live data (top.json unreadable)"
        elif now - self._started < GRACE_S:
            agent = "waiting for the agent…"
        else:
            agent = "agent not running (no live data)"
        if self._buffer_model is None or not 0 <= now - self._from_buffer_at < BUFFER_EVERY_S:
            self._from_buffer_at = now
            self._buffer_model = self._from_buffer()
        note = self._buffer_model.agent  # why the buffer could not be read, if so
        return dataclasses.replace(self._buffer_model, agent=f"{agent}; {note}" if note else agent)

    def _from_buffer(self) -> TopModel:
        path = self.data_dir / BUFFER_FILE
        try:
            stats, statuses = open_readonly_stats(path)
        except (BufferError, OSError, ValueError) as exc:
            rows = tuple(DeviceRow(i, d, "unknown") for i, d in self.devices)
            return TopModel(self.gateway, str(exc), False, None, self.broker, devices=rows)
        rows_list = []
        for device_id, driver in self.devices:
            status = _saved_status(statuses.get(device_id))
            error = status.get("error")
            errors = status.get("errors_total")
            rows_list.append(
                DeviceRow(
                    device_id,
                    driver,
                    str(status.get("state", "unknown"))[:16],
                    str(error)[:80] if error else None,
                    errors if isinstance(errors, int) and not isinstance(errors, bool) else None,
                    _number(status.get("last_sample")),
                )
            )
        refused = _number(_saved_status(statuses.get("#publisher")).get("refused_samples"))
        return TopModel(
            self.gateway,
            "",
            False,
            None,
            self.broker,
            stats.backlog_samples,
            stats.backlog_bytes,
            stats.oldest_unsent_age_s,
            stats.dropped_samples,
            None if refused is None else int(refused),
            tuple(rows_list),
        )


# ---------------------------------------------------------------------------- keys


_SEQUENCES: Final[dict[bytes, str]] = {
    b"\x1b[A": "up",
    b"\x1b[B": "down",
    b"\x1b[C": "right",
    b"\x1b[D": "left",
    b"\x1bOA": "up",
    b"\x1bOB": "down",
    b"\x1bOC": "right",
    b"\x1bOD": "left",
    b"\x1b[5~": "pgup",
    b"\x1b[6~": "pgdn",
    b"\x1b[H": "home",
    b"\x1b[F": "end",
    b"\x1bOH": "home",
    b"\x1bOF": "end",
    b"\x1b[1~": "home",
    b"\x1b[4~": "end",
    b"\x1b[7~": "home",
    b"\x1b[8~": "end",
}
_CHARS: Final[dict[int, str]] = {
    ord("\r"): "enter",
    ord("\n"): "enter",
    ord("q"): "q",
    ord("Q"): "q",
    ord("k"): "up",
    ord("j"): "down",
    ord("l"): "right",
    ord("h"): "left",
    ord(" "): "pgdn",
    0x7F: "left",  # backspace
    0x08: "left",
}


def decode_keys(data: bytes) -> list[str]:
    """The keys in what the terminal sent (cbreak mode); unknown bytes are ignored.

    A lone ESC (nothing after it in the same read, or another ESC) is the Esc key."""
    keys: list[str] = []
    i = 0
    while i < len(data):
        byte = data[i]
        if byte != 0x1B:
            if byte in _CHARS:
                keys.append(_CHARS[byte])
            i += 1
            continue
        if i + 1 >= len(data) or data[i + 1] == 0x1B:
            keys.append("esc")
            i += 1
            continue
        if data[i + 1] == ord("O"):  # SS3: one final byte
            end = min(i + 3, len(data))
        elif data[i + 1] == ord("["):  # CSI: parameters, then a final byte 0x40-0x7E
            end = i + 2
            while end < len(data) and not 0x40 <= data[end] <= 0x7E:
                end += 1
            end = min(end + 1, len(data))
        else:  # Alt+key: ignored
            end = i + 2
        name = _SEQUENCES.get(data[i:end])
        if name is not None:
            keys.append(name)
        i = end
    return keys


# ---------------------------------------------------------------------------- view


@dataclass(slots=True)
class TopState:
    """What the person looks at: the list (a selected device) or one device's readings."""

    selected: int = 0
    offset: int = 0  # first device line shown
    detail: str | None = None  # the device whose readings are shown
    detail_offset: int = 0
    last_body: int = 10  # lines of the last frame's body (PgUp/PgDn move by that)
    last_rows: int = 0  # rows of readings in the last detail frame
    selected_id: str | None = field(default=None)

    def key(self, key: str, model: TopModel) -> bool:
        """Apply ``key``; False when it means quit."""
        if key == "q":
            return False
        page = max(1, self.last_body)
        if self.detail is not None:
            if key in ("esc", "left"):
                self.detail = None
            elif key in ("up", "down", "pgup", "pgdn", "home", "end"):
                step = {"up": -1, "down": 1, "pgup": -page, "pgdn": page}.get(key, 0)
                top = max(0, self.last_rows - page)
                if key == "home":
                    self.detail_offset = 0
                elif key == "end":
                    self.detail_offset = top
                else:
                    self.detail_offset = min(max(0, self.detail_offset + step), top)
            return True
        count = len(model.devices)
        if key in ("up", "down", "pgup", "pgdn", "home", "end") and count:
            step = {"up": -1, "down": 1, "pgup": -page, "pgdn": page}.get(key, 0)
            if key == "home":
                self.selected = 0
            elif key == "end":
                self.selected = count - 1
            else:
                self.selected = min(max(0, self.selected + step), count - 1)
            self.selected_id = model.devices[self.selected].id
        elif key in ("enter", "right") and count:
            self.detail = model.devices[min(self.selected, count - 1)].id
            self.detail_offset = 0
        return True

    def follow(self, model: TopModel) -> None:
        """Keep the selection on the same device when the list changes."""
        ids = [d.id for d in model.devices]
        if self.selected_id in ids:
            self.selected = ids.index(self.selected_id)
        self.selected = min(self.selected, max(0, len(ids) - 1))
        self.selected_id = ids[self.selected] if ids else None
        if self.detail is not None and self.detail not in ids:
            self.detail = None


_STATE_STYLE: Final = {
    "online": "green",
    "offline": "bold red",
    "starting": "yellow",
    "disabled": "dim",
    "unknown": "dim",
}


def _line(*parts: tuple[str, str] | str) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    for part in parts:
        if isinstance(part, str):
            text.append(part)
        else:
            text.append(*part)
    return text


def _header(model: TopModel, title: str, width: int, now: float) -> list[Text]:
    agent_style = "green" if model.live else "bold yellow"
    clock = time.strftime("%H:%M:%S", time.localtime(now))
    first = _line((title, "bold"), " · ", (model.gateway, "bold cyan"), " · ")
    first.append(f"agent {model.agent}" if model.live else model.agent, agent_style)
    first.append(" " * max(2, width - len(first.plain) - len(clock)) + clock, "dim")
    if model.connected is None:
        link = _line("broker   ", ("? (no live data)", "dim"), f"  {model.broker}")
    elif model.connected:
        link = _line("broker   ", ("connected", "green"), f"  {model.broker}")
    else:
        link = _line("broker   ", ("disconnected", "bold red"), f"  {model.broker}")
    if model.backlog_samples is None:
        backlog = _line("backlog  ", ("?", "dim"))
    else:
        oldest = (
            "-" if model.oldest_unsent_age_s is None else _age(now, now - model.oldest_unsent_age_s)
        )
        backlog = _line(
            "backlog  ",
            (
                f"{model.backlog_samples} sample{'' if model.backlog_samples == 1 else 's'}",
                "bold" if model.backlog_samples else "",
            ),
            f" ({_bytes(model.backlog_bytes or 0)})  oldest unsent {oldest}  ",
            (
                f"dropped {model.dropped_samples}",
                "bold red" if model.dropped_samples else "",
            ),
            "  refused ",
            ("-" if model.refused_samples is None else str(model.refused_samples)),
        )
    return [first, link, backlog]


def render_lines(
    model: TopModel,
    state: TopState,
    width: int,
    height: int,
    now: float,
    *,
    title: str = "citygate top",
    notice: str | None = None,
) -> list[Text]:
    """The frame: at most ``height`` lines (header, body, footer), each cut to ``width``."""
    state.follow(model)
    lines = _header(model, title, width, now)
    body = max(1, height - len(lines) - 2)
    state.last_body = body
    device = next((d for d in model.devices if d.id == state.detail), None)
    if device is not None:
        lines += _detail(model, device, state, width, body, now)
        footer = "↑↓ PgUp/PgDn scroll  Esc/← back  q quit"
    else:
        lines += _list(model, state, width, body, now)
        footer = "↑↓ select  Enter/→ readings  PgUp/PgDn scroll  q quit"
    lines = lines[: height - 1]
    lines += [_line() for _ in range(height - 1 - len(lines))]  # the footer at the bottom
    lines.append(_line((notice, "yellow")) if notice else _line((footer, "dim")))
    for line in lines:
        line.truncate(width, overflow="ellipsis")
    return lines[-height:]


def _list(model: TopModel, state: TopState, width: int, body: int, now: float) -> list[Text]:
    devices = model.devices
    id_width = min(max((len(d.id) for d in devices), default=6), 20)
    rows = body
    if state.selected < state.offset:
        state.offset = state.selected
    elif state.selected >= state.offset + rows:
        state.offset = state.selected - rows + 1
    state.offset = max(0, min(state.offset, max(0, len(devices) - rows)))
    shown = devices[state.offset : state.offset + rows]
    where = (
        f"{state.offset + 1}-{state.offset + len(shown)} of {len(devices)}"
        if len(devices) > rows
        else f"{len(devices)} devices"
    )
    heading = _line(
        (f" {'DEVICE':<{id_width}} {'STATE':<8} {'LAST':>4} {'ERR':>4}  KEY READINGS", "bold")
    )
    pad = max(1, width - len(heading.plain) - len(where))
    heading.append(" " * pad + where, "dim")
    lines = [heading]
    for index, d in enumerate(shown, start=state.offset):
        errors = "-" if d.errors_total is None else str(d.errors_total)
        keys = "".join(_key_cell(v, u) for _, v, u in key_readings(d.driver, d.readings))
        if not model.live:
            keys = ""
        name = d.id if len(d.id) <= id_width else d.id[: id_width - 1] + "…"
        line = _line(
            f" {name:<{id_width}} ",
            (f"{d.state:<8}", _STATE_STYLE.get(d.state, "")),
            f" {_age(now, d.last_sample):>4} ",
            (f"{errors:>4}", "red" if d.errors_total else ""),
            f" {keys}",
        )
        if index == state.selected:
            line.stylize("reverse")
            line.append(" " * max(0, width - len(line.plain)), "reverse")
        lines.append(line)
    if not devices:
        lines.append(_line(("  no devices", "dim")))
    return [lines[0], *lines[1 : body + 1]]


def _key_cell(value: Value, unit: str | None) -> str:
    text = f"{value:.6g}" if isinstance(value, float) else format_value(value, None)
    return f"{text:>8} {human_unit(unit):<5}"


def _detail(
    model: TopModel, device: DeviceRow, state: TopState, width: int, body: int, now: float
) -> list[Text]:
    errors = "-" if device.errors_total is None else str(device.errors_total)
    title = _line(
        (f" {device.id}", "bold"),
        f" ({device.driver})  ",
        (device.state, _STATE_STYLE.get(device.state, "")),
        f"  last sample {_age(now, device.last_sample)} ago  errors {errors}",
    )
    lines = [title]
    rows_room = body
    if device.error:
        lines.append(_line(("  " + device.error, "red")))
        rows_room -= 1
    if not model.live:
        lines.append(_line(("  no live readings: " + model.agent, "dim")))
        state.last_rows = 0
        return lines
    cell = 39  # " name value unit": two columns at 80
    columns = max(1, (width - 1) // cell)
    readings = list(device.readings)
    rows = [readings[i : i + columns] for i in range(0, len(readings), columns)]
    if device.more:
        rows.append([])  # the "not shown" line
    state.last_rows = len(rows)
    state.last_body = max(1, rows_room)
    state.detail_offset = max(0, min(state.detail_offset, len(rows) - rows_room))
    for row in rows[state.detail_offset : state.detail_offset + rows_room]:
        if not row:
            lines.append(_line((f"  (+{device.more} readings not kept)", "dim")))
            continue
        line = _line(" ")
        for name, value, unit in row:
            short = name if len(name) <= 22 else name[:21] + "…"
            line.append(f"{short:<22} ")
            if isinstance(value, str):  # a date, a serial number: left, in value and unit
                text = value if len(value) <= 15 else value[:14] + "…"
                line.append(f"{text:<15}", "bold")
                line.append(" ")
                continue
            shown = f"{value:.6g}" if isinstance(value, float) else format_value(value, None)
            line.append(f"{shown:>9}", "bold")
            line.append(f" {human_unit(unit):<5} ")
        lines.append(line)
    if not readings:
        lines.append(_line(("  no readings yet", "dim")))
    return lines


# ---------------------------------------------------------------------------- loop


@contextlib.contextmanager
def _cbreak(stream: TextIO) -> Iterator[int]:
    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield fd
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def run_top(
    config: Config,
    *,
    stop: asyncio.Event | None = None,
    title: str = "citygate top",
    notice: Callable[[], str | None] | None = None,
) -> int:
    """Show the view until ``q`` (or ``stop`` is set, or SIGTERM); returns the exit status.

    Needs a terminal on stdin and stdout (the caller checks)."""
    source = TopSource(config)
    state = TopState()
    stop = stop if stop is not None else asyncio.Event()
    wake = asyncio.Event()
    keys: list[str] = []
    loop = asyncio.get_running_loop()
    console = Console(highlight=False)

    def on_input() -> None:
        try:
            data = os.read(fd, 1024)
        except OSError:
            data = b""
        if not data:  # the terminal went away
            stop.set()
        keys.extend(decode_keys(data)[:64])
        wake.set()

    model: TopModel | None = None
    with contextlib.ExitStack() as stack:
        fd = stack.enter_context(_cbreak(sys.stdin))
        live = stack.enter_context(
            Live(
                console=console,
                screen=True,
                auto_refresh=False,
                redirect_stdout=False,
                redirect_stderr=False,
            )
        )
        loop.add_reader(fd, on_input)
        stack.callback(loop.remove_reader, fd)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, stop.set)
            stack.callback(loop.remove_signal_handler, signal.SIGTERM)
        shown: list[tuple[str, tuple[Any, ...]]] = []
        next_gather = 0.0
        while not stop.is_set():
            if time.monotonic() >= next_gather:
                next_gather = time.monotonic() + REFRESH_S
                try:
                    async with asyncio.timeout(GATHER_TIMEOUT_S):
                        gathered = await asyncio.to_thread(source.gather)
                except TimeoutError:
                    gathered = None
                model = gathered or model
            if model is None:
                model = TopModel(source.gateway, "reading data_dir…", False, broker=source.broker)
            while keys:
                if not state.key(keys.pop(0), model):
                    return 0
            width, height = console.size
            lines = render_lines(
                model,
                state,
                width,
                height,
                time.time(),
                title=title,
                notice=notice() if notice is not None else None,
            )
            frame = [(line.plain, tuple(line.spans)) for line in lines]
            if frame != shown:  # over SSH, an unchanged frame costs nothing
                shown = frame
                live.update(Group(*lines), refresh=True)
            wake.clear()
            with contextlib.suppress(TimeoutError):
                # A key wakes the loop at once; ``stop`` is seen within REFRESH_S.
                async with asyncio.timeout(max(0.0, next_gather - time.monotonic())):
                    await wake.wait()
    return 0
