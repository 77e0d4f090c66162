"""From an advert to measurements: format detection and per-device memory, sans-I/O.

:class:`AdvertDecoder` serves one device (or, in ``citygate scan ble``, one
address): it picks the decoder its ``format`` names (``auto`` tries BTHome,
then 0x181A pvvx/ATC, then Ruuvi), drops repeated and replayed BTHome packets,
counts what it could not decode, and never raises.

A device with a ``bindkey`` takes encrypted BTHome adverts only: anything else
heard from its address (a plain BTHome, pvvx, ATC or Ruuvi advert, which anyone
can send under any address) is refused unread and counted in
:attr:`AdvertDecoder.rejected` (config.md ``bindkey``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from citygate.drivers.api import DecodeError, Measurement
from citygate.drivers.ble import bthome, pvvx, ruuvi
from citygate.drivers.ble.advert import Advert

__all__ = ["FORMAT_NAMES", "REFUSED_UNENCRYPTED", "AdvertDecoder", "Decoded", "detect"]

FORMAT_NAMES: Final = ("bthome", "pvvx", "atc", "ruuvi")
REFUSED_UNENCRYPTED: Final = "unencrypted advert refused: the device has a bindkey"


@dataclass(frozen=True, slots=True)
class Decoded:
    """What one advert said: states (latest value wins) and one-off events."""

    format: str
    measurements: tuple[Measurement, ...]
    events: tuple[Measurement, ...] = ()


def detect(advert: Advert) -> tuple[str, ...]:
    """The formats ``advert`` carries data for, most specific first."""
    found: list[str] = []
    if bthome.BTHOME_UUID in advert.service_data:
        found.append("bthome")
    environment = advert.service_data.get(pvvx.ENVIRONMENT_UUID)
    if environment is not None:
        if len(environment) == pvvx.PVVX_LENGTH:
            found.append("pvvx")
        elif len(environment) == pvvx.ATC_LENGTH:
            found.append("atc")
    ruuvi_data = advert.manufacturer_data.get(ruuvi.RUUVI_COMPANY_ID)
    if ruuvi_data and ruuvi_data[0] == 5:
        found.append("ruuvi")
    return tuple(found)


def _plain(advert: Advert) -> bool:
    """Whether the advert carries readings that are not encrypted (anyone can forge them)."""
    payload = advert.service_data.get(bthome.BTHOME_UUID)
    if payload:
        return not bthome.is_encrypted(payload)
    return bool(detect(advert))  # pvvx, ATC, Ruuvi: never encrypted


class AdvertDecoder:
    """One device's decoder (format, bindkey, repeat filter, counts)."""

    __slots__ = (
        "bindkey",
        "decode_errors",
        "duplicates",
        "filter",
        "format",
        "last_error",
        "rejected",
    )

    def __init__(self, advert_format: str = "auto", bindkey: bytes | None = None) -> None:
        self.format = advert_format
        self.bindkey = bindkey
        self.filter = bthome.BTHomeFilter()
        self.decode_errors = 0
        self.duplicates = 0
        self.rejected = 0
        """Unencrypted adverts refused because the device has a bindkey."""
        self.last_error: str | None = None

    def decode(self, advert: Advert) -> Decoded | None:
        """The advert's values (with ``rssi``), or None: not ours, a repeat, refused
        (unencrypted while a bindkey is set), or undecodable."""
        if self.format == "auto":
            candidates = detect(advert)
            if not candidates:
                return None
            chosen = candidates[0]
        else:
            chosen = self.format
        if self.bindkey is not None and _plain(advert):
            self.rejected += 1
            self.last_error = REFUSED_UNENCRYPTED
            return None
        try:
            decoded = self._decode(chosen, advert)
        except DecodeError as exc:
            self.decode_errors += 1
            self.last_error = str(exc)
            return None
        if decoded is None:
            return None
        if advert.rssi is not None:
            rssi = Measurement("rssi", advert.rssi, "dBm")
            decoded = Decoded(decoded.format, (*decoded.measurements, rssi), decoded.events)
        return decoded

    def _decode(self, chosen: str, advert: Advert) -> Decoded | None:
        if chosen == "bthome":
            payload = advert.service_data.get(bthome.BTHOME_UUID)
            if payload is None:
                return None
            packet = bthome.parse(payload, advert.address, self.bindkey)
            if not self.filter.accept(packet, advert.time):
                self.duplicates += 1
                return None
            if packet.problem is not None:
                self.last_error = packet.problem
            if not packet.measurements and not packet.events:
                return None
            return Decoded("bthome", packet.measurements, packet.events)
        if chosen in ("pvvx", "atc"):
            payload = advert.service_data.get(pvvx.ENVIRONMENT_UUID)
            if payload is None:
                return None
            packet_181a = pvvx.parse(payload, chosen)
            return Decoded(packet_181a.layout, packet_181a.measurements)
        if chosen == "ruuvi":
            payload = advert.manufacturer_data.get(ruuvi.RUUVI_COMPANY_ID)
            if payload is None:
                return None
            return Decoded("ruuvi", ruuvi.parse(payload))
        raise ValueError(f"unknown advert format {chosen!r}")
