"""Wireless M-Bus telegrams, encoded from EN 13757-4 (link layer) and OMS / EN 13757-7.

Written from the standards' tables, never through citygate's decoder: the simulator
is an independent oracle. A telegram as a receiver delivers it (block CRCs removed)::

    L  C  M M  A A A A A A  CI  ...            L = number of bytes after it
          │    └ id (4 BCD, least significant byte first), version, device type
          └ manufacturer (3 letters in 15 bits, least significant byte first)

C = 0x44 (SND_NR, a meter's spontaneous message). CI 0x7A: the short transport
header — access number, status, configuration word (least significant byte first)::

    bit 15 bidirectional, 14 accessibility, 13 synchronous,
    bits 12-8 security mode, 7-4 number of encrypted 16-byte blocks, 3-2 content, 1-0 hops

Security mode 5 (OMS vol. 2): AES-128-CBC over ``2F 2F`` + records padded with
``2F`` to whole blocks; IV = M (2) A (6) of the link layer + 8 × the access number.
The AES is the simulator's own (FIPS-197, :mod:`citygate_sim.ble._aes`).
"""

from __future__ import annotations

from typing import Final

from ..ble._aes import encrypt_block
from ..mbus._encode import bcd, manufacturer_code

__all__ = [
    "CI_SHORT_TPL",
    "C_SND_NR",
    "DEVICE_TYPES",
    "FILL",
    "cbc_encrypt",
    "configuration_word",
    "link_header",
    "mode5_iv",
    "telegram",
]

C_SND_NR: Final = 0x44
CI_SHORT_TPL: Final = 0x7A
FILL: Final = 0x2F
"""The idle filler (``2F``): two of them open the encrypted part (the check bytes)."""

DEVICE_TYPES: Final[dict[str, int]] = {"heat": 0x04, "warm_water": 0x06, "water": 0x07}
"""EN 13757-7 device types (medium) of the meters simulated here."""


def link_header(manufacturer: str, ident: int, version: int, device_type: int) -> bytes:
    """M (2) and A (6): manufacturer, id (8 BCD digits), version, device type."""
    return (
        manufacturer_code(manufacturer).to_bytes(2, "little")
        + bcd(ident, 8)
        + bytes((version & 0xFF, device_type & 0xFF))
    )


def configuration_word(mode: int, blocks: int) -> int:
    """Security ``mode`` (0: none, 5: AES-CBC) and the number of encrypted blocks."""
    if not 0 <= mode <= 31 or not 0 <= blocks <= 15:
        raise ValueError("security mode 0-31, encrypted blocks 0-15")
    return (mode << 8) | (blocks << 4)


def mode5_iv(address: bytes, access_number: int) -> bytes:
    """IV of mode 5: the 8 bytes of M and A, then the access number 8 times."""
    if len(address) != 8:
        raise ValueError("M and A are 8 bytes")
    return address + bytes((access_number & 0xFF,)) * 8


def cbc_encrypt(key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    """AES-128-CBC of whole 16-byte blocks (no padding here)."""
    if len(plaintext) % 16:
        raise ValueError("CBC takes whole 16-byte blocks")
    out = bytearray()
    previous = iv
    for at in range(0, len(plaintext), 16):
        block = bytes(a ^ b for a, b in zip(plaintext[at : at + 16], previous, strict=True))
        previous = encrypt_block(key, block)
        out += previous
    return bytes(out)


def telegram(
    *,
    manufacturer: str,
    ident: int,
    version: int,
    device_type: int,
    access_number: int,
    status: int,
    records: bytes,
    key: bytes | None,
) -> bytes:
    """A SND_NR telegram with a short transport header, from its L-field on, no CRCs.

    With a ``key`` it is encrypted in security mode 5 (every record inside the
    encrypted blocks); without, mode 0 and the records follow the header in clear.
    """
    address = link_header(manufacturer, ident, version, device_type)
    if key is None:
        config, body = configuration_word(0, 0), records
    else:
        if len(key) != 16:
            raise ValueError("an AES-128 key is 16 bytes")
        plain = bytes((FILL, FILL)) + records
        plain += bytes((FILL,)) * (-len(plain) % 16)
        blocks = len(plain) // 16
        config = configuration_word(5, blocks)
        body = cbc_encrypt(key, mode5_iv(address, access_number), plain)
    tpl = bytes((CI_SHORT_TPL, access_number & 0xFF, status & 0xFF)) + config.to_bytes(2, "little")
    rest = bytes((C_SND_NR,)) + address + tpl + body
    if len(rest) > 255:
        raise ValueError(f"{len(rest)} bytes after L do not fit one telegram")
    return bytes((len(rest),)) + rest
