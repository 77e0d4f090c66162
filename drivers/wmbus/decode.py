"""A wireless M-Bus telegram, bytes to records, sans-I/O.

:func:`decode_telegram` runs the layers in order — link frame (CRCs), extended link
layer (AES-CTR), authentication and fragmentation layer, transport header, OMS
security mode 5 or 7 — then the EN 13757-3 application layer of the wired decoder
(:func:`citygate.drivers.mbus.decode.decode_user_data`), and returns its
:class:`~citygate.drivers.mbus.decode.Telegram` whose ``Header`` is the meter's: id,
manufacturer, version and medium of the long transport header when there is one (CI
0x72), else of the link layer; access number, status and configuration word
(``signature``) of the transport header. :func:`decode` returns the layers too, and
:func:`inspect` reads them without a key (what a scan shows: who, encrypted or not).

With a ``key``, a telegram that is not encrypted (neither by its transport header nor
by its extended link layer) is refused: someone else could send it. A manufacturer-
specific CI (0xA0–0xB7) gives a telegram without records whose
``manufacturer_data`` holds the bytes after the CI (refused with a key: its security
is not the standard's).

Errors: every failure is a :class:`~citygate.drivers.wmbus.frame.WmbusError` (a
``DecodeError``): ``FrameError`` (frame), ``TransportLayerError`` /
``UnsupportedTelegram`` (headers), ``SecurityError`` (keys; ``WrongKey`` says "wrong key
or corrupt telegram"), :class:`ApplicationLayerError` (the records).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from citygate.drivers.api import DecodeError
from citygate.drivers.mbus.decode import Header, Telegram, decode_user_data
from citygate.drivers.wmbus.frame import (
    FrameFormat,
    LinkFrame,
    MeterAddress,
    WmbusError,
    parse_frame,
)
from citygate.drivers.wmbus.security import (
    KeyRequired,
    UnencryptedRefused,
    UnsupportedSecurity,
    check_key,
    open_ell,
    open_mode5,
    open_mode7,
    verify_check_bytes,
)
from citygate.drivers.wmbus.transport import (
    AFL_CI,
    ELL_CIS,
    AuthenticationLayer,
    ExtendedLinkLayer,
    TransportHeader,
    TransportLayerError,
    UnsupportedTelegram,
    is_manufacturer_ci,
    parse_afl,
    parse_ell,
    parse_tpl,
)

__all__ = [
    "ApplicationLayerError",
    "Envelope",
    "WirelessTelegram",
    "decode",
    "decode_telegram",
    "inspect",
]


class ApplicationLayerError(WmbusError):
    """The decrypted application data holds no readable records."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """The layers around the application data, as far as they can be read."""

    link: LinkFrame
    ell: ExtendedLinkLayer | None
    afl: AuthenticationLayer | None
    tpl: TransportHeader | None
    """None when the ELL encrypts it (and no key was used) or the CI is manufacturer's."""
    ci: int | None
    """The CI field of the application layer (after ELL and AFL), when readable."""

    @property
    def meter(self) -> MeterAddress:
        """The meter: the long transport header's address, else the link layer's."""
        if self.tpl is not None and self.tpl.meter is not None:
            return self.tpl.meter
        return self.link.address

    @property
    def security_mode(self) -> int:
        """The transport header's security mode (0: none or no header)."""
        return 0 if self.tpl is None else self.tpl.security_mode

    @property
    def encrypted(self) -> bool:
        """Encrypted by the extended link layer or the transport layer."""
        ell = self.ell is not None and self.ell.encryption != 0
        return ell or self.security_mode != 0


@dataclass(frozen=True, slots=True)
class WirelessTelegram:
    """A decoded telegram with its layers."""

    envelope: Envelope
    telegram: Telegram


def _link(data: bytes, crc_present: bool, frame_format: FrameFormat | None) -> LinkFrame:
    link = parse_frame(data, crc_present=crc_present, frame_format=frame_format)
    if not link.payload:
        raise TransportLayerError("no data after the link header (CI field missing)")
    return link


def _outer(
    link: LinkFrame, key: bytes | None, predecrypted: bool, opened: bool
) -> tuple[ExtendedLinkLayer | None, AuthenticationLayer | None, bytes | None]:
    """ELL and AFL, and the bytes from the next CI on (None: ELL-encrypted, not opened)."""
    rest = link.payload
    ell = None
    if rest[0] in ELL_CIS:
        ell, rest = parse_ell(rest)
        if ell.session_number is not None:
            if ell.encryption == 1 and not opened:
                return ell, None, None
            if ell.encryption == 1 and key is None and not predecrypted:
                raise KeyRequired("the extended link layer is encrypted and no key is configured")
            rest = open_ell(link.address, ell, rest, None if predecrypted else key)
    afl = None
    if rest and rest[0] == AFL_CI:
        afl, rest = parse_afl(rest)
        if afl.more_fragments:
            raise UnsupportedTelegram(
                f"not decoded: fragment {afl.fragment_id} of a longer message (AFL)"
            )
    if not rest:
        raise TransportLayerError("no application layer CI after the link layers")
    return ell, afl, rest


def inspect(
    data: bytes, crc_present: bool = True, *, frame_format: FrameFormat | None = None
) -> Envelope:
    """Read the layers without a key (nothing is decrypted). Raises ``WmbusError``."""
    link = _link(data, crc_present, frame_format)
    ell, afl, rest = _outer(link, None, False, opened=False)
    if rest is None:
        return Envelope(link, ell, afl, None, None)
    tpl = None if is_manufacturer_ci(rest[0]) else parse_tpl(rest)[0]
    return Envelope(link, ell, afl, tpl, rest[0])


def _plain(
    tpl: TransportHeader,
    meter: MeterAddress,
    afl: AuthenticationLayer | None,
    key: bytes | None,
    predecrypted: bool,
    tpl_onwards: bytes,
    body: bytes,
) -> bytes:
    mode = tpl.security_mode
    if mode == 0:
        return body
    if mode not in (5, 7):
        raise UnsupportedSecurity(f"security mode {mode} is not supported (only 5 and 7)")
    if predecrypted:
        verify_check_bytes(body, f"mode {mode}: no 2F2F in a decrypted telegram")
        return body
    if key is None:
        raise KeyRequired(f"encrypted with security mode {mode} and no key is configured")
    access = tpl.access_number or 0
    if mode == 5:
        return open_mode5(key, meter, access, tpl.encrypted_blocks, body)
    return open_mode7(key, meter, afl, tpl.key_derivation, tpl.encrypted_blocks, tpl_onwards, body)


def decode(
    data: bytes,
    key: bytes | None = None,
    crc_present: bool = True,
    *,
    frame_format: FrameFormat | None = None,
    predecrypted: bool = False,
) -> WirelessTelegram:
    """Decode one telegram from its L-field on (see :func:`decode_telegram`)."""
    if key is not None:
        check_key(key)
    link = _link(data, crc_present, frame_format)
    ell, afl, rest = _outer(link, key, predecrypted, opened=True)
    assert rest is not None  # opened=True never stops at the ELL
    ell_encrypted = ell is not None and ell.encryption != 0
    ci = rest[0]
    if is_manufacturer_ci(ci):
        if key is not None and not ell_encrypted:
            raise UnsupportedSecurity(
                f"manufacturer-specific CI 0x{ci:02X}: its security is not the standard's"
            )
        envelope = Envelope(link, ell, afl, None, ci)
        header = _header(envelope.meter, None, ell)
        telegram = Telegram(ci=ci, header=header, records=(), manufacturer_data=rest[1:])
        return WirelessTelegram(envelope, telegram)
    tpl, body = parse_tpl(rest)
    envelope = Envelope(link, ell, afl, tpl, ci)
    if key is not None and not envelope.encrypted:
        raise UnencryptedRefused(
            f"meter {envelope.meter.id} sent an unencrypted telegram, but a key is configured"
        )
    plain = _plain(tpl, envelope.meter, afl, key, predecrypted, rest, body)
    try:
        records = decode_user_data(0x78, plain)
    except DecodeError as exc:
        raise ApplicationLayerError(str(exc)) from None
    telegram = replace(records, ci=ci, header=_header(envelope.meter, tpl, ell))
    return WirelessTelegram(envelope, telegram)


def _header(
    meter: MeterAddress, tpl: TransportHeader | None, ell: ExtendedLinkLayer | None
) -> Header:
    access = tpl.access_number if tpl is not None else None
    if access is None and ell is not None:
        access = ell.access_number
    return Header(
        id=meter.id,
        manufacturer=meter.manufacturer,
        version=meter.version,
        medium=meter.medium,
        medium_code=meter.device_type,
        access_number=access,
        status=None if tpl is None else tpl.status,
        signature=None if tpl is None or tpl.ci == 0x78 else tpl.configuration,
    )


def decode_telegram(
    data: bytes,
    key: bytes | None = None,
    crc_present: bool = True,
    *,
    frame_format: FrameFormat | None = None,
    predecrypted: bool = False,
) -> Telegram:
    """Decode one telegram (from its L-field on) into the wired decoder's ``Telegram``.

    ``key``: the meter's AES-128 key (16 bytes; another length is a ValueError), or None.
    ``crc_present``: the block CRCs are still in the frame (checked and removed).
    ``frame_format``: ``"A"``/``"B"``, or None to tell it from the L-field.
    ``predecrypted``: the receiver (or a capture) already decrypted the payload: the
    security headers are kept but nothing is decrypted (the ``2F 2F`` and the ELL
    payload CRC are still checked; a MAC cannot be). Raises ``WmbusError``.
    """
    return decode(
        data, key, crc_present, frame_format=frame_format, predecrypted=predecrypted
    ).telegram
