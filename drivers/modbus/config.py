"""The modbus driver's keys of a ``[[device]]`` table and their checks.

:data:`FIELDS` declares the keys (the config loader checks kinds, ranges and
unknown keys with them); :func:`configure` checks what a key table cannot say
and returns a :class:`ModbusConfig` with the read plan compiled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from citygate.drivers.api import (
    ConfigIssue,
    DeviceContext,
    DriverConfigError,
    Field,
    SerialLineConfig,
)
from citygate.drivers.modbus.decode import RegisterSpec
from citygate.drivers.modbus.plan import MAX_REGISTERS, RTU_REQUEST_COST, ReadPlan
from citygate.drivers.modbus.profile import (
    REGISTER_FIELDS,
    Profile,
    find_profile,
    is_identity,
    load_profile,
    merge_registers,
    parse_registers,
)

__all__ = ["DEFAULT_MAX_GAP", "DEFAULT_MAX_REGISTERS", "FIELDS", "ModbusConfig", "configure"]

DEFAULT_MAX_GAP: Final = 16
DEFAULT_MAX_REGISTERS: Final = MAX_REGISTERS

FIELDS: Final[dict[str, Field]] = {
    "host": Field("str", None, "Modbus TCP: host name or address (exactly one of host / serial)"),
    "port": Field("int", 502, "Modbus TCP port", minimum=1, maximum=65535),
    "serial": Field("str", None, "Modbus RTU: the id of a [[serial]] line"),
    "unit": Field("int", 1, "unit (slave) id", minimum=0, maximum=247),
    "profile": Field(
        "str", None, "a built-in meter profile (eastron-sdm630, …) or the path of a profile file"
    ),
    "timeout": Field(
        "duration", None, "reply timeout per request (default: the line's for RTU, else 1s)"
    ),
    "retries": Field("int", 1, "extra attempts after a timeout", minimum=0, maximum=10),
    "max_gap": Field(
        "int",
        None,
        "most unused registers one read may bridge"
        f" (default: the profile's, else {DEFAULT_MAX_GAP})",
        minimum=0,
        maximum=65535,
    ),
    "max_registers": Field(
        "int",
        None,
        "most registers one read may ask for"
        f" (default: the profile's, else {DEFAULT_MAX_REGISTERS})",
        minimum=1,
        maximum=MAX_REGISTERS,
    ),
    "registers": Field(
        "table_list", (), "[[device.registers]]: registers to read", fields=REGISTER_FIELDS
    ),
}
"""The driver's own keys of a ``[[device]]`` table (config.md, driver = "modbus")."""


@dataclass(frozen=True, slots=True)
class ModbusConfig:
    """One Modbus device, checked, with its read plan compiled.

    ``plan`` is the device's: the driver narrows it in place when the meter
    refuses reads across unused registers, so every driver created from this
    config (after a reconnect too) reads the narrowed requests. ``registers``
    are the sampled registers, read by ``plan``; ``identity`` the identity
    registers (serial number, model, …), read once per connection by ``identity_plan``.
    """

    registers: tuple[RegisterSpec, ...]
    plan: ReadPlan = field(compare=False)  # narrowed at run time: not part of the config
    identity: tuple[RegisterSpec, ...] = ()
    identity_plan: ReadPlan = field(default_factory=lambda: ReadPlan(()), compare=False)
    host: str | None = None
    port: int = 502
    serial: SerialLineConfig | None = None
    unit: int = 1
    timeout: float = 1.0
    retries: int = 1
    max_gap: int = DEFAULT_MAX_GAP
    max_registers: int = DEFAULT_MAX_REGISTERS
    profile: Profile | None = None

    @property
    def where(self) -> str:
        """``127.0.0.1:5020 unit 3`` or ``serial rs485 unit 3``, for messages."""
        if self.serial is not None:
            return f"serial {self.serial.id} unit {self.unit}"
        return f"{self.host}:{self.port} unit {self.unit}"


def configure(options: Mapping[str, Any], context: DeviceContext) -> ModbusConfig:
    """Check a device's typed options; raise DriverConfigError listing every issue."""
    issues: list[ConfigIssue] = []
    host = options.get("host")
    serial_id = options.get("serial")
    serial: SerialLineConfig | None = None
    if host is not None and serial_id is not None:
        issues.append(
            ConfigIssue(
                ("serial",), "give host (Modbus TCP) or serial (Modbus RTU), not both", at="key"
            )
        )
    elif host is None and serial_id is None:
        issues.append(ConfigIssue((), "a modbus device needs host (Modbus TCP) or serial (RTU)"))
    elif host is not None and not str(host).strip():
        issues.append(ConfigIssue(("host",), "host must not be empty"))
    elif serial_id is not None:
        serial = context.serial_lines.get(serial_id)
        if serial is None:
            defined = ", ".join(f'"{line}"' for line in sorted(context.serial_lines)) or "none"
            issues.append(
                ConfigIssue(
                    ("serial",), f'no [[serial]] line has id "{serial_id}" (defined: {defined})'
                )
            )
        if options.get("unit") == 0:
            issues.append(
                ConfigIssue(
                    ("unit",),
                    "unit 0 is the broadcast address on a serial line: no device answers it",
                )
            )

    given_timeout = options.get("timeout")
    if given_timeout is not None:
        timeout = float(given_timeout)
    else:
        timeout = serial.timeout if serial is not None else 1.0
    if not math.isfinite(timeout) or timeout <= 0:
        issues.append(ConfigIssue(("timeout",), "timeout must be more than 0"))

    profile: Profile | None = None
    reference = options.get("profile")
    if reference is not None:
        try:
            profile = load_profile(find_profile(reference, context.config_dir))
        except DriverConfigError as exc:
            issues.extend(exc.issues)

    own, register_issues = parse_registers(options.get("registers") or [], path=("registers",))
    issues.extend(register_issues)
    registers = merge_registers(profile.registers if profile else (), own)
    if not registers and not issues:
        issues.append(
            ConfigIssue(
                (), "no registers to read: name a profile or add [[device.registers]] tables"
            )
        )

    sampled = tuple(spec for spec in registers if not is_identity(spec))
    identity = tuple(spec for spec in registers if is_identity(spec))
    if registers and not sampled and not issues:
        issues.append(
            ConfigIssue(
                (),
                "no registers to sample: serial_number, model, firmware_version and"
                " manufacturer are identity registers, read once and not published as readings",
            )
        )
    max_gap = _limit(options, "max_gap", profile, DEFAULT_MAX_GAP)
    max_registers = _limit(options, "max_registers", profile, DEFAULT_MAX_REGISTERS)
    plan: ReadPlan | None = None
    identity_plan: ReadPlan | None = None
    if not issues:
        try:
            # On a serial line every request costs wire time: read gaps only when cheaper.
            cost = RTU_REQUEST_COST if serial is not None else None
            plan = ReadPlan.build(
                sampled, max_gap=max_gap, max_registers=max_registers, request_cost=cost
            )
            identity_plan = ReadPlan.build(
                identity, max_gap=max_gap, max_registers=max_registers, request_cost=cost
            )
        except ValueError as exc:
            issues.append(ConfigIssue(("max_registers",), str(exc)))
    if issues or plan is None or identity_plan is None:
        raise DriverConfigError(issues)
    return ModbusConfig(
        registers=sampled,
        plan=plan,
        identity=identity,
        identity_plan=identity_plan,
        host=host,
        port=int(_option(options, "port", 502)),
        serial=serial,
        unit=int(_option(options, "unit", 1)),
        timeout=timeout,
        retries=int(_option(options, "retries", 1)),
        max_gap=max_gap,
        max_registers=max_registers,
        profile=profile,
    )


def _option(options: Mapping[str, Any], key: str, default: float) -> Any:
    value = options.get(key)
    return default if value is None else value


def _limit(options: Mapping[str, Any], key: str, profile: Profile | None, default: int) -> int:
    given = options.get(key)
    if given is not None:
        return int(given)
    from_profile: int | None = getattr(profile, key) if profile is not None else None
    return from_profile if from_profile is not None else default
