"""Reload planning: what a SIGHUP restarts, worked out from two configs.

:func:`plan_reload` compares the running config with a new, valid one and returns a
:class:`ReloadPlan`. It is a pure function: no I/O, no event loop, no logging, no
running object. The agent (:mod:`citygate.app`) carries the plan out and logs it.

What it decides (cli.md, "Reload"):

* a device restarts when its driver, interval, enabled, labels, options or driver
  config changed (:func:`device_differs`); a disabled device counts as removed;
* a ``[[serial]]`` line keeps its owner while its settings and its protocol (the
  driver of its first device) stay; devices join or leave it. Otherwise the owner
  is replaced and every device on the line restarts;
* the BLE hub and every BLE device restart when ``[ble]`` changed or BLE devices
  appear or all go;
* the publisher restarts when ``[mqtt]`` changed;
* ``gateway.id``, ``gateway.data_dir`` and ``buffer.durability`` need a restart of
  the agent: the running values stay in the effective config and the change is
  reported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from citygate.config import Config, DeviceConfig
from citygate.lines import line_protocol_conflicts

__all__ = [
    "KeptLine",
    "KeptSetting",
    "ReloadPlan",
    "device_differs",
    "line_users",
    "plan_reload",
]


@dataclass(frozen=True, slots=True)
class KeptSetting:
    """A setting that changed but takes effect only after a restart of the agent."""

    name: str
    """``gateway.id``, ``gateway.data_dir`` or ``buffer.durability``."""
    wanted: object
    """The value of the new config."""
    kept: object
    """The running value, which stays."""


@dataclass(frozen=True, slots=True)
class KeptLine:
    """A serial line whose owner stays: same settings, same protocol."""

    line_id: str
    devices: tuple[tuple[str, float], ...]
    """``(device id, interval)`` of every device on the line in the new config, in
    config order: each is attached again (its interval may have changed)."""
    attached: tuple[str, ...]
    """The devices new on the line."""
    detached: tuple[str, ...]
    """The devices no longer on the line (removed, disabled or moved), sorted."""


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """What a reload restarts (see the module docstring)."""

    config: Config
    """The effective new config: the new one with the restart-only settings kept."""
    devices: Mapping[str, DeviceConfig]
    """The enabled devices of :attr:`config` by id, in config order: what runs after."""
    removed: tuple[str, ...]
    """Running devices that go (gone or disabled), in the running config's order."""
    added: tuple[str, ...]
    """Devices that start, in the new config's order."""
    restarted: tuple[str, ...]
    """Running devices that stop and start again, sorted."""
    untouched: tuple[str, ...]
    """Running devices left running, in the new config's order."""
    kept_lines: tuple[KeptLine, ...]
    """Running serial lines whose owner stays, in the running config's order."""
    replaced_lines: tuple[str, ...]
    """Running serial lines whose owner is closed (settings or protocol changed, or no
    device uses them any more); a new owner takes over a line still in use."""
    hub_restart: bool
    """Whether the BLE hub stops and (when BLE devices remain) a new one starts."""
    publisher_restart: bool
    """Whether ``[mqtt]`` changed: the publisher restarts with the new settings."""
    restart_only: tuple[KeptSetting, ...]
    """Restart-only settings that changed, with the values kept."""
    log_level: str | None
    """The new ``gateway.log_level`` when it changed, else None."""

    @property
    def unchanged(self) -> bool:
        """No device, line, hub or broker setting changed: nothing restarts."""
        return not (
            self.removed
            or self.added
            or self.restarted
            or self.hub_restart
            or self.publisher_restart
        )


def plan_reload(old: Config, new: Config, *, ble_hub: bool) -> ReloadPlan:
    """The plan that takes the agent running ``old`` to ``new`` (both valid).

    ``ble_hub``: whether the BLE driver shares a scanner hub (its factory makes one);
    the agent runs a hub exactly when it does and a BLE device is enabled.
    """
    new, restart_only = _keep_restart_only_settings(old, new)
    running = {d.id: d for d in old.devices if d.enabled}
    wanted = {d.id: d for d in new.devices if d.enabled}
    removed = [i for i in running if i not in wanted]
    added = [i for i in wanted if i not in running]
    changed = {i for i in wanted if i in running and device_differs(running[i], wanted[i])}

    # Serial lines: keep the owner of a line whose settings and protocol stay.
    old_lines, new_lines = _lines(running.values()), _lines(wanted.values())
    kept_lines: list[KeptLine] = []
    replaced_lines: list[str] = []
    for line_id in old.serial:
        if line_id not in old_lines:
            continue  # no owner runs for a line nobody uses
        before = old_lines[line_id]
        after = new_lines.get(line_id) if line_id in new.serial else None
        if (
            after is not None
            and new.serial[line_id] == old.serial[line_id]
            and after.protocol == before.protocol
        ):
            kept_lines.append(
                KeptLine(
                    line_id,
                    devices=tuple(after.devices.items()),
                    attached=tuple(i for i in after.devices if i not in before.devices),
                    detached=tuple(sorted(before.devices.keys() - after.devices.keys())),
                )
            )
        else:
            replaced_lines.append(line_id)
            changed |= {i for i in wanted if wanted[i].options.get("serial") == line_id}

    # BLE: a new hub when [ble] changed or BLE devices appear or all go.
    had_hub = ble_hub and any(d.driver == "ble" for d in running.values())
    wants_hub = ble_hub and any(d.driver == "ble" for d in wanted.values())
    hub_restart = had_hub != wants_hub or (wants_hub and new.ble != old.ble)
    if hub_restart:
        changed |= {i for i in wanted if wanted[i].driver == "ble"}
    changed -= set(added)

    log_level = new.gateway.log_level
    return ReloadPlan(
        config=new,
        devices=wanted,
        removed=tuple(removed),
        added=tuple(added),
        restarted=tuple(sorted(changed)),
        untouched=tuple(i for i in wanted if i in running and i not in changed),
        kept_lines=tuple(kept_lines),
        replaced_lines=tuple(replaced_lines),
        hub_restart=hub_restart,
        publisher_restart=new.mqtt != old.mqtt,
        restart_only=restart_only,
        log_level=log_level if log_level != old.gateway.log_level else None,
    )


def line_users(devices: Iterable[DeviceConfig]) -> list[tuple[str, str, str, float]]:
    """``(device id, driver, line id, interval)`` of each device on a ``[[serial]]`` line,
    as :class:`citygate.lines.LineSet` takes them."""
    return [
        (d.id, d.driver, d.options["serial"], d.interval)
        for d in devices
        if isinstance(d.options.get("serial"), str)
    ]


def device_differs(old: DeviceConfig, new: DeviceConfig) -> bool:
    """Whether a reload must restart the device (its ``source`` file does not count)."""
    return (old.driver, old.interval, old.enabled, dict(old.labels), dict(old.options)) != (
        new.driver,
        new.interval,
        new.enabled,
        dict(new.labels),
        dict(new.options),
    ) or not _same_value(old.driver_config, new.driver_config)


def _keep_restart_only_settings(old: Config, new: Config) -> tuple[Config, tuple[KeptSetting, ...]]:
    """``new`` with the running values of the restart-only settings, and those that changed."""
    kept = [
        KeptSetting(f"gateway.{name}", getattr(new.gateway, name), getattr(old.gateway, name))
        for name in ("id", "data_dir")
        if getattr(new.gateway, name) != getattr(old.gateway, name)
    ]
    gateway = dataclasses.replace(new.gateway, id=old.gateway.id, data_dir=old.gateway.data_dir)
    buffer = new.buffer
    if buffer.durability != old.buffer.durability:
        kept.append(KeptSetting("buffer.durability", buffer.durability, old.buffer.durability))
        buffer = dataclasses.replace(buffer, durability=old.buffer.durability)
    return dataclasses.replace(new, gateway=gateway, buffer=buffer), tuple(kept)


@dataclass(frozen=True, slots=True)
class _Line:
    protocol: str
    devices: dict[str, float]  # device id → interval


def _lines(devices: Iterable[DeviceConfig]) -> dict[str, _Line]:
    """The lines in use by ``devices``, with their protocol and devices, as
    :class:`citygate.lines.LineSet` gives them owners: a line carries the driver of its
    first device, a device putting a second protocol on it is left out."""
    users = line_users(devices)
    conflicts = set(line_protocol_conflicts((d, drv, line) for d, drv, line, _ in users))
    lines: dict[str, _Line] = {}
    for device_id, driver, line_id, interval in users:
        if (device_id, driver, line_id) not in conflicts:
            lines.setdefault(line_id, _Line(driver, {})).devices[device_id] = interval
    return lines


def _same_value(a: object, b: object) -> bool:
    """Value equality for driver configs, which may hold objects without ``__eq__``.

    Dataclasses compare field by field (fields with ``compare=False`` skipped), containers
    item by item, objects that define ``__eq__`` with it, other objects by their state
    (``__dict__`` / ``__slots__``): a compiled plugin object rebuilt from the same text is
    the same, where ``==`` would say "not the same object" and restart the device.
    """
    if type(a) is not type(b):
        return False
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return all(
            _same_value(getattr(a, f.name), getattr(b, f.name))
            for f in dataclasses.fields(a)
            if f.compare
        )
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)
    if type(a).__eq__ is not object.__eq__:
        return bool(a == b)
    state_a, state_b = _state(a), _state(b)
    return state_a.keys() == state_b.keys() and all(
        _same_value(value, state_b[name]) for name, value in state_a.items()
    )


def _state(obj: object) -> dict[str, object]:
    """An object's attributes: its ``__dict__`` and every ``__slots__`` entry set."""
    state: dict[str, object] = {}
    for cls in type(obj).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name not in ("__dict__", "__weakref__") and hasattr(obj, name):
                state[name] = getattr(obj, name)
    state.update(getattr(obj, "__dict__", {}))
    return state
