"""The BLE simulator: its AES-CCM against the standards, its payloads through
citygate's decoders (an independent encoder meets the decoder), its weather."""

from __future__ import annotations

import io
import itertools
import json
import statistics
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from citygate.drivers.ble import bthome, pvvx, ruuvi
from citygate.drivers.ble.advert import from_line
from citygate.drivers.ble.decode import AdvertDecoder
from citygate_sim.ble import DEMO_BINDKEY, DEMO_SENSORS, BleSimulator, SensorSpec
from citygate_sim.ble import _formats as encode
from citygate_sim.ble._aes import ccm_encrypt, encrypt_block

ADDRESS = "A4:C1:38:8D:18:B2"


def test_aes_fips_197_appendix_c1() -> None:
    key = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
    block = bytes.fromhex("00112233445566778899aabbccddeeff")
    assert encrypt_block(key, block).hex() == "69c4e0d86a7b0430d8cdb78070b4c55a"


def test_ccm_sp800_38c_example_1() -> None:
    # NIST SP 800-38C C.1 has associated data; with none, check against the BTHome example.
    sealed = ccm_encrypt(DEMO_BINDKEY, bytes.fromhex("5448e68f80a5d2fc4133221100"),
                         bytes.fromhex("02CA0903BF13"))  # fmt: skip
    assert sealed.hex() == "e445f3c9962b" + "6c7c4519"


def test_bthome_spec_example_encrypted() -> None:
    payload = encode.bthome(
        [("temperature", 25.06), ("humidity", 50.55)],
        address="54:48:E6:8F:80:A5",
        bindkey=DEMO_BINDKEY,
        counter=0x00112233,
    )
    assert payload.hex() == "41e445f3c9962b332211006c7c4519"


_TEMPERATURES = st.integers(-4000, 8000).map(lambda c: c / 100)
_HUMIDITIES = st.integers(0, 10000).map(lambda c: c / 100)


@given(_TEMPERATURES, _HUMIDITIES, st.integers(0, 100), st.integers(0, 2**32 - 1), st.booleans())
def test_bthome_encoded_by_the_sim_decodes(
    temperature: float, humidity: float, battery: int, counter: int, encrypted: bool
) -> None:
    key = DEMO_BINDKEY if encrypted else None
    payload = encode.bthome(
        [("temperature", temperature), ("humidity", humidity), ("battery", battery)],
        address=ADDRESS,
        bindkey=key,
        counter=counter,
    )
    packet = bthome.parse(payload, ADDRESS, key)
    assert {m.name: m.value for m in packet.measurements} == {
        "battery": battery, "temperature": temperature, "humidity": humidity,
    }  # fmt: skip
    assert packet.counter == (counter if encrypted else None)


@given(
    st.integers(-6000, 6000).map(lambda c: c / 200),
    st.integers(0, 40000).map(lambda c: c / 400),
    st.integers(50000, 115534),
    st.integers(1600, 3646),
    st.integers(0, 65534),
)
def test_ruuvi_encoded_by_the_sim_decodes(
    temperature: float, humidity: float, pressure_pa: int, millivolts: int, sequence: int
) -> None:
    payload = encode.ruuvi_rawv2(
        address=ADDRESS,
        temperature=temperature,
        humidity=humidity,
        pressure_pa=pressure_pa,
        acceleration_mg=(0, -4, 1000),
        battery_mv=millivolts,
        tx_power_dbm=4,
        movement=7,
        sequence=sequence,
    )
    values = {m.name: m.value for m in ruuvi.parse(payload)}
    assert values["temperature"] == pytest.approx(temperature)
    assert values["humidity"] == pytest.approx(humidity)
    assert values["pressure"] == pytest.approx(pressure_pa / 100)
    assert values["battery_voltage"] == pytest.approx(millivolts / 1000)
    assert values["measurement_sequence"] == sequence
    assert values["tx_power"] == 4 and values["movement_counter"] == 7


def test_ruuvi_not_available_fields_are_omitted() -> None:
    payload = encode.ruuvi_rawv2(
        address=ADDRESS, temperature=None, humidity=None, pressure_pa=None, acceleration_mg=None,
        battery_mv=None, tx_power_dbm=None, movement=None, sequence=None,
    )  # fmt: skip
    assert ruuvi.parse(payload) == ()


@given(_TEMPERATURES, st.integers(0, 100), st.integers(0, 100), st.integers(2000, 3300))
def test_pvvx_and_atc_encoded_by_the_sim_decode(
    temperature: float, humidity: int, battery: int, millivolts: int
) -> None:
    fields = {"address": ADDRESS, "temperature": temperature, "humidity": humidity,
              "battery": battery, "battery_mv": millivolts, "counter": 300}  # fmt: skip
    custom = pvvx.parse(encode.pvvx_custom(**fields))  # type: ignore[arg-type]
    atc = pvvx.parse(encode.atc1441(**fields))  # type: ignore[arg-type]
    assert custom.layout == "pvvx" and atc.layout == "atc"
    assert custom.mac == atc.mac == ADDRESS
    custom_values = {m.name: m.value for m in custom.measurements}
    atc_values = {m.name: m.value for m in atc.measurements}
    assert custom_values["temperature"] == pytest.approx(temperature)
    assert atc_values["temperature"] == pytest.approx(round(temperature * 10) / 10)
    for values in (custom_values, atc_values):
        assert values["humidity"] == humidity and values["battery"] == battery
        assert values["battery_voltage"] == pytest.approx(millivolts / 1000)
        assert values["counter"] == 300 % 256


def _decoded_capture(
    seconds: float, sensors: tuple[SensorSpec, ...] = DEMO_SENSORS
) -> dict[str, list[tuple[float, dict[str, object]]]]:
    stream = io.StringIO()
    BleSimulator(sensors, seed=3, start=1_764_000_000.0).write_capture(stream, seconds)
    decoders = {s.address: AdvertDecoder("auto", s.bindkey) for s in sensors}
    out: dict[str, list[tuple[float, dict[str, object]]]] = {s.address: [] for s in sensors}
    for line in stream.getvalue().splitlines():
        advert = from_line(line)
        decoded = decoders[advert.address].decode(advert)
        assert decoded is not None, line
        out[advert.address].append((advert.time, {m.name: m.value for m in decoded.measurements}))
    return out


def test_every_simulated_advert_decodes_and_intervals_differ() -> None:
    decoded = _decoded_capture(600)
    for spec in DEMO_SENSORS:
        samples = decoded[spec.address]
        gaps = [b[0] - a[0] for a, b in itertools.pairwise(samples)]
        assert statistics.median(gaps) == pytest.approx(spec.interval, abs=0.011)
        assert {"temperature", "humidity", "rssi"} <= samples[0][1].keys()


def test_weather_drifts_over_a_day_and_batteries_decline() -> None:
    spec = SensorSpec("A4:C1:38:00:00:01", "pvvx", 600.0, base_temperature=15.0)
    samples = _decoded_capture(8 * 86400, (spec,))[spec.address]
    temperatures = [float(v["temperature"]) for _, v in samples[:144]]  # type: ignore[arg-type]
    humidities = [float(v["humidity"]) for _, v in samples[:144]]  # type: ignore[arg-type]
    assert max(temperatures) - min(temperatures) > 5.0  # a daily swing
    assert max(abs(b - a) for a, b in itertools.pairwise(temperatures)) < 2.0
    assert statistics.correlation(temperatures, humidities) < -0.8  # warmer air, lower RH
    volts = [float(v["battery_voltage"]) for _, v in samples]  # type: ignore[arg-type]
    assert volts[-1] < volts[0] - 0.01  # ~2 mV a day
    assert all(b <= a + 0.001 for a, b in itertools.pairwise(volts))


def test_the_encrypted_demo_sensor_needs_its_key() -> None:
    stream = io.StringIO()
    encrypted = next(s for s in DEMO_SENSORS if s.bindkey is not None)
    BleSimulator((encrypted,), start=1_764_000_000.0).write_capture(stream, 20)
    adverts = [from_line(line) for line in stream.getvalue().splitlines()]
    without_key = AdvertDecoder("bthome")
    assert all(without_key.decode(a) is None for a in adverts)
    assert without_key.decode_errors == len(adverts)
    with_key = AdvertDecoder("bthome", DEMO_BINDKEY)
    assert all(with_key.decode(a) is not None for a in adverts)  # counters increase


async def test_live_mode_appends_as_time_passes(tmp_path: Path) -> None:
    now = [1000.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds
        if now[0] >= 1010.0:
            raise TimeoutError  # end the run: 10 simulated seconds

    path = tmp_path / "live.jsonl"
    simulator = BleSimulator(start=1_764_000_000.0)
    with pytest.raises(TimeoutError):
        await simulator.run_live(path, clock=lambda: now[0], sleep=sleep, period=1.0)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records and all(r["t"] <= 1_764_000_000.0 + 10 for r in records)
    assert [r["t"] for r in records] == sorted(r["t"] for r in records)
    ruuvi_count = sum(1 for r in records if "manufacturer_data" in r)
    assert 8 <= ruuvi_count <= 10  # one a second
