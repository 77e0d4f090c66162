"""Simulated wired M-Bus water meters (EN 13757-2/-3) on a pseudo-terminal.

* :class:`WaterMeter`: one meter's state (volume only increasing, flow,
  temperatures, dates, status and error flags) and its RSP_UD telegrams,
  encoded from the standard (:mod:`citygate_sim.mbus._encode`), never through
  citygate's decoder;
* :class:`MbusSimulator`: the meters on one paced M-Bus line behind a pty,
  answering SND_NKE, REQ_UD2 (FCB, multi-telegram readouts) and secondary
  selection with wildcards; collisions and faults on demand (:class:`MbusFault`).
"""

from __future__ import annotations

from ._encode import (
    ACK,
    MEDIUM_CODES,
    Record,
    bcd,
    checksum,
    date_g,
    datetime_f,
    long_frame,
    manufacturer_code,
    short_frame,
)
from ._line import MbusFault, MbusRequestDecoder, MbusSimulator, Request, matches_secondary
from ._meter import STATUS_BITS, MeterValues, WaterMeter

__all__ = [
    "ACK",
    "MEDIUM_CODES",
    "STATUS_BITS",
    "MbusFault",
    "MbusRequestDecoder",
    "MbusSimulator",
    "MeterValues",
    "Record",
    "Request",
    "WaterMeter",
    "bcd",
    "checksum",
    "date_g",
    "datetime_f",
    "long_frame",
    "manufacturer_code",
    "matches_secondary",
    "short_frame",
]
