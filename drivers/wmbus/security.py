"""OMS security, sans-I/O: decryption and authentication with a meter's AES-128 key.

* **ELL AES-128-CTR** (CI 0x8D/0x8F, session number bits 29–31 = 1): counter block
  M (2) A (6) CC (hop-count and repeated-access bits cleared) SN (4) FN (2, zero) BC (1,
  zero); the payload CRC (CRC-16 EN 13757 over the bytes after it, sent least
  significant byte first) is checked after decryption.
* **Mode 5** (AES-128-CBC, TPL configuration bits 8–12 = 5): IV = M (2) A (6) of the
  meter (the long header's when there is one, else the link layer's) + 8 × the access
  number; the configuration word's N blocks of 16 bytes are encrypted (N = 0: all).
* **Mode 7** (AES-128-CBC, IV zero): the keys are derived per message with AES-CMAC from
  the meter's key (OMS vol. 2, key derivation 1): ``K = CMAC(key, DC ‖ AFL.MCR ‖ id ‖
  07×7)`` with DC 0x00 for Kenc and 0x01 for Kmac; the AFL.MAC, ``CMAC(Kmac, AFL.MCL ‖
  AFL.MCR ‖ [AFL.ML] ‖ TPL…end)`` truncated to its length, is checked before decrypting.

Decrypted data must start with ``2F 2F``; otherwise the key is wrong (or the telegram
corrupt) and nothing of it is used. Errors (:class:`SecurityError`, a ``WmbusError``)::

    SecurityError
    ├── WrongKey              "wrong key or corrupt telegram" (2F2F, MAC or payload CRC)
    ├── KeyRequired           encrypted, and no key configured
    ├── UnencryptedRefused    a key is configured but the telegram is not encrypted
    └── UnsupportedSecurity   another security mode (DES 2/3, 8–10, manufacturer-specific)
"""

from __future__ import annotations

import hmac
from typing import Final, Literal

from citygate.drivers.wmbus.frame import MeterAddress, WmbusError, crc16
from citygate.drivers.wmbus.transport import AuthenticationLayer, ExtendedLinkLayer

__all__ = [
    "CHECK_BYTES",
    "KeyRequired",
    "SecurityError",
    "UnencryptedRefused",
    "UnsupportedSecurity",
    "WrongKey",
    "check_key",
    "derive_keys",
    "open_ell",
    "open_mode5",
    "open_mode7",
    "verify_check_bytes",
]

CHECK_BYTES: Final = b"\x2f\x2f"
_BLOCK: Final = 16
_ZERO_IV: Final = bytes(_BLOCK)
_KDF_PADDING: Final = b"\x07" * 7
_CC_NOT_IN_IV: Final = 0x10 | 0x02  # hop count, repeated access: a repeater may change them


class SecurityError(WmbusError):
    """The telegram's security cannot be undone or is not acceptable."""


class WrongKey(SecurityError):
    """Decryption gave no ``2F 2F`` (or the MAC or payload CRC failed)."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(f"wrong key or corrupt telegram ({detail})")


class KeyRequired(SecurityError):
    """The telegram is encrypted and no key was given."""


class UnencryptedRefused(SecurityError):
    """A key is configured for the meter, but this telegram is not encrypted."""


class UnsupportedSecurity(SecurityError):
    """A security mode other than OMS 5 and 7 (or ELL AES-CTR)."""


def check_key(key: bytes) -> None:
    """Raise ValueError unless ``key`` is an AES-128 key (a config error, not a decode one)."""
    if len(key) != _BLOCK:
        raise ValueError(f"a wireless M-Bus key has 16 bytes, got {len(key)}")


def verify_check_bytes(plain: bytes, detail: str) -> None:
    """Raise :class:`WrongKey` unless decrypted data starts with ``2F 2F``."""
    if not plain.startswith(CHECK_BYTES):
        raise WrongKey(detail)


# cryptography is imported where it is used: it costs ~8 MiB of memory, and an agent that
# loads this driver's entry point without a wireless meter (or one without keys) never decrypts.


def _aes_decrypt(key: bytes, mode: Literal["CBC", "CTR"], iv: bytes, data: bytes) -> bytes:
    """AES-128 in ``mode`` ("CBC" or "CTR", ``iv`` its IV or initial counter) over ``data``."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: PLC0415

    chosen = modes.CBC(iv) if mode == "CBC" else modes.CTR(iv)
    decryptor = Cipher(algorithms.AES(key), chosen).decryptor()
    return decryptor.update(data) + decryptor.finalize()


def _cbc_decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    return _aes_decrypt(key, "CBC", iv, data)


def _cmac(key: bytes, data: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers import algorithms  # noqa: PLC0415
    from cryptography.hazmat.primitives.cmac import CMAC  # noqa: PLC0415

    mac = CMAC(algorithms.AES(key))
    mac.update(data)
    return mac.finalize()


def _encrypted_part(data: bytes, blocks: int, mode: int) -> int:
    """How many leading bytes are encrypted (N blocks; N = 0: all of them)."""
    size = blocks * _BLOCK if blocks else len(data)
    if size > len(data):
        raise SecurityError(
            f"mode {mode}: the header announces {blocks} encrypted blocks ({size} bytes),"
            f" {len(data)} bytes follow"
        )
    if size == 0 or size % _BLOCK:
        raise SecurityError(f"mode {mode}: {size} encrypted bytes are not whole AES blocks")
    return size


def open_ell(link: MeterAddress, ell: ExtendedLinkLayer, data: bytes, key: bytes | None) -> bytes:
    """Decrypt (if encrypted and ``key`` is given) and check the ELL payload.

    ``data`` starts at the payload CRC; returns what follows it. Without a key, the
    payload is read as already decrypted (a receiver that decrypts). Raises
    :class:`WrongKey` when the payload CRC fails after decryption.
    """
    if ell.encryption > 1:
        raise UnsupportedSecurity(f"ELL encryption {ell.encryption} is not defined")
    if ell.encryption == 1 and key is not None:
        counter = (
            link.wire
            + bytes((ell.communication_control & ~_CC_NOT_IN_IV & 0xFF,))
            + ell.session_wire
            + bytes(3)
        )
        data = _aes_decrypt(key, "CTR", counter, data)
    found = int.from_bytes(data[0:2], "little")
    expected = crc16(data[2:])
    if found != expected:
        detail = f"ELL payload CRC {found:04X}, computed {expected:04X}"
        if ell.encryption == 1 and key is not None:
            raise WrongKey(detail)
        raise SecurityError(f"corrupt telegram: {detail}")
    return data[2:]


def open_mode5(
    key: bytes, meter: MeterAddress, access_number: int, blocks: int, data: bytes
) -> bytes:
    """Mode 5: decrypt the N encrypted blocks of ``data``; the rest is appended as sent."""
    size = _encrypted_part(data, blocks, 5)
    iv = meter.wire + bytes((access_number,)) * 8
    plain = _cbc_decrypt(key, iv, data[:size])
    verify_check_bytes(plain, "mode 5: no 2F2F after decryption")
    return plain + data[size:]


def derive_keys(key: bytes, counter: bytes, meter_id: bytes) -> tuple[bytes, bytes]:
    """OMS key derivation 1: (Kenc, Kmac) from the meter's key, AFL.MCR and id as sent."""
    tail = counter + meter_id + _KDF_PADDING
    return _cmac(key, b"\x00" + tail), _cmac(key, b"\x01" + tail)


def open_mode7(
    key: bytes,
    meter: MeterAddress,
    afl: AuthenticationLayer | None,
    key_derivation: int | None,
    blocks: int,
    tpl_onwards: bytes,
    data: bytes,
) -> bytes:
    """Mode 7: check the AFL MAC over ``tpl_onwards`` (the TPL's CI to the end), decrypt."""
    if key_derivation != 1:
        raise UnsupportedSecurity(f"mode 7 with key derivation {key_derivation}")
    if afl is None or afl.counter_wire is None or not afl.mac:
        raise SecurityError("mode 7 without an AFL message counter and MAC")
    size = _encrypted_part(data, blocks, 7)
    kenc, kmac = derive_keys(key, afl.counter_wire, meter.id_bytes)
    signed = bytes((afl.message_control or 0,)) + afl.counter_wire
    if afl.message_length is not None:
        signed += afl.message_length.to_bytes(2, "little")
    expected = _cmac(kmac, signed + tpl_onwards)[: len(afl.mac)]
    if not hmac.compare_digest(expected, afl.mac):
        raise WrongKey("mode 7: the AFL MAC does not match")
    plain = _cbc_decrypt(kenc, _ZERO_IV, data[:size])
    verify_check_bytes(plain, "mode 7: no 2F2F after decryption")
    return plain + data[size:]
