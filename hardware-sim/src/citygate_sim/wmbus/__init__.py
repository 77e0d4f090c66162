"""A simulated wireless M-Bus receiver (IMST iM871A) with water and heat meters around it.

* :class:`MeterSpec` / :data:`DEMO_METERS`: who sends (id, medium, AES key, interval,
  level, radio mode); :class:`WaterMeter` and :class:`HeatMeter` integrate a plausible
  consumption and encode their telegrams from EN 13757-4/-3 and OMS security mode 5
  (:mod:`._telegram`), never through citygate's driver;
* :class:`Air`: their telegrams in time order (sans-I/O); :func:`write_capture` writes
  them as a replay capture (config.md ``[[wmbus]] replay``);
* :class:`WmbusSimulator`: the stick on a pseudo-terminal speaking the iM871A's HCI
  (:mod:`._hci`): ping, device info, configuration (link mode, RSSI), and every
  telegram heard as a ``WMBUSMSG_IND``, some damaged on request.
"""

from __future__ import annotations

from . import _hci as hci
from ._meters import (
    DEMO_METERS,
    HeatMeter,
    HeatValues,
    MeterSpec,
    Transmission,
    WaterMeter,
    WaterValues,
    WirelessMeter,
    make_meter,
)
from ._stick import Air, StickConfig, WmbusSimulator, capture_line, write_capture
from ._telegram import cbc_encrypt, configuration_word, link_header, mode5_iv, telegram

__all__ = [
    "DEMO_METERS",
    "Air",
    "HeatMeter",
    "HeatValues",
    "MeterSpec",
    "StickConfig",
    "Transmission",
    "WaterMeter",
    "WaterValues",
    "WirelessMeter",
    "WmbusSimulator",
    "capture_line",
    "cbc_encrypt",
    "configuration_word",
    "hci",
    "link_header",
    "make_meter",
    "mode5_iv",
    "telegram",
    "write_capture",
]
