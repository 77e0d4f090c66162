"""The layers between the link frame and the application data, sans-I/O (OMS vol. 2).

Each parser takes the bytes from its CI field on and returns its header and the bytes
after it:

* :func:`parse_ell` — extended link layer, CI 0x8C (CC, ACC), 0x8D (+ session number,
  then the payload CRC, encrypted with the rest under ELL AES-CTR), 0x8E (+ the meter's
  address), 0x8F (both);
* :func:`parse_afl` — authentication and fragmentation layer, CI 0x90: fragment
  control, message control, key information, message counter, MAC, message length;
* :func:`parse_tpl` — transport layer, CI 0x7A (short header: access number, status,
  configuration word), 0x72 (long header: the meter's id, manufacturer, version, device
  type, then the short header's fields) and 0x78 (none); mode 7 adds a configuration
  extension byte.

Errors: :class:`TransportLayerError` (a header runs past the end, a bad AFL length or
MAC type) and :class:`UnsupportedTelegram` (a well-formed telegram of a kind not decoded
here: compact frames, alarms, commands, fragments of a longer message), both
:class:`~citygate.drivers.wmbus.frame.WmbusError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from citygate.drivers.wmbus.frame import MeterAddress, WmbusError

__all__ = [
    "AFL_CI",
    "ELL_CIS",
    "TPL_LONG",
    "TPL_NONE",
    "TPL_SHORT",
    "AuthenticationLayer",
    "ExtendedLinkLayer",
    "TransportHeader",
    "TransportLayerError",
    "UnsupportedTelegram",
    "is_manufacturer_ci",
    "parse_afl",
    "parse_ell",
    "parse_tpl",
]

ELL_CIS: Final = frozenset((0x8C, 0x8D, 0x8E, 0x8F))
AFL_CI: Final = 0x90
TPL_SHORT: Final = 0x7A
TPL_LONG: Final = 0x72
TPL_NONE: Final = 0x78

_MAC_LENGTHS: Final = {3: 2, 4: 4, 5: 8, 6: 12, 7: 16}
"""AFL.MCL authentication type → AES-CMAC length (0: none; 8, AES-GMAC, not supported)."""

_NOT_DECODED: Final = {
    0x79: "a compact frame (CI 0x79): its record layout was sent in an earlier full frame",
    0x7B: "a compact frame (CI 0x7B): its record layout was sent in an earlier full frame",
    0x73: "a compact frame (CI 0x73): its record layout was sent in an earlier full frame",
    0x6E: "an application error (CI 0x6E)",
    0x6F: "an application error (CI 0x6F)",
    0x70: "an application error (CI 0x70)",
    0x74: "an alarm (CI 0x74)",
    0x75: "an alarm (CI 0x75)",
    0x86: "an extended link layer of variable length (CI 0x86)",
}


class TransportLayerError(WmbusError):
    """An ELL, AFL or TPL header cannot be read."""


class UnsupportedTelegram(WmbusError):
    """A telegram of a kind this decoder does not read (a compact frame, an alarm …)."""


def is_manufacturer_ci(ci: int) -> bool:
    """CI 0xA0–0xB7: a manufacturer-specific application layer."""
    return 0xA0 <= ci <= 0xB7


def _need(data: bytes, size: int, what: str) -> None:
    if len(data) < size:
        raise TransportLayerError(f"{what} needs {size} bytes, found {len(data)}")


@dataclass(frozen=True, slots=True)
class ExtendedLinkLayer:
    """CI 0x8C–0x8F (EN 13757-4)."""

    ci: int
    communication_control: int
    access_number: int
    address: MeterAddress | None
    """The meter's address (CI 0x8E, 0x8F)."""
    session_number: int | None
    """CI 0x8D, 0x8F: session number; the payload CRC follows it."""

    @property
    def encryption(self) -> int:
        """Session number bits 29–31: 0 none, 1 AES-128-CTR."""
        return 0 if self.session_number is None else self.session_number >> 29

    @property
    def session_wire(self) -> bytes:
        """The session number as sent (part of the AES-CTR counter block)."""
        return (self.session_number or 0).to_bytes(4, "little")


def parse_ell(data: bytes) -> tuple[ExtendedLinkLayer, bytes]:
    """The extended link layer and what follows (from the payload CRC on, for 0x8D/0x8F)."""
    ci = data[0]
    has_address = ci in (0x8E, 0x8F)
    has_session = ci in (0x8D, 0x8F)
    size = 3 + (8 if has_address else 0) + (4 if has_session else 0)
    _need(data, size + (2 if has_session else 0), f"extended link layer 0x{ci:02X}")
    address = None
    pos = 3
    if has_address:
        address = MeterAddress.from_wire(data[3:5], data[5:9], data[9], data[10])
        pos = 11
    session = int.from_bytes(data[pos : pos + 4], "little") if has_session else None
    ell = ExtendedLinkLayer(ci, data[1], data[2], address, session)
    return ell, data[size:]


@dataclass(frozen=True, slots=True)
class AuthenticationLayer:
    """CI 0x90 (EN 13757-7 / OMS vol. 2): fragmentation and message authentication."""

    fragment_control: int
    message_control: int | None
    key_information: int | None
    counter_wire: bytes | None
    """AFL.MCR as sent (4 bytes, least significant first)."""
    mac: bytes
    message_length: int | None

    @property
    def fragment_id(self) -> int:
        """AFL.FC bits 0–7."""
        return self.fragment_control & 0xFF

    @property
    def more_fragments(self) -> bool:
        """AFL.FC bit 14: more fragments of this message follow."""
        return bool(self.fragment_control & 0x4000)

    @property
    def message_counter(self) -> int | None:
        """AFL.MCR as a number."""
        return None if self.counter_wire is None else int.from_bytes(self.counter_wire, "little")

    @property
    def authentication_type(self) -> int:
        """AFL.MCL bits 0–3 (5: AES-CMAC-128 truncated to 8 bytes)."""
        return (self.message_control or 0) & 0x0F


def parse_afl(data: bytes) -> tuple[AuthenticationLayer, bytes]:
    """The AFL header (CI 0x90, AFL.L bytes) and what follows it."""
    _need(data, 4, "the AFL header")
    length = data[1]
    _need(data, 2 + length, f"an AFL of length {length}")
    body, rest = data[2 : 2 + length], data[2 + length :]
    _need(body, 2, "AFL.FC")
    fc = int.from_bytes(body[0:2], "little")
    pos = 2
    fields: dict[str, bytes] = {}
    sizes = (("mcl", 0x2000, 1), ("ki", 0x0200, 2), ("mcr", 0x0800, 4))
    for name, bit, size in sizes:
        if fc & bit:
            _need(body[pos:], size, f"AFL field {name.upper()}")
            fields[name] = body[pos : pos + size]
            pos += size
    mcl = fields["mcl"][0] if "mcl" in fields else None
    mac = b""
    if fc & 0x0400:
        at = (mcl or 0) & 0x0F
        if at not in _MAC_LENGTHS:
            raise TransportLayerError(f"AFL MAC of authentication type {at} is not supported")
        size = _MAC_LENGTHS[at]
        _need(body[pos:], size, "AFL.MAC")
        mac = body[pos : pos + size]
        pos += size
    message_length = None
    if fc & 0x1000:
        _need(body[pos:], 2, "AFL.ML")
        message_length = int.from_bytes(body[pos : pos + 2], "little")
        pos += 2
    if pos != len(body):
        raise TransportLayerError(f"AFL.L is {length}, its fields take {pos}")
    afl = AuthenticationLayer(
        fragment_control=fc,
        message_control=mcl,
        key_information=int.from_bytes(fields["ki"], "little") if "ki" in fields else None,
        counter_wire=fields.get("mcr"),
        mac=mac,
        message_length=message_length,
    )
    return afl, rest


@dataclass(frozen=True, slots=True)
class TransportHeader:
    """The transport layer header (CI 0x7A, 0x72, 0x78)."""

    ci: int
    access_number: int | None
    status: int | None
    configuration: int
    """The configuration word (0 for CI 0x78)."""
    configuration_ext: int | None
    """Mode 7's configuration field extension (key derivation in bits 4–5)."""
    meter: MeterAddress | None
    """The long header's meter address (CI 0x72)."""

    @property
    def security_mode(self) -> int:
        """Configuration bits 8–12: 0 none, 5 AES-CBC with IV, 7 AES-CBC with derived keys."""
        return (self.configuration >> 8) & 0x1F

    @property
    def encrypted_blocks(self) -> int:
        """Configuration bits 4–7: the number of encrypted 16-byte blocks (modes 5 and 7)."""
        return (self.configuration >> 4) & 0x0F

    @property
    def key_derivation(self) -> int | None:
        """Mode 7: configuration extension bits 4–5 (1: the OMS key derivation)."""
        return None if self.configuration_ext is None else (self.configuration_ext >> 4) & 0x03


def parse_tpl(data: bytes) -> tuple[TransportHeader, bytes]:
    """The transport header and the application data after it (still encrypted)."""
    ci = data[0]
    if ci == TPL_NONE:
        return TransportHeader(ci, None, None, 0, None, None), data[1:]
    if ci not in (TPL_SHORT, TPL_LONG):
        reason = _NOT_DECODED.get(ci, f"CI 0x{ci:02X}, which carries no meter data")
        raise UnsupportedTelegram(f"not decoded: {reason}")
    pos = 1
    meter = None
    if ci == TPL_LONG:
        _need(data, 9, "the long transport header")
        meter = MeterAddress.from_wire(data[5:7], data[1:5], data[7], data[8])
        pos = 9
    _need(data, pos + 4, "the transport header")
    access, status = data[pos], data[pos + 1]
    configuration = int.from_bytes(data[pos + 2 : pos + 4], "little")
    pos += 4
    extension = None
    if (configuration >> 8) & 0x1F == 7:
        _need(data, pos + 1, "the mode 7 configuration extension")
        extension = data[pos]
        pos += 1
    header = TransportHeader(ci, access, status, configuration, extension, meter)
    return header, data[pos:]
