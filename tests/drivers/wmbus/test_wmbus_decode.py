"""Transport, security and the whole decode on real telegrams (tests/drivers/wmbus/vectors.py)."""

from __future__ import annotations

import contextlib

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC
from hypothesis import given
from hypothesis import strategies as st

from citygate.drivers.mbus.decode import to_measurements
from citygate.drivers.wmbus.decode import decode, decode_telegram, inspect
from citygate.drivers.wmbus.frame import WmbusError, parse_frame
from citygate.drivers.wmbus.security import (
    KeyRequired,
    UnencryptedRefused,
    UnsupportedSecurity,
    WrongKey,
    open_mode7,
)
from citygate.drivers.wmbus.transport import (
    TransportLayerError,
    UnsupportedTelegram,
    parse_afl,
    parse_ell,
    parse_tpl,
)
from tests.drivers.wmbus.vectors import HOMEGEAR_KEY, HOMEGEAR_MODE7, VECTORS, Vector

OTHER_KEY = bytes(range(16))


def values(vector: Vector) -> dict[str, object]:
    telegram = decode_telegram(vector.data, vector.key_bytes, vector.crc,
                               predecrypted=vector.predecrypted)  # fmt: skip
    return {m.name: m.value for m in to_measurements(telegram)}


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: v.name)
def test_real_telegrams(vector: Vector) -> None:
    result = decode(vector.data, vector.key_bytes, vector.crc, predecrypted=vector.predecrypted)
    header = result.telegram.header
    assert header is not None
    assert (header.id, header.manufacturer) == (vector.meter_id, vector.manufacturer)
    assert result.envelope.encrypted == (vector.key is not None or vector.predecrypted)
    found = values(vector)
    for name, value in vector.expected.items():
        assert found[name] == pytest.approx(value), (vector.source, name)
    assert result.telegram.records, vector.source


@pytest.mark.parametrize("vector", [v for v in VECTORS if v.key], ids=lambda v: v.name)
def test_wrong_key_is_a_typed_error(vector: Vector) -> None:
    with pytest.raises(WrongKey, match="wrong key or corrupt telegram"):
        decode_telegram(vector.data, OTHER_KEY, vector.crc)
    with pytest.raises(KeyRequired):
        decode_telegram(vector.data, None, vector.crc)
    # a scan reads who sent it without a key
    envelope = inspect(vector.data, vector.crc)
    assert envelope.encrypted and envelope.meter.id == vector.meter_id


@pytest.mark.parametrize("vector", [v for v in VECTORS if not v.key], ids=lambda v: v.name)
def test_a_configured_key_refuses_unencrypted_telegrams(vector: Vector) -> None:
    if not vector.predecrypted:
        with pytest.raises(UnencryptedRefused):
            decode_telegram(vector.data, OTHER_KEY, vector.crc)
        return
    # decrypted by someone else, the header still says mode 7: without the flag it is
    # ciphertext (its MAC fails with any key) and needs a key
    with pytest.raises(WrongKey):
        decode_telegram(vector.data, OTHER_KEY, vector.crc)
    with pytest.raises(KeyRequired):
        decode_telegram(vector.data, None, vector.crc)


def test_long_header_gives_the_meter_of_the_transport_layer() -> None:
    vector = next(v for v in VECTORS if v.name.startswith("aventieswm"))
    result = decode(vector.data, vector.key_bytes, False)
    assert result.envelope.tpl is not None and result.envelope.tpl.ci == 0x72
    assert result.envelope.tpl.security_mode == 5
    header = result.telegram.header
    assert header is not None and (header.medium, header.version) == ("water", 0x25)
    assert header.access_number == 0xB5 and header.signature == 0x0560


def test_corrupt_ciphertext_is_wrong_key() -> None:
    vector = VECTORS[0]
    raw = bytearray(vector.data)
    raw[20] ^= 0x40
    with pytest.raises(WrongKey):
        decode_telegram(bytes(raw), vector.key_bytes, False)


# ---------------------------------------------------------------- mode 7 (OMS vol. 2)


def cmac(key: bytes, data: bytes) -> bytes:
    mac = CMAC(algorithms.AES(key))
    mac.update(data)
    return mac.finalize()


def seal_mode7(plain: bytes, key: bytes) -> bytes:
    """Encrypt and sign a decrypted mode 7 telegram (ELL 0x8C, AFL, short TPL), written from
    OMS vol. 2: Kenc/Kmac = CMAC(key, 00/01 ‖ MCR ‖ id ‖ 07×7), CBC with IV 0, MAC over
    MCL ‖ MCR ‖ TPL … end truncated to 8 bytes."""
    afl_at = 13
    assert plain[afl_at : afl_at + 5] == bytes.fromhex("900F002C25")
    mcl, counter = plain[afl_at + 4], plain[afl_at + 5 : afl_at + 9]
    tpl_at = afl_at + 17
    blocks = (plain[tpl_at + 3] >> 4) & 0x0F
    body_at = tpl_at + 6
    tail = counter + plain[4:8] + b"\x07" * 7
    kenc, kmac = cmac(key, b"\x00" + tail), cmac(key, b"\x01" + tail)
    encryptor = Cipher(algorithms.AES(kenc), modes.CBC(bytes(16))).encryptor()
    secret = encryptor.update(plain[body_at : body_at + 16 * blocks]) + encryptor.finalize()
    tpl = plain[tpl_at:body_at] + secret + plain[body_at + 16 * blocks :]
    mac = cmac(kmac, bytes((mcl,)) + counter + tpl)[:8]
    return plain[: afl_at + 9] + mac + tpl


def test_mode7_real_vector_homegear() -> None:
    # key derivation, MAC and decryption of a real mode 7 telegram (CI 0x6B format frame)
    frame = parse_frame(HOMEGEAR_MODE7, crc_present=False)
    _, rest = parse_ell(frame.payload)
    afl, rest = parse_afl(rest)
    assert (afl.message_counter, afl.authentication_type, afl.mac.hex()) == (
        13,
        5,
        "4b5184889b76884d",
    )
    meter = frame.address.__class__.from_wire(rest[5:7], rest[1:5], rest[7], rest[8])
    plain = open_mode7(HOMEGEAR_KEY, meter, afl, 1, 4, rest, rest[14:])
    assert plain.startswith(bytes.fromhex("2F2F40B0D6426C441301FD17"))
    with pytest.raises(WrongKey, match="MAC"):
        open_mode7(OTHER_KEY, meter, afl, 1, 4, rest, rest[14:])
    # the whole decode stops at the format frame, after the link layers
    with pytest.raises(UnsupportedTelegram, match="0x6B"):
        decode_telegram(HOMEGEAR_MODE7, HOMEGEAR_KEY, False)


def test_mode7_seal_agrees_with_the_real_vector() -> None:
    """The test's sealer, fed the Homegear telegram decrypted, gives back the real bytes."""
    frame = parse_frame(HOMEGEAR_MODE7, crc_present=False)
    _, rest = parse_ell(frame.payload)
    afl, rest = parse_afl(rest)
    meter = frame.address.__class__.from_wire(rest[5:7], rest[1:5], rest[7], rest[8])
    plain = open_mode7(HOMEGEAR_KEY, meter, afl, 1, 4, rest, rest[14:])
    # as a short header telegram: same counter, same id (the link id equals the TPL id)
    short = HOMEGEAR_MODE7[:30] + bytes.fromhex("7A1300400710") + plain
    short = bytes((len(short) - 1,)) + short[1:]
    sealed = seal_mode7(short, HOMEGEAR_KEY)
    assert sealed[36 : 36 + 64] == HOMEGEAR_MODE7[44 : 44 + 64]  # same ciphertext


def test_mode7_full_decode() -> None:
    ehzp = next(v for v in VECTORS if v.name.startswith("emh"))
    key = bytes.fromhex("F0E0D0C0B0A090807060504030201000")
    sealed = seal_mode7(ehzp.data, key)
    result = decode(sealed, key, False)
    assert result.envelope.security_mode == 7 and result.envelope.afl is not None
    found = {m.name: m.value for m in to_measurements(result.telegram)}
    assert found["energy"] == pytest.approx(41171.8)
    tampered = bytearray(sealed)
    tampered[-1] ^= 0x01  # unencrypted tail, covered by the MAC
    with pytest.raises(WrongKey, match="MAC"):
        decode_telegram(bytes(tampered), key, False)
    with pytest.raises(WrongKey):
        decode_telegram(sealed, OTHER_KEY, False)
    with pytest.raises(KeyRequired):
        decode_telegram(sealed, None, False)


# ---------------------------------------------------------------- headers and refusals


def telegram(payload: bytes) -> bytes:
    body = bytes.fromhex("44 2D2C 99873476 1B 16") + payload
    return bytes((len(body),)) + body


def test_headers_that_run_past_the_end() -> None:
    for payload in ("8D20", "90", "900F002C", "7A0100", "72785634", "7A01000007"):
        with pytest.raises(TransportLayerError):
            decode_telegram(telegram(bytes.fromhex(payload)), None, False)
    with pytest.raises(TransportLayerError, match="no data after the link header"):
        decode_telegram(telegram(b""), None, False)


def test_not_decoded_kinds() -> None:
    cases = {"79AABBCC": "compact", "74010000": "alarm", "900F006C250D0000004B5184889B76884D":
             "fragment"}  # fmt: skip
    for payload, word in cases.items():
        with pytest.raises(UnsupportedTelegram, match=word):
            decode_telegram(telegram(bytes.fromhex(payload)), None, False)
    with pytest.raises(UnsupportedSecurity, match="mode 2"):
        decode_telegram(telegram(bytes.fromhex("7A01000002") + bytes(16)), None, False)


def test_manufacturer_ci_keeps_the_bytes() -> None:
    result = decode(telegram(bytes.fromhex("A0 0102 03")), None, False)
    assert result.telegram.records == () and result.telegram.manufacturer_data == b"\x01\x02\x03"
    assert result.telegram.header is not None and result.telegram.header.id == "76348799"
    with pytest.raises(UnsupportedSecurity):
        decode_telegram(telegram(bytes.fromhex("A0 0102 03")), OTHER_KEY, False)


def test_tpl_fields() -> None:
    header, body = parse_tpl(bytes.fromhex("7A 55 04 3005 2F2F"))
    assert (header.access_number, header.status, header.security_mode) == (0x55, 4, 5)
    assert (header.encrypted_blocks, body) == (3, b"\x2f\x2f")
    ell, rest = parse_ell(bytes.fromhex("8E 20 13 2D2C 99873476 1B 16 7A"))
    assert ell.address is not None and ell.address.id == "76348799" and rest == b"\x7a"


def test_bad_key_length_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        decode_telegram(VECTORS[0].data, b"\x00" * 15, False)


# ---------------------------------------------------------------- properties

KEYS = st.sampled_from([None, OTHER_KEY, VECTORS[0].key_bytes])


@given(st.binary(max_size=300), KEYS, st.booleans(), st.booleans())
def test_any_bytes_give_a_telegram_or_a_wmbus_error(
    data: bytes, key: bytes | None, crc: bool, predecrypted: bool
) -> None:
    with contextlib.suppress(WmbusError):
        decode_telegram(data, key, crc, predecrypted=predecrypted)
    with contextlib.suppress(WmbusError):
        inspect(data, crc)


@given(st.sampled_from(VECTORS), st.data())
def test_real_telegrams_with_bytes_changed(vector: Vector, data: st.DataObject) -> None:
    raw = bytearray(vector.data)
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(1, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        telegram = decode_telegram(bytes(raw), vector.key_bytes, vector.crc,
                                   predecrypted=vector.predecrypted)  # fmt: skip
    except WmbusError:
        return
    to_measurements(telegram)
