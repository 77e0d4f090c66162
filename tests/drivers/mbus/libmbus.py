"""Compare a decoded telegram with the expectations libmbus documents (``*.norm.xml``).

The vectors in ``vectors/`` are libmbus's test frames (see vectors/README.md for
credit). libmbus names quantities in English and prints values normalised to its
own base units; this module maps both to citygate's names and canonical units
(quantities.md) and lists every difference, record by record.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from pathlib import Path

from citygate.drivers.api import canonical
from citygate.drivers.mbus.decode import Record, Telegram

VECTORS = Path(__file__).parent / "vectors"
FRAMES = VECTORS / "frames"
ERROR_FRAMES = VECTORS / "error-frames"

FUNCTIONS = {
    "Instantaneous value": "instantaneous",
    "Actual value": "instantaneous",  # fixed data structure
    "Maximum value": "maximum",
    "Minimum value": "minimum",
    "Value during error state": "error",
}
MANUFACTURER_FUNCTIONS = ("Manufacturer specific", "More records follow")

# libmbus quantity -> citygate base name
QUANTITIES = {
    "Energy": "energy",
    "Volume": "volume",
    "Power": "power",
    "Time point (date)": "date",
    "Time point (date & time)": "datetime",
    "Volume flow": "volume_flow",
    "Flow temperature": "flow_temperature",
    "Return temperature": "return_temperature",
    "External temperature": "external_temperature",
    "Temperature difference": "temperature_difference",
    "Fabrication No": "fabrication_number",
    "Voltage": "voltage",
    "Current": "current",
    "Manufacturer specific": "manufacturer_specific",
    "Operating time": "operating_time",
    "On time": "on_time",
    "Error flags": "error_flags",
    "Software version": "software_version",
    "Firmware version": "firmware_version",
    "Dimensionless": "dimensionless",
    "Averaging Duration": "averaging_duration",
    "Actuality Duration": "actuality_duration",
    "H.C.A.": "hca",
    "Customer location": "customer_location",
    "Digital Input": "digital_input",
    "Digital Output": "digital_output",
    "Model / Version": "model_version",
    "Parameter set identification": "parameter_set_id",
    "(Enhanced) Identification": "enhanced_id",
    "Medium": "medium",
    "Reset counter": "reset_counter",
    "Special supplier information": "special_supplier_information",
    # plain-text VIFs: citygate names them by their text
    "%RH": "relative_humidity",
    "cust. ID": "text_cust_id",
    "bat. time": "text_bat_time",
    "C": "text_c",
    "c": "text_c",
    "PW": "text_pw",
}
# libmbus unit -> SenML symbol
UNITS = {
    "Wh": "Wh",
    "kWh": "kWh",
    "J": "J",
    "m^3": "m3",
    "l": "l",
    "W": "W",
    "m^3/h": "m3/h",
    "°C": "Cel",
    "Â°C": "Cel",
    "K": "K",
    "V": "V",
    "A": "A",
    "s": "s",
}
# fixed data structure (CI 0x73): libmbus gives only a unit
FIXED_UNIT_QUANTITY = {"l": "volume", "kWh": "energy"}


@dataclass(frozen=True, slots=True)
class Expected:
    """One ``<DataRecord>`` of a ``.norm.xml`` file."""

    index: int
    function: str | None
    storage: int | None
    tariff: int | None
    device: int | None
    unit: str | None
    quantity: str | None
    value: str | None


def load_expected(path: Path) -> tuple[dict[str, str], list[Expected]]:
    """The slave information and the data records libmbus documents for a frame."""
    root = ET.parse(path).getroot()
    info_node = root.find("SlaveInformation")
    info = {child.tag: (child.text or "") for child in info_node} if info_node is not None else {}
    records = []
    for node in root.iter("DataRecord"):

        def text(tag: str, node: ET.Element = node) -> str | None:
            found = node.find(tag)
            return None if found is None else (found.text or "")

        def number(tag: str, node: ET.Element = node) -> int | None:
            found = node.find(tag)
            return None if found is None or not found.text else int(found.text)

        records.append(
            Expected(
                index=int(node.get("id", "0")),
                function=text("Function"),
                storage=number("StorageNumber"),
                tariff=number("Tariff"),
                device=number("Device"),
                unit=text("Unit"),
                quantity=text("Quantity"),
                value=text("Value"),
            )
        )
    return info, records


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def compare_record(expected: Expected, record: Record) -> list[str]:
    """The differences between one libmbus record and ours (empty: they match)."""
    problems: list[str] = []
    where = f"record {expected.index} ({record.name})"
    function = FUNCTIONS.get(expected.function or "")
    if function != record.function:
        problems.append(f"{where}: function {expected.function!r} vs {record.function!r}")
    for label, want, got in (
        ("storage", expected.storage, record.storage),
        ("tariff", expected.tariff, record.tariff),
        ("subunit", expected.device, record.subunit),
    ):
        if want is not None and want != got:
            problems.append(f"{where}: {label} {want} vs {got}")
    if expected.quantity is None:
        base = FIXED_UNIT_QUANTITY.get(expected.unit or "")
    else:
        base = QUANTITIES.get(expected.quantity)
    if base is not None and record.quantity != base:
        problems.append(
            f"{where}: quantity {expected.quantity!r} -> {base!r} vs {record.quantity!r}"
        )
    problems += _compare_value(where, expected, record)
    return problems


def _compare_value(where: str, expected: Expected, record: Record) -> list[str]:
    want = (expected.value or "").strip()
    got = record.value
    if record.quantity in ("date", "datetime") or re.match(r"\d{4}-\d\d-\d\d", want):
        if re.match(r"\d{4}-(00|\d\d-00)", want):  # libmbus prints unset dates; we give no value
            return [] if got is None else [f"{where}: unset date {want!r} vs {got!r}"]
        # meters send local time without zone: libmbus appends Z, we do not
        return [] if got == want.removesuffix("Z") else [f"{where}: {want!r} vs {got!r}"]
    if isinstance(got, str) or got is None:
        if got is None:
            return [f"{where}: no value ({record.problem}); libmbus {want!r}"]
        return [] if got.strip() == want else [f"{where}: {want!r} vs {got!r}"]
    number = _number(want)
    if number is None:
        return [f"{where}: libmbus value {want!r} is not a number, ours {got!r}"]
    unit = UNITS.get(expected.unit or "")
    factor = 1.0
    if unit is not None:
        want_unit, factor = canonical(unit)
        got_unit, got_factor = canonical(record.unit) if record.unit else (None, 1.0)
        if got_unit != want_unit:
            return [f"{where}: unit {expected.unit!r} vs {record.unit!r}"]
        got = got * got_factor
    want_value = number * factor
    # libmbus prints six decimals
    if not math.isclose(got, want_value, rel_tol=1e-6, abs_tol=0.5e-6 * factor):
        return [f"{where}: value {want_value!r} vs {got!r} ({expected.unit})"]
    return []


def compare(telegram: Telegram, info: dict[str, str], expected: list[Expected]) -> list[str]:
    """Every difference between our telegram and libmbus's expectations."""
    problems: list[str] = []
    header = telegram.header
    if header is None:
        return ["no header"]
    if info.get("Id") and info["Id"].lstrip("0") != header.id.lstrip("0"):  # libmbus: no zeros
        problems.append(f"id {info['Id']!r} vs {header.id!r}")
    if info.get("Manufacturer") and info["Manufacturer"] != header.manufacturer:
        problems.append(f"manufacturer {info['Manufacturer']!r} vs {header.manufacturer!r}")
    if info.get("Version") and int(info["Version"]) != header.version:
        problems.append(f"version {info['Version']!r} vs {header.version!r}")
    if info.get("AccessNumber") and int(info["AccessNumber"]) != header.access_number:
        problems.append(f"access number {info['AccessNumber']} vs {header.access_number}")
    if info.get("Status") and int(info["Status"], 16) != header.status:
        problems.append(f"status {info['Status']} vs {header.status}")
    data_records = [e for e in expected if e.function not in MANUFACTURER_FUNCTIONS]
    manufacturer = [e for e in expected if e.function in MANUFACTURER_FUNCTIONS]
    if len(data_records) != len(telegram.records):
        problems.append(f"{len(data_records)} records expected, {len(telegram.records)} decoded")
    previous_unit: str | None = None
    for documented, record in zip(data_records, telegram.records, strict=False):
        want = documented
        if want.unit == "reserved but historic":  # fixed data: counter 2 in counter 1's unit
            want = replace(want, unit=previous_unit)
        previous_unit = want.unit
        problems += compare_record(want, record)
    if manufacturer:
        last = manufacturer[-1]
        if (last.function == "More records follow") != telegram.more_records_follow:
            problems.append("more-records-follow flag differs")
        want_hex = (last.value or "").strip().upper()
        if want_hex and want_hex != telegram.manufacturer_data.hex(" ").upper():
            problems.append(
                f"manufacturer data {want_hex!r} vs {telegram.manufacturer_data.hex(' ')!r}"
            )
    return problems
