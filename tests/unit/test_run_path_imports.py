"""What `citygate run` imports before it polls anything. A driver is imported when a config
uses it, and a heavy library imported at a driver's load costs every gateway that uses the
driver its memory: cryptography is ~8 MiB resident (bench e2e VmHWM 47 -> 38 MiB when the
wmbus driver stopped importing it for a Modbus-only config)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from tests.tools.imports import ROOT


def _modules_after(probe: str, tmp_path: Path) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(probe), str(tmp_path)],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


AGENT_PROBE = """
    import sys
    from pathlib import Path
    from citygate import registry
    from citygate.app import Agent
    from citygate.config import load

    folder = Path(sys.argv[1])
    config_path = folder / "gateway.toml"
    config_path.write_text(
        '[gateway]\\nid = "gw"\\ndata_dir = "' + str(folder / "data") + '"\\n\\n'
        '[mqtt]\\nurl = "mqtt://127.0.0.1:1"\\n\\n'
        '[[device]]\\nid = "m1"\\ndriver = "modbus"\\nhost = "127.0.0.1"\\nport = 1\\n'
        'unit = 1\\nprofile = "eastron-sdm630"\\n'
    )
    factories = registry.factories()
    Agent(load(config_path, factories), factories)
    print(" ".join(sys.modules))
"""


def test_a_modbus_only_agent_imports_no_other_driver_and_no_cryptography(tmp_path: Path) -> None:
    modules = _modules_after(AGENT_PROBE, tmp_path)
    assert "citygate.drivers.modbus.driver" in modules
    assert not [m for m in modules if m.startswith(("citygate.drivers.wmbus", "cryptography"))]


EVERY_DRIVER_PROBE = """
    import sys
    from citygate import registry

    loaded = registry.factories()
    assert {"modbus", "mbus", "ble", "wmbus"} <= set(loaded), sorted(loaded)
    for factory in loaded.values():
        registry.hub_factory(factory)
        registry.receiver_factory(factory)
    print(" ".join(sys.modules))
"""


def test_loading_every_driver_leaves_cryptography_to_the_first_decryption(tmp_path: Path) -> None:
    modules = _modules_after(EVERY_DRIVER_PROBE, tmp_path)
    assert "citygate.drivers.wmbus.driver" in modules
    assert not [m for m in modules if m.split(".")[0] == "cryptography"]
