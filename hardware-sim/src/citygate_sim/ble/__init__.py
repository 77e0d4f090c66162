"""Simulated BLE environmental sensors as an advert source in citygate's capture format.

A :class:`BleSimulator` turns a few :class:`SensorSpec` into capture lines
(config.md ``[ble] replay``: JSON Lines, one advert a line), either all at once
for a stretch of simulated time (:meth:`BleSimulator.write_capture`) or live,
appended as they happen (:meth:`BleSimulator.run_live`), so that an agent
replaying the file sees sensors as if they were on the air.

Payloads are encoded from the formats' specifications (BTHome v2 with AES-CCM
written from FIPS-197 / SP 800-38C, Ruuvi RAWv2, ATC1441, pvvx): an independent
oracle for citygate's decoders.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from citygate_sim.ble._formats import BTHOME_UUID, ENVIRONMENT_UUID, RUUVI_COMPANY_ID
from citygate_sim.ble._sensors import SensorSpec, SimSensor

__all__ = [
    "BTHOME_UUID",
    "DEMO_BINDKEY",
    "DEMO_SENSORS",
    "ENVIRONMENT_UUID",
    "RUUVI_COMPANY_ID",
    "BleSimulator",
    "SensorSpec",
    "SimSensor",
]

DEMO_BINDKEY = bytes.fromhex("231d39c1d7cc1ab1aee224cd096db932")
"""The key of bthome.io's encryption example; the demo's encrypted sensor uses it."""

DEMO_SENSORS: tuple[SensorSpec, ...] = (
    SensorSpec("A4:C1:38:5B:0F:21", "pvvx", 2.5, "ATC_5B0F21", rssi=-67, base_temperature=17.0),
    SensorSpec("A4:C1:38:02:83:F4", "atc", 5.0, "ATC_0283F4", rssi=-74, base_temperature=19.0),
    SensorSpec("C8:25:2D:8E:4A:11", "ruuvi", 1.0, "Ruuvi 4A11", rssi=-58, base_temperature=15.0),
    SensorSpec("38:1F:8D:9C:E2:07", "bthome", 10.0, "DIY-sensor", rssi=-80),
    SensorSpec(
        "54:48:E6:8F:80:A5",
        "bthome",
        4.0,
        "SBTH-enc",
        DEMO_BINDKEY,
        rssi=-71,
        base_temperature=21.0,
    ),
)


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(", ", ": "))


class BleSimulator:
    """Several sensors advertising, merged in time order."""

    def __init__(
        self,
        sensors: Sequence[SensorSpec] = DEMO_SENSORS,
        seed: int = 0,
        start: float | None = None,
    ) -> None:
        self.start = time.time() if start is None else start
        self.sensors = [SimSensor(spec, seed, self.start) for spec in sensors]

    def adverts(self, until: float) -> Iterator[dict[str, Any]]:
        """Capture records of every advert up to Unix time ``until``, in time order."""
        queue = [(s.next_time, i) for i, s in enumerate(self.sensors)]
        heapq.heapify(queue)
        while queue and queue[0][0] <= until:
            _, index = heapq.heappop(queue)
            sensor = self.sensors[index]
            yield sensor.advert()
            heapq.heappush(queue, (sensor.next_time, index))

    def write_capture(self, stream: IO[str], seconds: float) -> int:
        """Write ``seconds`` of simulated adverts; return how many."""
        count = 0
        for record in self.adverts(self.start + seconds):
            stream.write(_line(record) + "\n")
            count += 1
        return count

    async def run_live(
        self,
        path: Path,
        *,
        speed: float = 1.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        period: float = 0.2,
    ) -> None:
        """Append adverts to ``path`` as (simulated) time passes, until cancelled."""
        begun = clock()
        with path.open("a", encoding="utf-8") as stream:
            while True:
                now = self.start + (clock() - begun) * speed
                for record in self.adverts(now):
                    stream.write(_line(record) + "\n")
                stream.flush()
                await sleep(period)
