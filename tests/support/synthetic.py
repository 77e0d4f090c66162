"""A synthetic driver: no I/O, deterministic values. Used to test the pipeline and to
measure its ceiling (`make bench`) without Modbus in the way."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Self

from citygate.drivers.api import DeviceContext, DeviceError, Field, Measurement, TransportError


class SyntheticDriver:
    def __init__(self, options: Mapping[str, Any], context: DeviceContext) -> None:
        self.values = int(options["values"])
        self.fail = str(options["fail"])
        self.counter = 0
        self.names = [f"value_{i}" for i in range(self.values)]

    async def __aenter__(self) -> Self:
        if self.fail == "open":
            raise TransportError("synthetic: cannot open")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def poll(self) -> Sequence[Measurement]:
        await asyncio.sleep(0)  # no I/O to await: yield to the loop as a real poll would
        self.counter += 1
        if self.fail == "device":
            raise DeviceError("synthetic: exception 2 (illegal data address)")
        if self.fail == "nan" and self.counter % 2:
            return [Measurement("good", 1.0, "V"), Measurement("bad", float("nan"), "V")]
        base = float(self.counter)
        return [Measurement(name, base + i * 0.5, "W") for i, name in enumerate(self.names)]


class SyntheticFactory:
    name = "synthetic"
    version = "0"
    default_interval = 1.0
    fields: Mapping[str, Field] = {
        "values": Field("int", default=10, minimum=1, maximum=10_000),
        "fail": Field("str", default="no", choices=("no", "open", "device", "nan")),
    }

    def configure(self, options: Mapping[str, Any], context: DeviceContext) -> Mapping[str, Any]:
        return dict(options)

    def create(self, config: Any, context: DeviceContext) -> SyntheticDriver:
        return SyntheticDriver(config, context)


factory = SyntheticFactory()
