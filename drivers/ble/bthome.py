"""BTHome v2 service data (UUID 0xFCD2), sans-I/O.

:func:`parse` takes the service data after the UUID and returns a
:class:`BTHomePacket`; it raises :class:`BTHomeError` (a ``DecodeError``) for
anything it cannot use. :class:`BTHomeFilter` is the per-device memory that
drops repeated packets (packet id) and replayed encrypted ones (counter).

Objects follow the table of bthome.io ``format.html``: little-endian integers
times a factor; a receiver stops at the first object id it does not know, and
a property sent more than once gets ``_1``, ``_2``, … in order of appearance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from citygate.drivers.api import DecodeError, Measurement, Value

__all__ = [
    "BTHOME_UUID",
    "BTHomeError",
    "BTHomeFilter",
    "BTHomePacket",
    "DecryptionError",
    "is_encrypted",
    "parse",
]

BTHOME_UUID: Final = "0000fcd2-0000-1000-8000-00805f9b34fb"
_UUID_BYTES: Final = b"\xd2\xfc"  # as sent: 0xFCD2 little-endian; part of the nonce

_ENCRYPTED: Final = 0x01
# Legacy form: bthome-ble still accepts it; the spec calls the bit reserved.
_MAC_INCLUDED: Final = 0x02
_TRIGGER_BASED: Final = 0x04
_MIC_LENGTH: Final = 4
_COUNTER_LENGTH: Final = 4

_LB_TO_KG: Final = 0.45359237


class BTHomeError(DecodeError):
    """The service data is not a BTHome v2 packet this decoder can read."""


class DecryptionError(BTHomeError):
    """An encrypted packet that does not decrypt: wrong or missing bindkey, or tampered."""


@dataclass(frozen=True, slots=True)
class BTHomePacket:
    """One decoded BTHome v2 packet.

    ``measurements`` are states (a temperature, a window being open);
    ``events`` happen once (a button press) and must not be repeated.
    ``problem`` says why decoding stopped early (an unknown object id, a
    truncated object); what came before it is kept.
    """

    measurements: tuple[Measurement, ...]
    events: tuple[Measurement, ...] = ()
    packet_id: int | None = None
    counter: int | None = None
    """The encryption counter; None for a plain packet."""
    trigger_based: bool = False
    mac: str | None = None
    """The address carried in the packet (legacy form), else None."""
    problem: str | None = None


# --------------------------------------------------------------------------- object table

Convert = Callable[[bytes], Value]


def _uint(data: bytes) -> int:
    return int.from_bytes(data, "little")


def _sint(data: bytes) -> int:
    return int.from_bytes(data, "little", signed=True)


def _scaled(factor: float, signed: bool = False, digits: int = 6) -> Convert:
    read = _sint if signed else _uint

    def convert(data: bytes) -> Value:
        if factor == 1:
            return read(data)
        return round(read(data) * factor, digits)

    return convert


def _boolean(data: bytes) -> Value:
    return data[0] != 0


def _firmware(data: bytes) -> Value:
    return ".".join(str(b) for b in reversed(data))


_BUTTON_EVENTS: Final = {
    0x00: "none",
    0x01: "press",
    0x02: "double_press",
    0x03: "triple_press",
    0x04: "long_press",
    0x05: "long_double_press",
    0x06: "long_triple_press",
    0x80: "hold_press",
}
_DIMMER_EVENTS: Final = {0x00: "none", 0x01: "rotate_left", 0x02: "rotate_right"}


@dataclass(frozen=True, slots=True)
class _Object:
    name: str
    size: int  # bytes after the id; 0 = a length byte follows the id
    convert: Convert
    unit: str | None = None
    kind: str = "state"  # state | event | binary


def _sensor(name: str, size: int, factor: float, unit: str | None, signed: bool = False) -> _Object:
    return _Object(name, size, _scaled(factor, signed), unit)


def _binary(name: str) -> _Object:
    return _Object(name, 1, _boolean, None, "binary")


# Names: the spec's property in snake_case (quantities.md); a binary object whose
# property name a sensor already uses gets a word that says what true means.
OBJECTS: Final[dict[int, _Object]] = {
    0x01: _sensor("battery", 1, 1, "%"),
    0x02: _sensor("temperature", 2, 0.01, "Cel", signed=True),
    0x03: _sensor("humidity", 2, 0.01, "%RH"),
    0x04: _sensor("pressure", 3, 0.01, "hPa"),
    0x05: _sensor("illuminance", 3, 0.01, "lx"),
    0x06: _sensor("mass", 2, 0.01, "kg"),
    0x07: _Object("mass", 2, lambda d: round(_uint(d) * 0.01 * _LB_TO_KG, 6), "kg"),
    0x08: _sensor("dew_point", 2, 0.01, "Cel", signed=True),
    0x09: _sensor("count", 1, 1, "count"),
    0x0A: _sensor("energy", 3, 0.001, "kWh"),
    0x0B: _sensor("power", 3, 0.01, "W"),
    0x0C: _sensor("voltage", 2, 0.001, "V"),
    0x0D: _sensor("pm2_5", 2, 1, "ug/m3"),
    0x0E: _sensor("pm10", 2, 1, "ug/m3"),
    0x0F: _binary("generic_boolean"),
    0x10: _binary("power_on"),
    0x11: _binary("opening"),
    0x12: _sensor("co2", 2, 1, "ppm"),
    0x13: _sensor("tvoc", 2, 1, "ug/m3"),
    0x14: _sensor("moisture", 2, 0.01, "%"),
    0x15: _binary("battery_low"),
    0x16: _binary("battery_charging"),
    0x17: _binary("carbon_monoxide"),
    0x18: _binary("cold"),
    0x19: _binary("connectivity"),
    0x1A: _binary("door"),
    0x1B: _binary("garage_door"),
    0x1C: _binary("gas_detected"),
    0x1D: _binary("heat"),
    0x1E: _binary("light"),
    0x1F: _binary("lock"),
    0x20: _binary("moisture_detected"),
    0x21: _binary("motion"),
    0x22: _binary("moving"),
    0x23: _binary("occupancy"),
    0x24: _binary("plug"),
    0x25: _binary("presence"),
    0x26: _binary("problem"),
    0x27: _binary("running"),
    0x28: _binary("safety"),
    0x29: _binary("smoke"),
    0x2A: _binary("sound"),
    0x2B: _binary("tamper"),
    0x2C: _binary("vibration"),
    0x2D: _binary("window"),
    0x2E: _sensor("humidity", 1, 1, "%RH"),
    0x2F: _sensor("moisture", 1, 1, "%"),
    0x3A: _Object("button", 1, lambda d: _BUTTON_EVENTS.get(d[0], f"unknown_{d[0]}"), kind="event"),
    0x3C: _Object("dimmer", 2, lambda d: _DIMMER_EVENTS.get(d[0], f"unknown_{d[0]}"), kind="event"),
    0x3D: _sensor("count", 2, 1, "count"),
    0x3E: _sensor("count", 4, 1, "count"),
    0x3F: _sensor("rotation", 2, 0.1, "deg", signed=True),
    0x40: _sensor("distance", 2, 0.001, "m"),
    0x41: _sensor("distance", 2, 0.1, "m"),
    0x42: _sensor("duration", 3, 0.001, "s"),
    0x43: _sensor("current", 2, 0.001, "A"),
    0x44: _sensor("speed", 2, 0.01, "m/s"),
    0x45: _sensor("temperature", 2, 0.1, "Cel", signed=True),
    0x46: _sensor("uv_index", 1, 0.1, None),
    0x47: _sensor("volume", 2, 0.1, "l"),
    0x48: _sensor("volume", 2, 0.001, "l"),
    0x49: _sensor("volume_flow_rate", 2, 0.001, "m3/h"),
    0x4A: _sensor("voltage", 2, 0.1, "V"),
    0x4B: _sensor("gas", 3, 0.001, "m3"),
    0x4C: _sensor("gas", 4, 0.001, "m3"),
    0x4D: _sensor("energy", 4, 0.001, "kWh"),
    0x4E: _sensor("volume", 4, 0.001, "l"),
    0x4F: _sensor("water", 4, 0.001, "l"),
    0x50: _sensor("timestamp", 4, 1, None),
    0x51: _sensor("acceleration", 2, 0.001, "m/s2"),
    0x52: _sensor("gyroscope", 2, 0.001, "deg/s"),
    0x53: _Object("text", 0, lambda d: d.decode("utf-8", errors="replace")),
    0x54: _Object("raw", 0, lambda d: d.hex()),
    0x55: _sensor("volume_storage", 4, 0.001, "l"),
    0x56: _sensor("conductivity", 2, 1, "uS/cm"),
    0x57: _sensor("temperature", 1, 1, "Cel", signed=True),
    0x58: _sensor("temperature", 1, 0.35, "Cel", signed=True),
    0x59: _sensor("count", 1, 1, "count", signed=True),
    0x5A: _sensor("count", 2, 1, "count", signed=True),
    0x5B: _sensor("count", 4, 1, "count", signed=True),
    0x5C: _sensor("power", 4, 0.01, "W", signed=True),
    0x5D: _sensor("current", 2, 0.001, "A", signed=True),
    0x5E: _sensor("direction", 2, 0.01, "deg"),
    0x5F: _sensor("precipitation", 2, 0.1, "mm"),
    0x60: _sensor("channel", 1, 1, None),
    0x61: _sensor("rotational_speed", 2, 1, "rpm"),
    0x62: _sensor("speed", 4, 0.000001, "m/s", signed=True),
    0x63: _sensor("acceleration", 4, 0.000001, "m/s2", signed=True),
    0x64: _sensor("light_level", 1, 1, None),
    0x65: _sensor("settings_revision", 1, 1, None),
    0xF0: _sensor("device_type_id", 2, 1, None),
    0xF1: _Object("firmware_version", 4, _firmware),
    0xF2: _Object("firmware_version", 3, _firmware),
}
_PACKET_ID: Final = 0x00


# --------------------------------------------------------------------------- parsing


def _mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02X}" for b in raw)


def _decrypt(info: int, body: bytes, mac: bytes, bindkey: bytes) -> tuple[bytes, int]:
    """(plaintext, counter) of an encrypted body (ciphertext, counter, MIC)."""
    if len(body) < _COUNTER_LENGTH + _MIC_LENGTH + 1:
        raise BTHomeError(f"encrypted packet too short to decrypt ({len(body)} bytes after header)")
    ciphertext = body[: -_COUNTER_LENGTH - _MIC_LENGTH]
    counter_bytes = body[-_COUNTER_LENGTH - _MIC_LENGTH : -_MIC_LENGTH]
    mic = body[-_MIC_LENGTH:]
    nonce = mac + _UUID_BYTES + bytes([info]) + counter_bytes
    # Imported here: the library costs ~8 MB of memory, and most gateways never decrypt.
    from cryptography.exceptions import InvalidTag  # noqa: PLC0415
    from cryptography.hazmat.primitives.ciphers.aead import AESCCM  # noqa: PLC0415

    try:
        plain = AESCCM(bindkey, tag_length=_MIC_LENGTH).decrypt(nonce, ciphertext + mic, None)
    except InvalidTag:
        raise DecryptionError("encrypted packet does not decrypt with the bindkey") from None
    return plain, _uint(counter_bytes)


def is_encrypted(payload: bytes) -> bool:
    """Whether BTHome service data (without the UUID) announces an encrypted packet."""
    return bool(payload) and bool(payload[0] & _ENCRYPTED)


def parse(payload: bytes, address: str, bindkey: bytes | None = None) -> BTHomePacket:
    """Decode BTHome v2 service data (without the UUID) heard from ``address``
    (``AA:BB:CC:DD:EE:FF``; it is part of the nonce of encrypted packets)."""
    if not payload:
        raise BTHomeError("empty BTHome service data")
    info = payload[0]
    version = info >> 5
    if version != 2:
        raise BTHomeError(
            f"BTHome version {version} is not supported (device info byte 0x{info:02X}); "
            "only v2 (0x40-0x5F) is"
        )
    body = payload[1:]
    mac_in_packet: str | None = None
    if info & _MAC_INCLUDED:
        if len(body) < 6:
            raise BTHomeError("packet announces its address but is too short to hold it")
        mac_raw = bytes(reversed(body[:6]))
        mac_in_packet = _mac_text(mac_raw)
        body = body[6:]
    else:
        try:
            mac_raw = bytes.fromhex(address.replace(":", ""))
        except ValueError:
            mac_raw = b""
    counter: int | None = None
    if info & _ENCRYPTED:
        if bindkey is None:
            raise DecryptionError("encrypted packet but no bindkey is configured")
        if len(mac_raw) != 6:
            raise DecryptionError(f"cannot decrypt: {address!r} is not a Bluetooth address")
        body, counter = _decrypt(info, body, mac_raw, bindkey)
    measurements, events, packet_id, problem = _objects(body)
    return BTHomePacket(
        measurements=measurements,
        events=events,
        packet_id=packet_id,
        counter=counter,
        trigger_based=bool(info & _TRIGGER_BASED),
        mac=mac_in_packet,
        problem=problem,
    )


def _objects(
    body: bytes,
) -> tuple[tuple[Measurement, ...], tuple[Measurement, ...], int | None, str | None]:
    found: list[tuple[_Object, Value, bytes]] = []
    packet_id: int | None = None
    problem: str | None = None
    position = 0
    while position < len(body):
        object_id = body[position]
        if object_id == _PACKET_ID:
            if position + 2 > len(body):
                problem = "truncated packet id"
                break
            packet_id = body[position + 1]
            position += 2
            continue
        spec = OBJECTS.get(object_id)
        if spec is None:
            problem = f"unknown object id 0x{object_id:02X}; the rest of the packet is skipped"
            break
        start = position + 1
        size = spec.size
        if size == 0:  # text / raw: a length byte
            if start >= len(body):
                problem = f"object 0x{object_id:02X} without its length byte"
                break
            size = body[start]
            start += 1
        end = start + size
        if end > len(body):
            problem = f"object 0x{object_id:02X} needs {size} bytes, {len(body) - start} left"
            break
        data = body[start:end]
        found.append((spec, spec.convert(data), data))
        position = end

    totals: dict[str, int] = {}
    for spec, _, _ in found:
        totals[spec.name] = totals.get(spec.name, 0) + 1
    seen: dict[str, int] = {}
    measurements: list[Measurement] = []
    events: list[Measurement] = []
    for spec, value, data in found:
        name = spec.name
        if totals[name] > 1:
            seen[name] = seen.get(name, 0) + 1
            name = f"{name}_{seen[name]}"
        if spec.name == "dimmer":
            events.append(Measurement(name, value))
            events.append(Measurement(f"{name}_steps", data[1], "count"))
            continue
        target = events if spec.kind == "event" else measurements
        target.append(Measurement(name, value, spec.unit))
    return tuple(measurements), tuple(events), packet_id, problem


# --------------------------------------------------------------------------- repeats


PACKET_ID_WINDOW_S: Final = 4.0
"""After this long without a packet, any packet id is taken (bthome-ble's rule)."""


class BTHomeFilter:
    """One device's memory of its last packet: drops repeats and replays.

    A plain packet is dropped when its packet id is not newer (modulo 256) than
    the last accepted one, unless :data:`PACKET_ID_WINDOW_S` passed since. An
    encrypted packet is dropped unless its counter is newer than the last
    accepted one in 32-bit serial-number arithmetic (so 0xFFFFFFFF → 0 is the
    next value, and a replayed or older packet never is).
    """

    __slots__ = (
        "last_counter",
        "last_packet_id",
        "last_time",
        "repeats_dropped",
        "replays_dropped",
    )

    def __init__(self) -> None:
        self.last_packet_id: int | None = None
        self.last_counter: int | None = None
        self.last_time: float | None = None
        self.repeats_dropped = 0
        self.replays_dropped = 0

    def accept(self, packet: BTHomePacket, now: float) -> bool:
        """True if ``packet`` is new; remembers it."""
        if packet.counter is not None:
            last = self.last_counter
            if last is not None and not 0 < (packet.counter - last) % 2**32 < 2**31:
                self.replays_dropped += 1
                return False
            self.last_counter = packet.counter
        elif packet.packet_id is not None:
            last_id = self.last_packet_id
            recent = self.last_time is not None and now - self.last_time <= PACKET_ID_WINDOW_S
            if last_id is not None and recent and not 0 < (packet.packet_id - last_id) % 256 < 128:
                self.repeats_dropped += 1
                return False
        if packet.packet_id is not None:
            self.last_packet_id = packet.packet_id
        self.last_time = now
        return True
