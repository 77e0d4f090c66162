"""AES-128 (FIPS-197, encryption only) and CCM (NIST SP 800-38C), standard library only.

Written from the standards so that the simulator's encrypted BTHome adverts are
an independent oracle for citygate's decoder (which uses ``cryptography``).
Slow and not constant-time: fine for a simulator, never for a product.
"""

from __future__ import annotations

import functools


def _xtime(a: int) -> int:
    a <<= 1
    return (a ^ 0x11B) & 0xFF if a & 0x100 else a


def _multiply(a: int, b: int) -> int:
    product = 0
    while b:
        if b & 1:
            product ^= a
        a = _xtime(a)
        b >>= 1
    return product


def _sbox() -> list[int]:
    inverse = [0] * 256
    for x in range(1, 256):
        for y in range(1, 256):
            if _multiply(x, y) == 1:
                inverse[x] = y
                break
    box = []
    for x in range(256):
        b = inverse[x]
        s = b
        for shift in range(1, 5):
            s ^= ((b << shift) | (b >> (8 - shift))) & 0xFF
        box.append(s ^ 0x63)
    return box


_SBOX = _sbox()


@functools.lru_cache(maxsize=64)
def _expand(key: bytes) -> list[list[int]]:
    words = [list(key[i : i + 4]) for i in range(0, 16, 4)]
    rcon = 1
    for i in range(4, 44):
        word = list(words[i - 1])
        if i % 4 == 0:
            word = [_SBOX[b] for b in word[1:] + word[:1]]
            word[0] ^= rcon
            rcon = _xtime(rcon)
        words.append([a ^ b for a, b in zip(words[i - 4], word, strict=True)])
    return [[b for word in words[r * 4 : r * 4 + 4] for b in word] for r in range(11)]


def encrypt_block(key: bytes, block: bytes) -> bytes:
    """AES-128 of one 16-byte block."""
    if len(key) != 16 or len(block) != 16:
        raise ValueError("AES-128 takes a 16-byte key and a 16-byte block")
    rounds = _expand(key)
    state = [b ^ k for b, k in zip(block, rounds[0], strict=True)]
    for r in range(1, 11):
        state = [_SBOX[b] for b in state]
        # ShiftRows: state is column-major (byte i = row i % 4, column i // 4).
        state = [state[(i + 4 * (i % 4)) % 16] for i in range(16)]
        if r != 10:
            mixed = []
            for c in range(4):
                a = state[4 * c : 4 * c + 4]
                mixed += [
                    _multiply(a[0], 2) ^ _multiply(a[1], 3) ^ a[2] ^ a[3],
                    a[0] ^ _multiply(a[1], 2) ^ _multiply(a[2], 3) ^ a[3],
                    a[0] ^ a[1] ^ _multiply(a[2], 2) ^ _multiply(a[3], 3),
                    _multiply(a[0], 3) ^ a[1] ^ a[2] ^ _multiply(a[3], 2),
                ]
            state = mixed
        state = [b ^ k for b, k in zip(state, rounds[r], strict=True)]
    return bytes(state)


def ccm_encrypt(key: bytes, nonce: bytes, plaintext: bytes, tag_length: int = 4) -> bytes:
    """CCM without associated data: ciphertext followed by a ``tag_length``-byte tag."""
    q = 15 - len(nonce)  # bytes of the length field
    if not 7 <= len(nonce) <= 13:
        raise ValueError("CCM nonce must be 7 to 13 bytes")
    flags = ((tag_length - 2) // 2) << 3 | (q - 1)
    b0 = bytes([flags]) + nonce + len(plaintext).to_bytes(q, "big")
    mac = encrypt_block(key, b0)
    for i in range(0, len(plaintext), 16):
        chunk = plaintext[i : i + 16].ljust(16, b"\0")
        mac = encrypt_block(key, bytes(a ^ b for a, b in zip(mac, chunk, strict=True)))

    def counter_block(i: int) -> bytes:
        return encrypt_block(key, bytes([q - 1]) + nonce + i.to_bytes(q, "big"))

    out = bytearray()
    for n, i in enumerate(range(0, len(plaintext), 16), start=1):
        stream = counter_block(n)
        out += bytes(a ^ b for a, b in zip(plaintext[i : i + 16], stream, strict=False))
    tag = bytes(a ^ b for a, b in zip(mac[:tag_length], counter_block(0), strict=False))
    return bytes(out) + tag
