"""Find drivers: the entry-point group ``citygate.drivers``.

Built-in drivers are registered by citygate's own distribution under the same
group, so a plugin package and a built-in are found the same way.

A factory's optional hooks (``hub``, ``scan``) are read here only, through
:func:`hub_factory` and :func:`scan_command`: a factory without them is a factory
whose hooks are None.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points

from citygate.drivers.api import DriverFactory, Hub, HubFactory, ScanCommand, WmbusSettings

GROUP = "citygate.drivers"
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DriverEntry:
    """One entry point: its factory, or why it could not be loaded."""

    name: str
    source: str  # the distribution that ships it ("citygate" for built-ins)
    value: str  # module:attribute
    factory: DriverFactory | None
    error: str | None = None

    @property
    def builtin(self) -> bool:
        return self.source == "citygate"


def discover() -> list[DriverEntry]:
    """Load every driver entry point; a broken plugin is reported, not fatal."""
    entries: list[DriverEntry] = []
    for ep in sorted(entry_points(group=GROUP), key=lambda ep: ep.name):
        source = ep.dist.name if ep.dist is not None else "?"
        try:
            factory = ep.load()
        except Exception as exc:  # a plugin's import error must not stop the agent
            log.error("driver %s from %s cannot be loaded: %s", ep.name, source, exc)
            entries.append(
                DriverEntry(ep.name, source, ep.value, None, f"{type(exc).__name__}: {exc}")
            )
            continue
        if getattr(factory, "name", None) != ep.name:
            error = (
                f"entry point {ep.name!r} names a factory called {getattr(factory, 'name', None)!r}"
            )
            entries.append(DriverEntry(ep.name, source, ep.value, None, error))
            continue
        entries.append(DriverEntry(ep.name, source, ep.value, factory))
    return entries


def hub_factory(factory: DriverFactory | None) -> HubFactory | None:
    """The factory's ``hub`` hook; None when it has none (or there is no factory)."""
    hook: HubFactory | None = getattr(factory, "hub", None)
    return hook


def receiver_factory(factory: DriverFactory | None) -> Callable[[WmbusSettings], Hub] | None:
    """The factory's ``receiver`` hook (a ``[[wmbus]]`` receiver's hub, run by the caller and
    handed to the devices naming it); None when it has none."""
    hook: Callable[[WmbusSettings], Hub] | None = getattr(factory, "receiver", None)
    return hook


def scan_command(factory: DriverFactory) -> ScanCommand | None:
    """The factory's ``scan`` hook; None when it has none."""
    hook: ScanCommand | None = getattr(factory, "scan", None)
    return hook


def scan_commands(entries: list[DriverEntry] | None = None) -> dict[str, ScanCommand]:
    """The ``citygate scan`` subcommands the loadable drivers declare, by driver name.

    A driver whose hook fails to load is logged and left out, like a broken plugin.
    """
    commands: dict[str, ScanCommand] = {}
    for entry in discover() if entries is None else entries:
        if entry.factory is None:
            continue
        try:
            command = scan_command(entry.factory)
        except Exception as exc:  # a plugin's broken hook must not stop the other scans
            log.error("driver %s: its scan command cannot be loaded: %s", entry.name, exc)
            continue
        if command is not None:
            commands[entry.name] = command
    return commands


def factories(entries: list[DriverEntry] | None = None) -> Mapping[str, DriverFactory]:
    """The loadable drivers by name.

    Without ``entries``, a driver is imported only when it is looked up: a gateway
    pays in start-up time and memory only for the drivers its config uses.
    """
    if entries is not None:
        return {e.name: e.factory for e in entries if e.factory is not None}
    return _LazyFactories()


class _LazyFactories(Mapping[str, DriverFactory]):
    def __init__(self) -> None:
        self._points = {ep.name: ep for ep in entry_points(group=GROUP)}
        self._loaded: dict[str, DriverFactory | None] = {}

    def _load(self, name: str) -> DriverFactory | None:
        if name not in self._loaded:
            ep = self._points.get(name)
            factory: DriverFactory | None = None
            if ep is not None:
                try:
                    factory = ep.load()
                except Exception as exc:  # a plugin's import error must not stop the agent
                    source = ep.dist.name if ep.dist is not None else "?"
                    log.error("driver %s from %s cannot be loaded: %s", name, source, exc)
            self._loaded[name] = factory
        return self._loaded[name]

    def __getitem__(self, name: str) -> DriverFactory:
        factory = self._load(name)
        if factory is None:
            raise KeyError(name)
        return factory

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._load(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._points))

    def __len__(self) -> int:
        return len(self._points)
