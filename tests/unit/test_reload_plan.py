"""citygate.reload: the restart plan of a SIGHUP, from two configs alone (no event loop).

Every config here is loaded by the real loader with the real driver registry, the way the
agent loads it on a reload: a running config, then the edited file read again.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from citygate import registry
from citygate.config import Config, load
from citygate.reload import KeptLine, KeptSetting, ReloadPlan, plan_reload

SERIAL = {
    "rs485": 'port = "/dev/ttyUSB0"\nbaudrate = 9600',
    "mbus": 'port = "/dev/ttyAMA0"\nbaudrate = 2400\nparity = "E"',
}
DEVICES = {
    "meter-tcp": 'driver = "modbus"\nhost = "10.20.0.31"\nunit = 1\nprofile = "eastron-sdm120"',
    "meter-1": 'driver = "modbus"\nserial = "rs485"\nunit = 1\nprofile = "eastron-sdm630"',
    "meter-2": 'driver = "modbus"\nserial = "rs485"\nunit = 2\nprofile = "eastron-sdm120"',
    "water": 'driver = "mbus"\nserial = "mbus"\naddress = 5',
    "env-1": 'driver = "ble"\naddress = "A4:C1:38:5B:0F:21"\nformat = "pvvx"',
    "env-2": 'driver = "ble"\naddress = "A4:C1:38:5B:0F:22"\nformat = "pvvx"',
}
ALL = tuple(DEVICES)


class Site:
    """One gateway.toml, written and loaded again as an operator edits it."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "gateway.toml"
        self.data_dir = tmp_path / "var"
        self.factories = registry.factories()

    def load(
        self,
        *,
        gateway: str = "",
        mqtt: str = "",
        buffer: str = "",
        ble: str | None = None,
        serial: dict[str, str] = SERIAL,
        devices: dict[str, str] = DEVICES,
    ) -> Config:
        parts = [
            f'[gateway]\nid = "gw-1"\ndata_dir = "{self.data_dir}"\n{gateway}',
            f'[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n{mqtt}',
            f"[buffer]\n{buffer}",
        ]
        if ble is not None:
            parts.append(f"[ble]\n{ble}")
        parts += [f'[[serial]]\nid = "{i}"\n{body}' for i, body in serial.items()]
        parts += [f'[[device]]\nid = "{i}"\n{body}' for i, body in devices.items()]
        self.path.write_text("\n\n".join(parts) + "\n")
        return load(self.path, self.factories)


@pytest.fixture
def site(tmp_path: Path) -> Site:
    return Site(tmp_path)


def without(*ids: str) -> dict[str, str]:
    return {i: body for i, body in DEVICES.items() if i not in ids}


def edited(device_id: str, extra: str) -> dict[str, str]:
    return {**DEVICES, device_id: f"{DEVICES[device_id]}\n{extra}"}


def plan(old: Config, new: Config, *, ble_hub: bool = True) -> ReloadPlan:
    return plan_reload(old, new, ble_hub=ble_hub)


def line(p: ReloadPlan, line_id: str) -> KeptLine:
    return next(kept for kept in p.kept_lines if kept.line_id == line_id)


def test_nothing_changed(site: Site) -> None:
    old = site.load()
    p = plan(old, site.load())
    assert p.unchanged
    assert (p.removed, p.added, p.restarted) == ((), (), ())
    assert p.untouched == ALL
    assert tuple(p.devices) == ALL
    assert [kept.line_id for kept in p.kept_lines] == ["rs485", "mbus"]
    assert line(p, "rs485").devices == (("meter-1", 10.0), ("meter-2", 10.0))
    assert (line(p, "rs485").attached, line(p, "rs485").detached) == ((), ())
    assert p.replaced_lines == ()
    assert not p.hub_restart and not p.publisher_restart
    assert p.restart_only == () and p.log_level is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.hub_restart = True  # type: ignore[misc]


def test_devices_added_removed_and_changed(site: Site) -> None:
    old = site.load()
    devices = {
        **without("meter-tcp"),
        "water": f'{DEVICES["water"]}\ninterval = "5m"',
        "meter-new": DEVICES["meter-tcp"].replace("10.20.0.31", "10.20.0.32"),
    }
    p = plan(old, site.load(devices=devices))
    assert p.removed == ("meter-tcp",)
    assert p.added == ("meter-new",)
    assert p.restarted == ("water",)
    assert p.untouched == ("meter-1", "meter-2", "env-1", "env-2")
    assert not p.unchanged
    # The M-Bus line stays; the device attaches again with its new interval.
    assert line(p, "mbus").devices == (("water", 300.0),)
    assert p.replaced_lines == ()
    assert not p.hub_restart and not p.publisher_restart


def test_an_untouched_device_stays_untouched_when_its_neighbour_changes(site: Site) -> None:
    old = site.load()
    p = plan(old, site.load(devices=edited("meter-2", 'labels = { floor = "2" }')))
    assert p.restarted == ("meter-2",)
    assert "meter-1" in p.untouched  # same line, same settings
    assert line(p, "rs485").devices == (("meter-1", 10.0), ("meter-2", 10.0))


def test_a_disabled_device_counts_as_removed(site: Site) -> None:
    old = site.load()
    p = plan(old, site.load(devices=edited("meter-tcp", "enabled = false")))
    assert p.removed == ("meter-tcp",)
    assert "meter-tcp" not in p.devices
    assert (p.added, p.restarted) == ((), ())
    # Enabled again: it starts as a new device.
    p = plan(p.config, site.load())
    assert p.added == ("meter-tcp",) and p.removed == ()


def test_a_serial_line_whose_settings_change_restarts_its_devices(site: Site) -> None:
    old = site.load()
    serial = {**SERIAL, "rs485": 'port = "/dev/ttyUSB0"\nbaudrate = 19200'}
    p = plan(old, site.load(serial=serial))
    assert p.replaced_lines == ("rs485",)
    assert [kept.line_id for kept in p.kept_lines] == ["mbus"]
    assert p.restarted == ("meter-1", "meter-2")
    assert p.untouched == ("meter-tcp", "water", "env-1", "env-2")
    assert not p.unchanged


def test_a_line_taken_over_by_another_protocol_is_replaced(site: Site) -> None:
    old = site.load()
    devices = {
        **without("meter-1", "meter-2"),
        "heat": 'driver = "mbus"\nserial = "rs485"\naddress = 7',
    }
    p = plan(old, site.load(devices=devices))
    assert p.replaced_lines == ("rs485",)
    assert p.added == ("heat",) and p.restarted == ()  # a new device starts anyway
    assert p.removed == ("meter-1", "meter-2")


def test_a_line_nobody_uses_any_more_is_closed(site: Site) -> None:
    old = site.load()
    p = plan(old, site.load(devices=without("water")))
    assert p.removed == ("water",)
    assert p.replaced_lines == ("mbus",)
    assert p.restarted == ()


def test_a_line_stays_while_a_device_leaves_it(site: Site) -> None:
    old = site.load()
    p = plan(old, site.load(devices=without("meter-2")))
    assert p.removed == ("meter-2",)
    assert p.restarted == () and p.replaced_lines == ()
    kept = line(p, "rs485")
    assert kept.devices == (("meter-1", 10.0),)
    assert (kept.attached, kept.detached) == ((), ("meter-2",))


def test_a_line_stays_while_a_device_joins_it(site: Site) -> None:
    old = site.load()
    devices = {**DEVICES, "meter-3": DEVICES["meter-2"].replace("unit = 2", "unit = 3")}
    p = plan(old, site.load(devices=devices))
    assert p.added == ("meter-3",)
    assert p.restarted == () and p.replaced_lines == ()
    kept = line(p, "rs485")
    assert [device_id for device_id, _ in kept.devices] == ["meter-1", "meter-2", "meter-3"]
    assert (kept.attached, kept.detached) == (("meter-3",), ())


def test_a_ble_change_restarts_the_hub_and_the_ble_devices(site: Site) -> None:
    old = site.load()
    p = plan(old, site.load(ble='adapter = "hci1"'))
    assert p.hub_restart
    assert p.restarted == ("env-1", "env-2")
    assert p.untouched == ("meter-tcp", "meter-1", "meter-2", "water")
    # Without a shared hub (the factory makes none) there is nothing to restart.
    p = plan(old, site.load(ble='adapter = "hci1"'), ble_hub=False)
    assert not p.hub_restart and p.unchanged


def test_the_hub_restarts_when_ble_devices_appear_or_all_go(site: Site) -> None:
    no_ble = site.load(devices=without("env-1", "env-2"))
    one = site.load(devices=without("env-2"))
    both = site.load()

    appear = plan(no_ble, one)
    assert appear.hub_restart and appear.added == ("env-1",) and appear.restarted == ()

    another = plan(one, both)  # the hub runs already: only the new device starts
    assert not another.hub_restart and another.added == ("env-2",) and another.restarted == ()

    gone = plan(both, no_ble)
    assert gone.hub_restart and gone.removed == ("env-1", "env-2")

    assert not plan(no_ble, one, ble_hub=False).hub_restart


def test_an_mqtt_change_restarts_the_publisher_only(site: Site) -> None:
    old = site.load()
    p = plan(old, site.load(mqtt="max_batch = 400"))
    assert p.publisher_restart
    assert p.untouched == ALL and (p.removed, p.added, p.restarted) == ((), (), ())
    assert not p.unchanged


def test_restart_only_settings_keep_their_running_values(site: Site, tmp_path: Path) -> None:
    old = site.load()
    site.load(buffer='durability = "full"\nmax_size = "1MB"')
    # The gateway keys edited in place: a second one would be a duplicate key.
    site.path.write_text(
        site.path.read_text()
        .replace('id = "gw-1"', 'id = "gw-2"')
        .replace(f'data_dir = "{site.data_dir}"', f'data_dir = "{tmp_path / "other"}"')
    )
    new = load(site.path, site.factories)
    p = plan(old, new)
    assert p.restart_only == (
        KeptSetting("gateway.id", "gw-2", "gw-1"),
        KeptSetting("gateway.data_dir", tmp_path / "other", site.data_dir),
        KeptSetting("buffer.durability", "full", "normal"),
    )
    assert p.config.gateway.id == "gw-1"
    assert p.config.gateway.data_dir == site.data_dir
    assert p.config.buffer.durability == "normal"
    assert p.config.buffer.max_size == new.buffer.max_size != old.buffer.max_size  # at once
    # No device restarts. (The default mqtt.client_id follows the new gateway.id, so
    # [mqtt] differs and the publisher restarts: the loader derives it, not the plan.)
    assert (p.removed, p.added, p.restarted, p.hub_restart) == ((), (), (), False)
    # Reported at every reload while the file differs from what runs; then no more.
    assert plan(p.config, new).restart_only == p.restart_only
    assert plan(p.config, p.config).restart_only == ()


def test_data_dir_and_durability_alone_restart_nothing(site: Site, tmp_path: Path) -> None:
    old = site.load()
    site.load(buffer='durability = "full"')
    site.path.write_text(
        site.path.read_text().replace(
            f'data_dir = "{site.data_dir}"', f'data_dir = "{tmp_path / "other"}"'
        )
    )
    p = plan(old, load(site.path, site.factories))
    assert [kept.name for kept in p.restart_only] == ["gateway.data_dir", "buffer.durability"]
    assert p.unchanged and p.untouched == ALL


def test_a_log_level_change(site: Site) -> None:
    old = site.load()
    p = plan(old, site.load(gateway='log_level = "debug"'))
    assert p.log_level == "debug"
    assert p.unchanged
    assert plan(p.config, site.load(gateway='log_level = "debug"')).log_level is None
