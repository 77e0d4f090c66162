"""The example configs shipped in config/ are valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from citygate import registry
from citygate.config import load

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.toml")), ids=lambda p: p.name)
def test_example_config_loads(path: Path) -> None:
    config = load(path, registry.factories())
    assert config.devices
    assert not [w for w in config.warnings if "password" in w.message]
