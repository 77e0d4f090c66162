"""The ``ble`` driver's factory.

Its config is complete (:mod:), so ``citygate check``
validates ble devices today; the transport arrives with issue 6. Until
then a ble device is reported with a clear error in its status instead of
being polled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent import __version__
from drivers.api import DeviceContext, DriverError, Field, PollDriver
from drivers.ble import config


class BleFactory:
    """Entry point ``citygate.drivers: ble``."""

    name = "ble"
    version = __version__
    default_interval = config.DEFAULT_INTERVAL
    fields: Mapping[str, Field] = config.FIELDS

    def configure(self, options: Mapping[str, Any], context: DeviceContext) -> Any:
        return config.configure(options, context)

    def create(self, driver_config: Any, context: DeviceContext) -> PollDriver:
        raise DriverError("the BLE driver is not available in this version of citygate yet")


factory = BleFactory()
