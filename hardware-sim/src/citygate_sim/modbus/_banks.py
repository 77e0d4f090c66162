"""Sparse register and bit tables: mapped ranges hold data, the rest is unmapped."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping

from ._pdu import pack_bits

_ADDRESS_SPACE = 0x10000


def _merge(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted ``(start, end)`` ranges with touching or overlapping ones joined."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if not 0 <= start < end <= _ADDRESS_SPACE:
            raise ValueError(f"range {start}..{end - 1} outside the address space")
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


class AddressRanges:
    """A set of address ranges of one table: answers whether a read lies inside one."""

    def __init__(self, ranges: Iterable[tuple[int, int]]) -> None:
        """The addresses ``start .. end - 1`` of every ``(start, end)``."""
        merged = _merge(ranges)
        self._starts = [start for start, _ in merged]
        self._ends = [end for _, end in merged]

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """The ranges as sorted, disjoint ``(start, end)`` pairs."""
        return list(zip(self._starts, self._ends, strict=True))

    def contains(self, address: int, count: int) -> bool:
        """True if ``address .. address + count - 1`` lies inside one range."""
        index = bisect_right(self._starts, address) - 1
        return index >= 0 and address + count <= self._ends[index]


class RegisterBank:
    """A 16-bit register table whose mapped ranges are contiguous byte images.

    Registers are stored as they go on the wire (big-endian words), so a read is
    one slice of one image.
    """

    def __init__(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Map the registers ``start .. end - 1`` of every ``(start, end)``, all zero."""
        merged = _merge(ranges)
        self._starts = [start for start, _ in merged]
        self._ends = [end for _, end in merged]
        self._images = [bytearray(2 * (end - start)) for start, end in merged]

    @classmethod
    def from_words(cls, words: Mapping[int, int]) -> RegisterBank:
        """A bank mapping exactly the addresses of ``words``, holding their values."""
        bank = cls((address, address + 1) for address in words)
        for address, word in words.items():
            bank.write(address, (word & 0xFFFF).to_bytes(2, "big"))
        return bank

    def _locate(self, address: int, count: int) -> tuple[bytearray, int] | None:
        index = bisect_right(self._starts, address) - 1
        if index < 0 or address + count > self._ends[index]:
            return None
        return self._images[index], 2 * (address - self._starts[index])

    def slot(self, address: int, count: int) -> tuple[bytearray, int]:
        """The image and byte offset of ``count`` mapped registers from ``address``."""
        located = self._locate(address, count)
        if located is None:
            raise ValueError(f"registers {address}..{address + count - 1} are not all mapped")
        return located

    def write(self, address: int, data: bytes) -> None:
        """Store wire bytes (an even number) from ``address``."""
        image, offset = self.slot(address, len(data) // 2)
        image[offset : offset + len(data)] = data

    def read(self, address: int, count: int) -> bytes | None:
        """Wire bytes of ``count`` registers, or None if any of them is unmapped."""
        located = self._locate(address, count)
        if located is None:
            return None
        image, offset = located
        return bytes(image[offset : offset + 2 * count])

    def read_zero_filled(self, address: int, count: int) -> bytes:
        """Wire bytes of ``count`` registers, unmapped ones reading as zero."""
        located = self._locate(address, count)
        if located is not None:
            image, offset = located
            return bytes(image[offset : offset + 2 * count])
        out = bytearray(2 * count)
        for start, end, image in zip(self._starts, self._ends, self._images, strict=True):
            low, high = max(start, address), min(end, address + count)
            if low < high:
                out[2 * (low - address) : 2 * (high - address)] = image[
                    2 * (low - start) : 2 * (high - start)
                ]
        return bytes(out)


class BitBank:
    """A bit table (coils or discrete inputs); addresses not in it are unmapped."""

    def __init__(self, bits: Mapping[int, bool]) -> None:
        """Map the addresses of ``bits``, holding their values."""
        size = max(bits, default=-1) + 1
        if size > _ADDRESS_SPACE or any(address < 0 for address in bits):
            raise ValueError("bit address outside the address space")
        self._values = bytearray(size)
        self._mapped = bytearray(size)
        for address, value in bits.items():
            self._values[address] = 1 if value else 0
            self._mapped[address] = 1

    @classmethod
    def unset(cls, addresses: Iterable[int]) -> BitBank:
        """A bank mapping ``addresses``, every bit 0."""
        return cls(dict.fromkeys(addresses, False))

    def set(self, address: int, value: bool) -> None:
        """Set one mapped bit."""
        if address >= len(self._mapped) or not self._mapped[address]:
            raise ValueError(f"bit {address} is not mapped")
        self._values[address] = 1 if value else 0

    def get(self, address: int) -> bool:
        """One bit's value (an unmapped bit reads as False)."""
        return address < len(self._values) and self._values[address] == 1

    def read(self, address: int, count: int) -> bytes | None:
        """Packed bits, or None if any of them is unmapped."""
        end = address + count
        if end > len(self._mapped) or self._mapped.find(0, address, end) != -1:
            return None
        return pack_bits(self._values[address:end])

    def read_zero_filled(self, address: int, count: int) -> bytes:
        """Packed bits, unmapped ones reading as 0."""
        values = self._values[address : address + count]
        return pack_bits(values + bytes(count - len(values)))
