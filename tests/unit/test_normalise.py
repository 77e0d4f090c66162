"""The normaliser's unit conversions: powers of ten shift the decimal point; other factors
multiply by their exact ratio, rounded once."""

from __future__ import annotations

import math

from citygate.drivers.api import Measurement
from citygate.normalise import Normaliser


def test_power_of_ten_conversions_keep_the_digits_the_device_gave() -> None:
    normalise = Normaliser("meter-1")
    readings = normalise(
        [
            Measurement("energy", 906.6, "Wh"),  # 906.6 * 0.001 would be 0.9066000000000001
            Measurement("counter", 12345, "Wh"),
            Measurement("current", 1234.5, "mA"),
            Measurement("volume", 3.0, "l"),  # 3.0 * 0.001 would be 0.003 (exact either way)
            Measurement("power", 2.3, "kW"),  # 2.3 * 1000 would be 2299.9999999999995
            Measurement("pressure", 1013.2, "Pa"),
        ]
    )
    assert [(r.name, r.unit, repr(r.value)) for r in readings] == [
        ("energy", "kWh", "0.9066"),
        ("counter", "kWh", "12.345"),
        ("current", "A", "1.2345"),
        ("volume", "m3", "0.003"),
        ("power", "W", "2300.0"),
        ("pressure", "hPa", "10.132"),
    ]


def test_other_factors_use_their_exact_ratio_and_types_stay() -> None:
    normalise = Normaliser("meter-1")
    flow, energy, gigajoules, same, flag, text = normalise(
        [
            Measurement("flow", 2.1, "l/s"),  # 2.1 * 3.6 would be 7.5600000000000005
            Measurement("heat", 3.6e6, "J"),  # 3.6e6 / 3.6e6 as a factor: 0.9999999999999999
            Measurement("heat2", 0.0036, "GJ"),
            Measurement("voltage", 230, "V"),
            Measurement("alarm", True, "count"),
            Measurement("model", "SDM630", None),
        ]
    )
    assert (flow.unit, repr(flow.value)) == ("m3/h", "7.56")
    assert (energy.unit, repr(energy.value)) == ("kWh", "1.0")
    assert (gigajoules.unit, repr(gigajoules.value)) == ("kWh", "1.0")
    assert same.value == 230 and type(same.value) is int
    assert flag.value is True
    assert text.value == "SDM630"


def test_a_value_that_overflows_in_the_conversion_is_dropped_and_counted() -> None:
    normalise = Normaliser("meter-1")
    readings = normalise([Measurement("huge", 1e307, "MWh"), Measurement("ok", 1.0, "V")])
    assert [r.name for r in readings] == ["ok"]
    assert normalise.invalid_readings == 1
    assert math.isfinite(readings[0].value)  # type: ignore[arg-type]
