"""EN 13757-4 data link layer, sans-I/O: a radio frame in, a :class:`LinkFrame` out.

A frame starts with the L-field, then C (1 byte), M (manufacturer, 2 bytes) and A
(id 4 bytes, version, device type): the 10-byte first block. What follows (CI on) is
the payload. On air the blocks carry a CRC-16 (EN 13757-4: polynomial 0x3D65, initial
value 0, complemented, sent most significant byte first):

* **format A**: L counts the bytes after it *without* the CRCs; the first block (10
  bytes) and every following block of 16 bytes (the last may be shorter) end in a CRC;
* **format B**: L counts the bytes after it *with* the CRCs; one CRC over the first 126
  bytes (L to the end of block 2), and for longer frames a second one over block 3.

Receivers often remove the CRCs before they hand a frame over (``crc_present=False``);
L then counts the bytes after it (format B sticks may keep the on-air L: pass
``frame_format="B"`` to accept it).

Errors (all :class:`WmbusError`, a ``DecodeError``)::

    FrameError              the frame cannot be read
    ├── FrameTooShort       fewer bytes than a first block
    ├── BadLength           the L-field does not match the bytes received
    └── CrcMismatch         block N fails its CRC (``block``, 1-based)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from citygate.drivers.api import DecodeError
from citygate.drivers.mbus.decode import MEDIUMS  # the wired and wireless headers share it

__all__ = [
    "MEDIUMS",
    "BadLength",
    "CrcMismatch",
    "FrameError",
    "FrameFormat",
    "FrameTooShort",
    "LinkFrame",
    "MeterAddress",
    "WmbusError",
    "crc16",
    "parse_frame",
]

FrameFormat = Literal["A", "B"]

HEADER_LENGTH: Final = 10
"""L, C, M (2), A (6): the first block of both formats."""
_BLOCK: Final = 16
_FORMAT_B_FIRST: Final = 126
"""Format B: blocks 1 and 2 (L … byte 125) share one CRC."""


class WmbusError(DecodeError):
    """Anything a wireless M-Bus telegram cannot be decoded for."""


class FrameError(WmbusError):
    """The link layer frame cannot be read."""


class FrameTooShort(FrameError):
    """Fewer bytes than the first block (and its CRC)."""


class BadLength(FrameError):
    """The L-field does not match the number of bytes received."""


class CrcMismatch(FrameError):
    """A block fails its CRC; ``block`` is 1-based (1: the first block)."""

    def __init__(self, block: int, expected: int, found: int) -> None:
        self.block = block
        super().__init__(
            f"CRC mismatch in block {block}: computed {expected:04X}, found {found:04X}"
        )


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x3D65) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return tuple(table)


_TABLE: Final = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16 of EN 13757-4 (polynomial 0x3D65, initial 0, complemented)."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _TABLE[(crc >> 8) ^ byte]
    return crc ^ 0xFFFF


def manufacturer_letters(code: int) -> str:
    """The three letters of an EN 13757 manufacturer code (``0x2C2D`` → ``KAM``)."""
    return "".join(chr(((code >> shift) & 0x1F) + 64) for shift in (10, 5, 0))


def medium_name(device_type: int) -> str:
    """The device type's medium word (``0x07`` → ``water``)."""
    return MEDIUMS.get(device_type, f"medium_0x{device_type:02x}")


@dataclass(frozen=True, slots=True)
class MeterAddress:
    """A meter's address: manufacturer, id, version, device type (link or long TPL header)."""

    manufacturer_code: int
    """The M-field as a 16-bit number (``0x2C2D``)."""
    id: str
    """The identification number as printed: 8 BCD digits (hex digits if not BCD)."""
    version: int
    device_type: int
    wire: bytes
    """M (2 bytes) then id (4), version, device type as sent: the mode 5 IV's first half."""

    @property
    def manufacturer(self) -> str:
        """Three letters (``KAM``)."""
        return manufacturer_letters(self.manufacturer_code)

    @property
    def medium(self) -> str:
        """The device type as a word (``water``, ``heat``, ``medium_0x3f``)."""
        return medium_name(self.device_type)

    @property
    def id_bytes(self) -> bytes:
        """The id as sent (least significant byte first): part of the mode 7 key derivation."""
        return self.wire[2:6]

    @classmethod
    def from_wire(
        cls, m_field: bytes, id_field: bytes, version: int, device_type: int
    ) -> MeterAddress:
        """Build from the fields as sent (M and id least significant byte first)."""
        return cls(
            manufacturer_code=int.from_bytes(m_field, "little"),
            id=id_field[::-1].hex().upper(),
            version=version,
            device_type=device_type,
            wire=bytes(m_field) + bytes(id_field) + bytes((version, device_type)),
        )


@dataclass(frozen=True, slots=True)
class LinkFrame:
    """A link layer frame with its CRCs checked and removed."""

    length: int
    """The L-field as received."""
    control: int
    """The C-field (0x44 SND_NR, 0x46 SND_IR, 0x08 RSP_UD …)."""
    address: MeterAddress
    payload: bytes
    """Everything after the first block, CI field first, without CRCs."""
    frame_format: FrameFormat | None
    """The on-air format whose CRCs were checked; None when they had been removed."""

    @property
    def header(self) -> bytes:
        """The first block without its L-field: C, M, A (part of no CRC any more)."""
        return bytes((self.control,)) + self.address.wire


def _check(data: bytes, start: int, end: int, block: int) -> bytes:
    """Bytes start…end, checked against the CRC that follows them."""
    expected = crc16(data[start:end])
    found = int.from_bytes(data[end : end + 2], "big")
    if expected != found:
        raise CrcMismatch(block, expected, found)
    return data[start:end]


def _format_a_size(length: int) -> int:
    rest = length - (HEADER_LENGTH - 1)
    return 1 + length + 2 * (1 + -(-rest // _BLOCK))


def _strip_a(data: bytes) -> bytes:
    parts = [_check(data, 0, HEADER_LENGTH, 1)]
    pos = HEADER_LENGTH + 2
    block = 2
    while pos < len(data):
        end = min(pos + _BLOCK, len(data) - 2)
        parts.append(_check(data, pos, end, block))
        pos = end + 2
        block += 1
    return b"".join(parts)


def _strip_b(data: bytes) -> bytes:
    if len(data) <= _FORMAT_B_FIRST + 2:
        return _check(data, 0, len(data) - 2, 1)
    return _check(data, 0, _FORMAT_B_FIRST, 1) + _check(data, _FORMAT_B_FIRST + 2, len(data) - 2, 2)


def _format_b_ok(length: int, size: int) -> bool:
    # block 3, when there is one, holds at least one byte besides its CRC
    return size == length + 1 and size >= HEADER_LENGTH + 2 and size not in (129, 130)


def _stripped_b_length(size: int) -> int:
    """The on-air format B L-field of a frame of ``size`` bytes after CRC removal."""
    crcs = 2 if size <= _FORMAT_B_FIRST else 4
    return size - 1 + crcs


def parse_frame(
    data: bytes, *, crc_present: bool = True, frame_format: FrameFormat | None = None
) -> LinkFrame:
    """Read one frame from its L-field on.

    ``crc_present``: the block CRCs are still in (as on air); they are checked and
    removed. ``frame_format``: ``"A"``, ``"B"`` or None (with CRCs: told by L; without:
    L must count the bytes after it, or be format B's on-air L when ``"B"`` is given).
    Raises :class:`FrameError`.
    """
    data = bytes(data)
    minimum = HEADER_LENGTH + (2 if crc_present else 0)
    if len(data) < minimum:
        raise FrameTooShort(f"a frame needs at least {minimum} bytes, found {len(data)}")
    length = data[0]
    if length < HEADER_LENGTH - 1:
        raise BadLength(f"L-field {length} is shorter than the link header")
    used: FrameFormat | None = None
    if crc_present:
        size_a = _format_a_size(length)
        if frame_format != "B" and len(data) == size_a:
            used, stripped = "A", _strip_a(data)
        elif frame_format != "A" and _format_b_ok(length, len(data)):
            used, stripped = "B", _strip_b(data)
        else:
            wanted = {"A": f"{size_a} (format A)", "B": f"{length + 1} (format B)"}
            shown = " or ".join(v for k, v in wanted.items() if frame_format in (None, k))
            raise BadLength(f"L-field {length} announces {shown} bytes, found {len(data)}")
    else:
        stripped = data
        accepted = {len(data) - 1}
        if frame_format == "B":
            accepted.add(_stripped_b_length(len(data)))
        if length not in accepted:
            raise BadLength(f"L-field {length} does not match the {len(data) - 1} bytes after it")
    return LinkFrame(
        length=length,
        control=stripped[1],
        address=MeterAddress.from_wire(stripped[2:4], stripped[4:8], stripped[8], stripped[9]),
        payload=stripped[HEADER_LENGTH:],
        frame_format=used,
    )
