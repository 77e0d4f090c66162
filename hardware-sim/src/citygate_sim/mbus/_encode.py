"""M-Bus frames and data records, encoded from EN 13757-2 and EN 13757-3.

Written from the standard's tables, not from citygate's decoder: the simulator
is an independent oracle.

Link layer (EN 13757-2, FT1.2 of IEC 60870-5-2)::

    single character   E5
    short frame        10 C A CS 16
    long frame         68 L L 68 C A CI data CS 16      L = 3 + len(data)

CS is the arithmetic sum of C, A, CI and the data, modulo 256.

Application layer (EN 13757-3): a variable data response (CI 0x72) is the
fixed header (identification number as 8 BCD digits, least significant byte
first; manufacturer code; version; medium; access number; status; signature)
followed by data records ``DIF [DIFE…] VIF [VIFE…] data``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import date, datetime
from typing import Final

__all__ = [
    "ACK",
    "CI_RSP_UD_VARIABLE",
    "C_RSP_UD",
    "DIF_MORE_RECORDS",
    "MEDIUM_CODES",
    "Record",
    "bcd",
    "checksum",
    "date_g",
    "datetime_f",
    "long_frame",
    "manufacturer_code",
    "short_frame",
    "variable_header",
]

ACK: Final = b"\xe5"
C_RSP_UD: Final = 0x08
"""C field of RSP_UD (slave to master; ACD and DFC clear)."""
CI_RSP_UD_VARIABLE: Final = 0x72
"""Variable data structure, least significant byte first."""
DIF_MORE_RECORDS: Final = 0x1F
"""Special DIF: manufacturer data follow, and more records in the next telegram."""
DIF_MANUFACTURER: Final = 0x0F
"""Special DIF: manufacturer data follow to the end of the telegram."""

MEDIUM_CODES: Final[dict[str, int]] = {
    "other": 0x00,
    "oil": 0x01,
    "electricity": 0x02,
    "gas": 0x03,
    "heat": 0x04,
    "steam": 0x05,
    "warm_water": 0x06,
    "water": 0x07,
    "heat_cost_allocator": 0x08,
    "compressed_air": 0x09,
    "hot_water": 0x15,
    "cold_water": 0x16,
}
"""EN 13757-3 medium codes (a subset: the meters this simulator can be)."""


def checksum(data: bytes) -> int:
    """The FT1.2 checksum: the sum of ``data`` modulo 256."""
    return sum(data) % 256


def short_frame(control: int, address: int) -> bytes:
    """``10 C A CS 16``."""
    return bytes((0x10, control, address, (control + address) % 256, 0x16))


def long_frame(control: int, address: int, ci: int, data: bytes) -> bytes:
    """``68 L L 68 C A CI data CS 16``; raises ValueError if ``data`` is too long."""
    body = bytes((control, address, ci)) + data
    if len(body) > 255:
        raise ValueError(f"{len(data)} bytes of user data do not fit a long frame")
    return bytes((0x68, len(body), len(body), 0x68)) + body + bytes((checksum(body), 0x16))


def bcd(value: int, digits: int) -> bytes:
    """``value`` as ``digits`` packed BCD digits, least significant byte first.

    A negative value puts F in the top nibble (EN 13757-3 annex A, type A).
    """
    if digits % 2 or digits <= 0:
        raise ValueError("BCD needs an even number of digits")
    negative = value < 0
    magnitude = -value if negative else value
    text = f"{magnitude:0{digits}d}"
    if len(text) > digits or (negative and text[0] != "0"):
        raise ValueError(f"{value} does not fit {digits} BCD digits")
    if negative:
        text = "F" + text[1:]
    return bytes.fromhex(text)[::-1]


def manufacturer_code(letters: str) -> int:
    """Three upper-case letters as the 16-bit code: 32² × (c1 − 64) + 32 × (c2 − 64) + (c3 − 64)."""
    if len(letters) != 3 or not all("A" <= c <= "Z" for c in letters):
        raise ValueError(f"manufacturer {letters!r}: expected three letters A-Z")
    a, b, c = (ord(ch) - 64 for ch in letters)
    return (a << 10) | (b << 5) | c


def date_g(day: date) -> bytes:
    """Type G (16 bit): day, month, year in two bytes (EN 13757-3 annex A)."""
    year = day.year % 100
    low = (day.day & 0x1F) | ((year & 0x07) << 5)
    high = (day.month & 0x0F) | ((year >> 3) << 4)
    return bytes((low, high))


def datetime_f(moment: datetime) -> bytes:
    """Type F (32 bit): minute, hour, day, month, year; valid, standard time."""
    year = moment.year % 100
    return bytes(
        (
            moment.minute & 0x3F,
            moment.hour & 0x1F,
            (moment.day & 0x1F) | ((year & 0x07) << 5),
            (moment.month & 0x0F) | ((year >> 3) << 4),
        )
    )


@dataclass(frozen=True, slots=True)
class Record:
    """One data record: DIF (+DIFEs), VIF (+VIFEs) and its data bytes as sent."""

    dib: bytes
    vib: bytes
    data: bytes

    def encode(self) -> bytes:
        """The record's bytes."""
        return self.dib + self.vib + self.data

    @staticmethod
    def dib_for(
        data_field: int, *, storage: int = 0, function: int = 0, tariff: int = 0, subunit: int = 0
    ) -> bytes:
        """DIF and the DIFEs needed for ``storage``, ``tariff`` and ``subunit``.

        DIF: bit 7 extension, bit 6 storage LSB, bits 5-4 function, 3-0 data field.
        DIFE: bit 7 extension, bit 6 subunit, bits 5-4 tariff, 3-0 storage.
        """
        dif = (data_field & 0x0F) | ((function & 0x03) << 4) | ((storage & 1) << 6)
        storage >>= 1
        difes: list[int] = []
        while storage or tariff or subunit:
            difes.append((storage & 0x0F) | ((tariff & 0x03) << 4) | ((subunit & 1) << 6))
            storage >>= 4
            tariff >>= 2
            subunit >>= 1
        if difes:
            dif |= 0x80
            for i in range(len(difes) - 1):
                difes[i] |= 0x80
        return bytes((dif, *difes))


def int_data(value: int, size: int) -> bytes:
    """A signed integer of ``size`` bytes, least significant byte first."""
    return value.to_bytes(size, "little", signed=True)


def real32(value: float) -> bytes:
    """An IEEE 754 single, least significant byte first."""
    return struct.pack("<f", value)


def variable_header(
    ident: int,
    manufacturer: str,
    version: int,
    medium: int,
    access_number: int,
    status: int,
) -> bytes:
    """The 12-byte fixed header of a variable data response (CI 0x72)."""
    return (
        bcd(ident, 8)
        + manufacturer_code(manufacturer).to_bytes(2, "little")
        + bytes((version & 0xFF, medium & 0xFF, access_number & 0xFF, status & 0xFF))
        + b"\x00\x00"  # signature: no encryption
    )
