"""citygate driver for DS18B20 1-Wire temperature sensors (Linux w1 sysfs)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from citygate.drivers.api import (
    REQUIRED,
    ConfigIssue,
    DecodeError,
    DeviceContext,
    DriverConfigError,
    DriverFactory,
    Field,
    HubFactory,
    Measurement,
    ScanCommand,
    TransportError,
)

__all__ = ["W1Config", "W1Driver", "factory", "parse_w1_slave"]

_SENSOR_ID = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{12}$")
_POWER_ON_RESET_MILLIDEGREES = 85_000  # what a DS18B20 reports before its first conversion


def parse_w1_slave(text: str) -> float:
    """Temperature in °C from the two lines of a ``w1_slave`` file.

    ``72 01 4b 46 7f ff 0e 10 57 : crc=57 YES`` / ``72 01 4b 46 7f ff 0e 10 57 t=23125``
    """
    lines = text.strip().splitlines()
    if len(lines) != 2 or not lines[0].endswith("YES"):
        raise DecodeError("w1: CRC check failed or incomplete read")
    _, sep, value = lines[1].rpartition("t=")
    if not sep:
        raise DecodeError("w1: no temperature in reply")
    try:
        millidegrees = int(value)
    except ValueError:
        raise DecodeError(f"w1: bad temperature {value!r}") from None
    if millidegrees == _POWER_ON_RESET_MILLIDEGREES:
        raise DecodeError("w1: sensor reports its power-on value (85 °C); no conversion yet")
    return millidegrees / 1000.0


@dataclass(frozen=True, slots=True)
class W1Config:
    file: Path


class W1Driver:
    """Reads one sensor's ``w1_slave`` file (the kernel does the 1-Wire I/O)."""

    def __init__(self, config: W1Config) -> None:
        self._file = config.file

    async def __aenter__(self) -> Self:
        if not self._file.exists():
            raise TransportError(
                f"w1: {self._file} not found (sensor unplugged, or w1-therm not loaded?)"
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def poll(self) -> Sequence[Measurement]:
        try:
            # A conversion takes up to 750 ms inside the kernel read: keep it off the event loop.
            async with asyncio.timeout(2.0):
                text = await asyncio.to_thread(self._file.read_text)
        except (OSError, TimeoutError) as exc:
            raise TransportError(f"w1: cannot read {self._file}: {exc}") from None
        return [Measurement("temperature", parse_w1_slave(text), "Cel")]


class W1Factory:
    name = "w1"
    version = "0.1.0"
    default_interval = 30.0
    fields: Mapping[str, Field] = {
        "sensor": Field(
            "str", default=REQUIRED, help="the sensor's id, as under /sys/bus/w1/devices (28-…)"
        ),
        "devices_dir": Field("path", default="/sys/bus/w1/devices"),
    }
    # The optional hooks: no `citygate scan w1`, no source shared by the devices.
    hub: HubFactory | None = None
    scan: ScanCommand | None = None

    def configure(self, options: Mapping[str, Any], context: DeviceContext) -> W1Config:
        sensor = options.get("sensor")
        if not isinstance(sensor, str) or not _SENSOR_ID.match(sensor):
            raise DriverConfigError(
                [ConfigIssue(("sensor",), 'sensor must look like "28-0316a2795aff"', at="value")]
            )
        return W1Config(Path(options["devices_dir"]) / sensor / "w1_slave")

    def create(self, config: W1Config, context: DeviceContext) -> W1Driver:
        return W1Driver(config)


factory = W1Factory()

if TYPE_CHECKING:
    _: DriverFactory = factory
