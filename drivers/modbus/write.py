"""Remote writes, sans-I/O: a named value in the register's unit → one write request.

:func:`plan_write` checks a write against the device's config and builds the
request, or raises :class:`~citygate.drivers.api.WriteRefused` (nothing is sent):

* ``forbidden``: no register of that name, or not ``writable``;
* ``bad_request``: a bool for a number or a number for a bool, a value that is not
  finite, or one that gives no whole raw value for an integer register;
* ``out_of_range``: outside the register's ``min``/``max`` (in its configured
  unit), or a raw value its type cannot hold.

The raw value undoes scale and offset (raw = (value − offset) / scale) and is
encoded with the register's type and order (:func:`~citygate.drivers.modbus.decode.encode_value`):
FC 06 for one register, FC 16 for more, FC 05 for a coil. :func:`read_back`
decodes the register read afterwards exactly as a poll does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Final

from citygate.drivers.api import Value, WriteRefused, show_value
from citygate.drivers.modbus.decode import BlockDecoder, RegisterSpec, encode_value, raw_range
from citygate.drivers.modbus.pdu import WriteRequest

__all__ = ["plan_write", "read_back"]

# A raw value this close (relative) to a whole number is taken as it: 23.4 / 0.1 is
# 233.99999999999997, not a refusal.
_WHOLE_TOLERANCE: Final = 1e-9


def _find(registers: Sequence[RegisterSpec], name: str) -> RegisterSpec:
    for spec in registers:
        if spec.name == name:
            if not spec.writable:
                raise WriteRefused(
                    "forbidden", f'register "{name}" is not writable (its config lacks writable)'
                )
            return spec
    raise WriteRefused("forbidden", f'no register named "{name}"')


def _show(value: object) -> str:
    """A value for a message, at most 24 characters (a hostile number stays short)."""
    try:
        shown = show_value(value)
    except ValueError:  # an integer of more than 4300 digits
        return "a huge number"
    return shown if len(shown) <= 24 else shown[:23] + "…"


def _unit(spec: RegisterSpec) -> str:
    return f" {spec.unit}" if spec.unit else ""


def _raw(spec: RegisterSpec, value: float | int) -> float | int:
    """(value − offset) / scale, exact for integers when there is nothing to undo."""
    if spec.scale == 1.0 and spec.offset == 0.0:
        return value
    return (value - spec.offset) / spec.scale


def plan_write(
    registers: Sequence[RegisterSpec], name: str, value: object
) -> tuple[RegisterSpec, WriteRequest]:
    """The register ``name`` and the request that writes ``value`` to it; raise
    WriteRefused for a write the config does not allow."""
    spec = _find(registers, name)
    if spec.type == "bool":
        if not isinstance(value, bool):
            raise WriteRefused("bad_request", f'"{name}" takes true or false, not {_show(value)}')
        if spec.table == "coil":
            return spec, WriteRequest.coils(spec.address, [value])
        return spec, WriteRequest.registers(spec.address, encode_value(value, "bool"))
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WriteRefused("bad_request", f'"{name}" takes a number, not {_show(value)}')
    if isinstance(value, float) and not math.isfinite(value):
        raise WriteRefused("bad_request", f'"{name}" takes a finite number, not {value}')
    low, high = spec.minimum, spec.maximum
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"{show_value(low) if low is not None else '…'}–" + (
            show_value(high) if high is not None else "…"
        )
        raise WriteRefused(
            "out_of_range",
            f'{_show(value)}{_unit(spec)} is outside the range of "{name}" ({bounds}{_unit(spec)})',
        )
    try:
        raw = _raw(spec, value)
    except OverflowError:  # an integer too large for a float
        raise WriteRefused("out_of_range", f'{_show(value)} overflows "{name}"') from None
    if isinstance(raw, float) and not math.isfinite(raw):
        raise WriteRefused("out_of_range", f'{_show(value)} overflows "{name}"')
    limits = raw_range(spec.type)
    if limits is not None and isinstance(raw, float):
        whole = round(raw)
        if abs(raw - whole) > _WHOLE_TOLERANCE * max(1.0, abs(raw)):
            raise WriteRefused(
                "bad_request",
                f'{_show(value)}{_unit(spec)} is no whole step of "{name}"'
                f" (raw value {raw:.6g}; {spec.type} holds whole numbers)",
            )
        raw = whole
    if limits is not None and not limits[0] <= raw <= limits[1]:
        raise WriteRefused(
            "out_of_range",
            f"{_show(value)}{_unit(spec)} gives raw value {_show(raw)}, outside the range of"
            f' "{name}" ({spec.type}: {limits[0]}…{limits[1]})',
        )
    try:
        words = encode_value(raw, spec.type, spec.order)
    except ValueError:
        raise WriteRefused(
            "out_of_range", f'{_show(value)}{_unit(spec)} does not fit "{name}" ({spec.type})'
        ) from None
    return spec, WriteRequest.registers(spec.address, words)


def read_back(spec: RegisterSpec, reply: Sequence[int] | Sequence[bool]) -> Value:
    """The value of ``spec`` in the reply to reading its ``width`` addresses, as a
    poll gives it (scaled, in the canonical unit)."""
    decoder = BlockDecoder(spec.table, spec.address, spec.width, [spec])
    return decoder.decode(reply)[0].value
