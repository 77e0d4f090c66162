"""Ruuvi RAWv2, pvvx / ATC1441 and auto-detection: vectors B.2 and B.3, then properties."""

from __future__ import annotations

import contextlib
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from citygate.drivers.api import DecodeError, DeviceContext, Measurement
from citygate.drivers.ble import pvvx, ruuvi
from citygate.drivers.ble.advert import Advert
from citygate.drivers.ble.bthome import BTHOME_UUID
from citygate.drivers.ble.config import FIELDS, configure
from citygate.drivers.ble.decode import AdvertDecoder, detect
from citygate.drivers.ble.pvvx import ENVIRONMENT_UUID
from citygate.drivers.ble.ruuvi import RUUVI_COMPANY_ID

G = 9.80665


def as_dict(measurements: tuple[Measurement, ...]) -> dict[str, object]:
    return {m.name: m.value for m in measurements}


def test_ruuvi_official_valid_vector() -> None:
    decoded = ruuvi.parse(bytes.fromhex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F"))
    assert as_dict(decoded) == {
        "temperature": 24.3,
        "humidity": 53.49,
        "pressure": 1000.44,
        "acceleration_x": round(4 * G / 1000, 6),
        "acceleration_y": round(-4 * G / 1000, 6),
        "acceleration_z": round(1036 * G / 1000, 6),
        "battery_voltage": 2.977,
        "tx_power": 4,
        "movement_counter": 66,
        "measurement_sequence": 205,
    }
    units = {m.name: m.unit for m in decoded}
    assert units["pressure"] == "hPa" and units["acceleration_x"] == "m/s2"


def test_ruuvi_not_available_values_are_omitted() -> None:
    assert ruuvi.parse(bytes.fromhex("058000FFFFFFFF800080008000FFFFFFFFFFFFFFFFFFFFFF")) == ()


def test_ruuvi_ble_monitor_vector() -> None:
    payload = bytes.fromhex("05138A5F61C4F0FFE4FFDC0414C5B6EC29B3F27A52FAD4CD")
    decoded = as_dict(ruuvi.parse(payload))
    assert decoded["temperature"] == 25.01
    assert decoded["humidity"] == 61.0425  # ble_monitor rounds it to 61.04
    assert decoded["pressure"] == 1004.16
    assert decoded["acceleration_z"] == round(1044 * G / 1000, 6)
    assert decoded["battery_voltage"] == 3.181
    assert decoded["tx_power"] == 4
    assert decoded["movement_counter"] == 236
    assert decoded["measurement_sequence"] == 10675


@pytest.mark.parametrize(("raw", "celsius"), [("0000", 0.0), ("01C3", 2.255), ("FE3D", -2.255)])
def test_ruuvi_temperature_examples(raw: str, celsius: float) -> None:
    payload = bytes.fromhex("05" + raw + "0000" * 11)
    assert as_dict(ruuvi.parse(payload[:24]))["temperature"] == celsius


@pytest.mark.parametrize(
    "payload", ["", "03291A1ECE1EFC18", "03291A1ECE1EFC18F94202CA0B53", "0512FC5394C37C00"]
)
def test_ruuvi_rejects_other_formats_and_short_data(payload: str) -> None:
    with pytest.raises(ruuvi.RuuviError):
        ruuvi.parse(bytes.fromhex(payload))


def test_atc1441_vector() -> None:
    packet = pvvx.parse(bytes.fromhex("A4C1380283F400A22F5F0BF819"))
    assert packet.layout == "atc" and packet.mac == "A4:C1:38:02:83:F4"
    assert as_dict(packet.measurements) == {
        "temperature": 16.2, "humidity": 47, "battery": 95, "battery_voltage": 3.064,
        "counter": 25,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("payload", "mac", "expected"),
    [
        ("F4830238C1A4A9066911B60B58F70D", "A4:C1:38:02:83:F4", (17.05, 44.57, 2.998, 88, 247)),
        ("8B376338C1A4CE0913107F0B521204", "A4:C1:38:63:37:8B", (25.1, 41.15, 2.943, 82, 18)),
    ],
)
def test_pvvx_custom_vectors(
    payload: str, mac: str, expected: tuple[float, float, float, int, int]
) -> None:
    packet = pvvx.parse(bytes.fromhex(payload))
    assert packet.layout == "pvvx" and packet.mac == mac
    temperature, humidity, volts, battery, counter = expected
    assert as_dict(packet.measurements) == {
        "temperature": temperature, "humidity": humidity, "battery": battery,
        "battery_voltage": volts, "counter": counter,
    }  # fmt: skip


def test_pvvx_encrypted_is_refused_with_a_reason() -> None:
    with pytest.raises(pvvx.PvvxError, match="encrypted"):
        pvvx.parse(bytes.fromhex("11D603FBFA7B6DFB1E26FD"))
    with pytest.raises(pvvx.PvvxError):
        pvvx.parse(bytes.fromhex("A4C1380283F400A22F5F0BF819"), "pvvx")


# --------------------------------------------------------------------------- detection


def advert(**kwargs: object) -> Advert:
    base: dict[str, object] = {"address": "A4:C1:38:8D:18:B2", "time": 100.0, "rssi": -60}
    base.update(kwargs)
    return Advert(**base)  # type: ignore[arg-type]


def test_pvvx_in_bthome_mode_with_three_uuids_prefers_bthome() -> None:
    # bthome-ble test_bthome_multiple_uuids: the same advert carries 0x181A and 0xFE95 too.
    heard = advert(
        name="ATC_8D18B2",
        service_data={
            BTHOME_UUID: bytes.fromhex("40015D025D0903B718"),
            ENVIRONMENT_UUID: bytes.fromhex("B2188D38C1A42B089011F70A43200F"),
            "0000fe95-0000-1000-8000-00805f9b34fb": bytes.fromhex("30585b05"),
        },
    )
    assert detect(heard) == ("bthome", "pvvx")
    decoded = AdvertDecoder().decode(heard)
    assert decoded is not None and decoded.format == "bthome"
    assert as_dict(decoded.measurements) == {
        "battery": 93, "temperature": 23.97, "humidity": 63.27, "rssi": -60,
    }  # fmt: skip
    forced = AdvertDecoder("pvvx").decode(heard)
    assert forced is not None and forced.format == "pvvx"
    assert as_dict(forced.measurements)["temperature"] == 20.91


def test_ruuvi_through_the_decoder() -> None:
    heard = advert(
        manufacturer_data={
            RUUVI_COMPANY_ID: bytes.fromhex("0512FC5394C37C0004FFFC040CAC364200CDCBB8334C884F")
        }
    )
    decoded = AdvertDecoder("auto").decode(heard)
    assert decoded is not None and decoded.format == "ruuvi"
    assert as_dict(decoded.measurements)["rssi"] == -60


def test_decoder_counts_what_it_cannot_read() -> None:
    decoder = AdvertDecoder("bthome")
    heard = advert(service_data={BTHOME_UUID: bytes.fromhex("41E445F3C9962B332211006C7C4519")})
    assert decoder.decode(heard) is None
    assert decoder.decode_errors == 1
    assert decoder.last_error is not None and "bindkey" in decoder.last_error
    assert AdvertDecoder("ruuvi").decode(heard) is None  # nothing for that format: not an error


def test_decoder_drops_repeated_packets() -> None:
    decoder = AdvertDecoder()
    heard = advert(service_data={BTHOME_UUID: bytes.fromhex("400009015D")})
    assert decoder.decode(heard) is not None
    assert decoder.decode(heard) is None
    assert decoder.duplicates == 1


_XIAOMI_UUID = "0000fe95-0000-1000-8000-00805f9b34fb"
_SERVICE_UUIDS = st.sampled_from([BTHOME_UUID, ENVIRONMENT_UUID, _XIAOMI_UUID])


@given(
    st.sampled_from(["auto", "bthome", "ruuvi", "pvvx", "atc"]),
    st.dictionaries(_SERVICE_UUIDS, st.binary(max_size=32), max_size=3),
    st.dictionaries(st.sampled_from([RUUVI_COMPANY_ID, 0x004C, 0]), st.binary(max_size=30)),
    st.one_of(st.none(), st.binary(min_size=16, max_size=16)),
)
def test_random_adverts_give_a_reading_or_nothing(
    advert_format: str,
    service_data: dict[str, bytes],
    manufacturer_data: dict[int, bytes],
    bindkey: bytes | None,
) -> None:
    decoder = AdvertDecoder(advert_format, bindkey)
    heard = advert(service_data=service_data, manufacturer_data=manufacturer_data)
    decoded = decoder.decode(heard)
    if decoded is not None:
        assert decoded.format in ("bthome", "ruuvi", "pvvx", "atc")
        assert all(isinstance(m, Measurement) for m in decoded.measurements)


@given(st.binary(max_size=40))
def test_ruuvi_and_pvvx_raise_only_decode_errors(payload: bytes) -> None:
    for parse in (ruuvi.parse, pvvx.parse):
        with contextlib.suppress(DecodeError):
            parse(payload)


def test_sample_configures_and_the_readme_embeds_it(tmp_path: Path) -> None:
    here = Path(__file__).resolve().parents[3] / "drivers" / "ble"
    sample = (here / "sample.toml").read_text(encoding="utf-8")
    readme = (here / "README.md").read_text(encoding="utf-8")
    assert sample.rstrip() in readme
    parsed = tomllib.loads(sample)
    assert set(parsed["ble"]) == {"adapter", "mode"}
    context = DeviceContext("x", 60.0, tmp_path)
    for device in parsed["device"]:
        assert device["driver"] == "ble"
        options = {"format": "auto", "bindkey": None} | {
            k: v for k, v in device.items() if k in FIELDS
        }
        if "bindkey_file" in device:
            options["bindkey"] = "00112233445566778899aabbccddeeff"
        configure(options, context)
    for key in FIELDS:
        assert f"`{key}`" in readme, key
