"""Find drivers: the entry-point group ``citygate.drivers``.

Built-in drivers are registered by citygate's own distribution under the same
group, so a plugin package and a built-in are found the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import entry_points

from citygate.drivers.api import DriverFactory

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
