"""Advert payloads encoded from the formats' specifications (never from citygate's decoders).

* BTHome v2 (bthome.io format.html, encryption.html): device info byte, objects in
  ascending id order, little-endian integers; encrypted: AES-CCM with a 4-byte MIC.
* Ruuvi data format 5 (docs.ruuvi.com "Data Format 5 (RAWv2)"): 24 bytes, big-endian.
* ATC1441 (13 bytes, big-endian) and pvvx custom (15 bytes, little-endian), UUID 0x181A.
"""

from __future__ import annotations

from collections.abc import Sequence

from citygate_sim.ble._aes import ccm_encrypt

BTHOME_UUID = "0000fcd2-0000-1000-8000-00805f9b34fb"
ENVIRONMENT_UUID = "0000181a-0000-1000-8000-00805f9b34fb"
RUUVI_COMPANY_ID = 0x0499

# object id -> (byte size, factor, signed) for what the simulated sensors send
BTHOME_OBJECTS: dict[str, tuple[int, int, float, bool]] = {
    "packet_id": (0x00, 1, 1, False),
    "battery": (0x01, 1, 1, False),
    "temperature": (0x02, 2, 0.01, True),
    "humidity": (0x03, 2, 0.01, False),
    "pressure": (0x04, 3, 0.01, False),
    "illuminance": (0x05, 3, 0.01, False),
    "voltage": (0x0C, 2, 0.001, False),
    "pm2_5": (0x0D, 2, 1, False),
    "pm10": (0x0E, 2, 1, False),
    "co2": (0x12, 2, 1, False),
    "tvoc": (0x13, 2, 1, False),
}


def _mac_bytes(address: str) -> bytes:
    return bytes.fromhex(address.replace(":", ""))


def bthome_objects(values: Sequence[tuple[str, float]]) -> bytes:
    """Objects for ``values`` (name, value in the spec's unit), sorted by object id."""
    out = bytearray()
    for object_id, size, factor, signed, value in sorted(
        (*BTHOME_OBJECTS[name], value) for name, value in values
    ):
        raw = round(value / factor)
        limit = 1 << (8 * size)
        raw = (
            max(-(limit >> 1), min((limit >> 1) - 1, raw))
            if signed
            else max(0, min(limit - 1, raw))
        )
        out.append(object_id)
        out += raw.to_bytes(size, "little", signed=signed)
    return bytes(out)


def bthome(
    values: Sequence[tuple[str, float]],
    *,
    address: str,
    bindkey: bytes | None = None,
    counter: int = 0,
    trigger_based: bool = False,
) -> bytes:
    """BTHome v2 service data (after the UUID); encrypted when ``bindkey`` is given."""
    info = 0x40 | (0x04 if trigger_based else 0)
    objects = bthome_objects(values)
    if bindkey is None:
        return bytes([info]) + objects
    info |= 0x01
    counter_bytes = (counter % 2**32).to_bytes(4, "little")
    nonce = _mac_bytes(address) + b"\xd2\xfc" + bytes([info]) + counter_bytes
    sealed = ccm_encrypt(bindkey, nonce, objects, tag_length=4)
    return bytes([info]) + sealed[:-4] + counter_bytes + sealed[-4:]


def ruuvi_rawv2(
    *,
    address: str,
    temperature: float | None,
    humidity: float | None,
    pressure_pa: float | None,
    acceleration_mg: tuple[int, int, int] | None,
    battery_mv: int | None,
    tx_power_dbm: int | None,
    movement: int | None,
    sequence: int | None,
) -> bytes:
    """Ruuvi manufacturer data after the company id; None = the "not available" value."""

    def s16(value: float | None, scale: float) -> bytes:
        raw = -0x8000 if value is None else max(-32767, min(32767, round(value / scale)))
        return raw.to_bytes(2, "big", signed=True)

    def u16(value: float | None, scale: float, offset: float = 0) -> bytes:
        raw = 0xFFFF if value is None else max(0, min(0xFFFE, round((value - offset) / scale)))
        return raw.to_bytes(2, "big")

    out = bytearray([5])
    out += s16(temperature, 0.005)
    out += u16(humidity, 0.0025)
    out += u16(pressure_pa, 1, 50000)
    for axis in acceleration_mg or (None, None, None):
        out += s16(axis, 1)
    voltage = 2047 if battery_mv is None else max(0, min(2046, battery_mv - 1600))
    tx = 31 if tx_power_dbm is None else max(0, min(30, (tx_power_dbm + 40) // 2))
    out += ((voltage << 5) | tx).to_bytes(2, "big")
    out.append(255 if movement is None else movement % 255)
    out += (0xFFFF if sequence is None else sequence % 0xFFFF).to_bytes(2, "big")
    out += _mac_bytes(address)
    return bytes(out)


def atc1441(
    *,
    address: str,
    temperature: float,
    humidity: float,
    battery: int,
    battery_mv: int,
    counter: int,
) -> bytes:
    """ATC1441 0x181A service data: MAC as written, then big-endian fields."""
    return (
        _mac_bytes(address)
        + round(temperature * 10).to_bytes(2, "big", signed=True)
        + bytes([max(0, min(100, round(humidity))), max(0, min(100, battery))])
        + battery_mv.to_bytes(2, "big")
        + bytes([counter % 256])
    )


def pvvx_custom(
    *,
    address: str,
    temperature: float,
    humidity: float,
    battery: int,
    battery_mv: int,
    counter: int,
) -> bytes:
    """pvvx custom 0x181A service data: MAC LSB first, little-endian fields, flags 0."""
    return (
        bytes(reversed(_mac_bytes(address)))
        + round(temperature * 100).to_bytes(2, "little", signed=True)
        + max(0, min(10000, round(humidity * 100))).to_bytes(2, "little")
        + battery_mv.to_bytes(2, "little")
        + bytes([max(0, min(100, battery)), counter % 256, 0])
    )
