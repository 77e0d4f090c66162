"""BTHome v2: the vectors of ../shared/vectors/ble (B.1), then properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from citygate.drivers.api import DecodeError, Measurement
from citygate.drivers.ble import bthome
from citygate.drivers.ble.bthome import BTHomeFilter, BTHomePacket, DecryptionError, parse

ADDRESS = "A4:C1:38:8D:18:B2"
SPEC_KEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
SPEC_MAC = "54:48:E6:8F:80:A5"


def values(packet: BTHomePacket) -> dict[str, object]:
    return {m.name: m.value for m in (*packet.measurements, *packet.events)}


# (payload after the UUID, expected values) — vectors B.1.1 (spec table) and B.1.2 (bthome-ble).
VECTORS: list[tuple[str, dict[str, object]]] = [
    ("4002C40903BF13", {"temperature": 25.0, "humidity": 50.55}),
    ("4002CA0903BF13", {"temperature": 25.06, "humidity": 50.55}),
    ("400161", {"battery": 97}),
    ("4004138A01", {"pressure": 1008.83}),
    ("4005138A14", {"illuminance": 13460.67}),
    ("40065E1F", {"mass": 80.3}),
    ("4008CA06", {"dew_point": 17.38}),
    ("400960", {"count": 96}),
    ("400A138A14", {"energy": 1346.067}),
    ("400B021B00", {"power": 69.14}),
    ("400C020C", {"voltage": 3.074}),
    ("400D120C", {"pm2_5": 3090}),
    ("400E021C", {"pm10": 7170}),
    ("4012E204", {"co2": 1250}),
    ("40133301", {"tvoc": 307}),
    ("4014020C", {"moisture": 30.74}),
    ("402E23", {"humidity": 35}),
    ("402F23", {"moisture": 35}),
    ("403D0960", {"count": 24585}),
    ("403E2A2C0960", {"count": 1611213866}),
    ("403F020C", {"rotation": 307.4}),
    ("40400C00", {"distance": 0.012}),
    ("40414E00", {"distance": 7.8}),
    ("40424E3400", {"duration": 13.39}),
    ("40434E34", {"current": 13.39}),
    ("40444E34", {"speed": 133.9}),
    ("40451101", {"temperature": 27.3}),
    ("404632", {"uv_index": 5.0}),
    ("40478756", {"volume": 2215.1}),
    ("4048DC87", {"volume": 34.78}),
    ("4049DC87", {"volume_flow_rate": 34.78}),
    ("404A020C", {"voltage": 307.4}),
    ("404B138A14", {"gas": 1346.067}),
    ("404C41018A01", {"gas": 25821.505}),
    ("404D12138A14", {"energy": 344593.17}),
    ("404E87562A01", {"volume": 19551.879}),
    ("404F87562A01", {"water": 19551.879}),
    ("40505D396164", {"timestamp": 1684093277}),
    ("40518756", {"acceleration": 22.151}),
    ("40528756", {"gyroscope": 22.151}),
    ("40530C48656C6C6F20576F726C6421", {"text": "Hello World!"}),
    ("40540C48656C6C6F20576F726C6421", {"raw": "48656c6c6f20576f726c6421"}),
    ("405587562A01", {"volume_storage": 19551.879}),
    ("4056E803", {"conductivity": 1000}),
    ("4057EA", {"temperature": -22}),
    ("4058EA", {"temperature": -7.7}),
    ("4059EA", {"count": -22}),
    ("405AEAEA", {"count": -5398}),
    ("405BEA0234EA", {"count": -365690134}),
    ("405C02FBFFFF", {"power": -12.78}),
    ("405D02EA", {"current": -5.63}),
    ("405E9F8C", {"direction": 359.99}),
    ("405FA00F", {"precipitation": 400.0}),
    ("406001", {"channel": 1}),
    ("4061AC0D", {"rotational_speed": 3500}),
    ("40624099DFFF", {"speed": -2.123456}),
    ("40630057D0FF", {"acceleration": -3.123456}),
    ("406402", {"light_level": 2}),
    ("406503", {"settings_revision": 3}),
    ("40F100010204", {"firmware_version": "4.2.1.0"}),
    ("40F2000106", {"firmware_version": "6.1.0"}),
    # bthome-ble tests
    ("40015D025D0903B718", {"battery": 93, "temperature": 23.97, "humidity": 63.27}),
    ("4002CA0902CF09", {"temperature_1": 25.06, "temperature_2": 25.11}),
    (
        "4002CA0902CF0902CF0803B71803B717015D",
        {
            "temperature_1": 25.06,
            "temperature_2": 25.11,
            "temperature_3": 22.55,
            "humidity_1": 63.27,
            "humidity_2": 60.71,
            "battery": 93,
        },
    ),
    ("442D01", {"window": True}),
    ("402D01", {"window": True}),
    ("403A04", {"button": "long_press"}),
    ("40015DFE5D0903B718", {"battery": 93}),
    ("40FECA09", {}),
    ("4003BF1302CA09", {"humidity": 50.55, "temperature": 25.06}),
]


@pytest.mark.parametrize(("payload", "expected"), VECTORS)
def test_vectors(payload: str, expected: dict[str, object]) -> None:
    assert values(parse(bytes.fromhex(payload), ADDRESS)) == expected


def test_packet_id_battery_temperature_humidity() -> None:
    packet = parse(bytes.fromhex("400009015D025D0903B718"), ADDRESS)
    assert packet.packet_id == 9
    assert values(packet) == {"battery": 93, "temperature": 23.97, "humidity": 63.27}


def test_units_follow_quantities_md() -> None:
    packet = parse(bytes.fromhex("40015D025D0903B7180D120C4A020C"), ADDRESS)
    units = {m.name: m.unit for m in packet.measurements}
    assert units == {"battery": "%", "temperature": "Cel", "humidity": "%RH", "pm2_5": "ug/m3",
                     "voltage": "V"}  # fmt: skip


def test_mass_in_pounds_is_converted_to_kg() -> None:
    (mass,) = parse(bytes.fromhex("40073E1D"), ADDRESS).measurements
    assert mass == Measurement("mass", round(74.86 * 0.45359237, 6), "kg")


def test_binary_sensors_and_trigger_flag() -> None:
    packet = parse(bytes.fromhex("4404138A01"), ADDRESS)
    assert packet.trigger_based
    assert values(packet) == {"pressure": 1008.83}
    doors = parse(bytes.fromhex("400F0110001A012100"), ADDRESS)
    assert values(doors) == {"generic_boolean": True, "power_on": False, "door": True,
                             "motion": False}  # fmt: skip


def test_dimmer_event_carries_steps() -> None:
    packet = parse(bytes.fromhex("403C0203"), ADDRESS)
    assert packet.measurements == ()
    assert values(packet) == {"dimmer": "rotate_right", "dimmer_steps": 3}


def test_legacy_mac_in_packet() -> None:
    packet = parse(bytes.fromhex("42B2188D38C1A404138A01"), "00:00:00:00:00:01")
    assert packet.mac == ADDRESS
    assert values(packet) == {"pressure": 1008.83}


@pytest.mark.parametrize("payload", ["E102000C0404138A01", "00", ""])
def test_wrong_versions_are_rejected(payload: str) -> None:
    with pytest.raises(bthome.BTHomeError):
        parse(bytes.fromhex(payload), ADDRESS)


def test_truncated_object_keeps_what_came_before() -> None:
    packet = parse(bytes.fromhex("4002CA0903BF"), ADDRESS)
    assert values(packet) == {"temperature": 25.06}
    assert packet.problem is not None and "0x03" in packet.problem


# --------------------------------------------------------------------------- encryption

ENCRYPTED = [
    ("41E445F3C9962B332211006C7C4519", SPEC_MAC, 1122867, 25.06),
    ("413E932CC7175F34221100553876AF", SPEC_MAC, 1122868, 25.06),
    ("41723D3035FB88322211009E7414C0", SPEC_MAC, 1122866, 25.06),
    ("41BA0DB07AEEF6FFFFFFFF21FD4600", SPEC_MAC, 4294967295, 25.07),
    ("41DE40B50E676600000000D7CB95DE", SPEC_MAC, 0, 25.07),
]


@pytest.mark.parametrize(("payload", "mac", "counter", "temperature"), ENCRYPTED)
def test_encrypted_vectors(payload: str, mac: str, counter: int, temperature: float) -> None:
    packet = parse(bytes.fromhex(payload), mac, SPEC_KEY)
    assert packet.counter == counter
    assert values(packet) == {"temperature": temperature, "humidity": 50.55}


def test_encrypted_with_mac_in_packet() -> None:
    packet = parse(bytes.fromhex("43A5808FE64854F196C06FFB4900112233F08ECBDE"), ADDRESS, SPEC_KEY)
    assert packet.mac == SPEC_MAC
    assert values(packet) == {"temperature": 25.06, "humidity": 50.55}


def test_wrong_bindkey_fails_cleanly() -> None:
    wrong = bytes.fromhex("814aac74c4f17b6c1581e1ab87816b99")
    with pytest.raises(DecryptionError):
        parse(bytes.fromhex("41D2FCEFE52EB212D600112233BC38C966"), ADDRESS, wrong)
    with pytest.raises(DecryptionError, match="no bindkey"):
        parse(bytes.fromhex(ENCRYPTED[0][0]), SPEC_MAC)


def test_too_short_to_decrypt() -> None:
    with pytest.raises(bthome.BTHomeError, match="too short"):
        parse(bytes.fromhex("41BA0DB07AEEF600"), SPEC_MAC, SPEC_KEY)


def test_tampered_ciphertext_fails() -> None:
    payload = bytearray.fromhex(ENCRYPTED[0][0])
    payload[2] ^= 0x01
    with pytest.raises(DecryptionError):
        parse(bytes(payload), SPEC_MAC, SPEC_KEY)


# --------------------------------------------------------------------------- repeats and replays


def _accepts(flt: BTHomeFilter, payload: str, now: float, mac: str = ADDRESS) -> bool:
    key = SPEC_KEY if payload.startswith("41") else None
    return flt.accept(parse(bytes.fromhex(payload), mac, key), now)


def test_identical_packet_id_is_skipped_within_four_seconds() -> None:
    flt = BTHomeFilter()
    assert _accepts(flt, "400009", 0.0)
    assert not _accepts(flt, "400009", 1.0)
    assert not _accepts(flt, "400008", 2.0)  # older
    assert _accepts(flt, "400009", 7.0)  # more than 4 s since the last accepted packet
    assert flt.repeats_dropped == 2


def test_increasing_packet_ids_wrap() -> None:
    flt = BTHomeFilter()
    assert all(_accepts(flt, p, t) for t, p in enumerate(["4000BD", "4000BE", "4000FD", "40002F"]))


def test_encryption_counter_against_replays() -> None:
    flt = BTHomeFilter()
    first, second, older, wrap_max, wrap_zero = (row[0] for row in ENCRYPTED)
    assert _accepts(flt, first, 0.0, SPEC_MAC)
    assert not _accepts(flt, first, 5.0, SPEC_MAC)  # the same service data again
    assert not _accepts(flt, older, 6.0, SPEC_MAC)
    assert flt.last_counter == 1122867
    assert _accepts(flt, second, 7.0, SPEC_MAC)
    assert not _accepts(flt, wrap_max, 8.0, SPEC_MAC)  # half the counter space back: older
    assert flt.replays_dropped == 3

    wrapping = BTHomeFilter()
    assert _accepts(wrapping, wrap_max, 0.0, SPEC_MAC)
    assert _accepts(wrapping, wrap_zero, 1.0, SPEC_MAC)  # 0xFFFFFFFF -> 0 is the next value
    assert not _accepts(wrapping, wrap_max, 2.0, SPEC_MAC)


# --------------------------------------------------------------------------- properties


@given(st.binary(max_size=40), st.one_of(st.none(), st.binary(min_size=16, max_size=16)))
def test_any_payload_decodes_or_raises_decode_error(payload: bytes, key: bytes | None) -> None:
    try:
        packet = parse(payload, ADDRESS, key)
    except DecodeError:
        return
    assert all(isinstance(m, Measurement) for m in packet.measurements)


@given(st.binary(max_size=30))
def test_plain_v2_payloads_never_raise(body: bytes) -> None:
    packet = parse(b"\x40" + body, ADDRESS)
    # Each object decoded consumes at least two bytes of the body.
    assert 2 * (len(packet.measurements) + len(packet.events)) <= len(body) + len(packet.events)


@given(st.integers(-32768, 32767), st.integers(0, 65535))
def test_temperature_humidity_round_trip(centi_celsius: int, centi_percent: int) -> None:
    payload = (
        b"\x40\x02" + centi_celsius.to_bytes(2, "little", signed=True)
        + b"\x03" + centi_percent.to_bytes(2, "little")
    )  # fmt: skip
    assert values(parse(payload, ADDRESS)) == {
        "temperature": round(centi_celsius * 0.01, 6),
        "humidity": round(centi_percent * 0.01, 6),
    }
