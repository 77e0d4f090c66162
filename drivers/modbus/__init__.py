"""The ``modbus`` driver: energy meters over Modbus TCP (RTU with issue 4).

Sans-I/O parts, importable without pymodbus:

* :mod:`.decode` — register specs and the compiled per-request decoder;
* :mod:`.plan` — coalescing registers into read requests;
* :mod:`.profile` — register tables and meter profile files;
* :mod:`.config` — the driver's config keys and checks;
* :mod:`.frame` — Modbus TCP reply checks;
* :mod:`.assistant` — the byte-order assistant of ``citygate scan modbus``.

The I/O shell and the entry point (``factory``, ``read_raw``) live in
:mod:`drivers.modbus.driver`.
"""

from drivers.modbus.assistant import assistant_json, format_assistant
from drivers.modbus.config import FIELDS, ModbusConfig, configure
from drivers.modbus.decode import BlockDecoder, RegisterSpec, bench_decode, decode_value
from drivers.modbus.plan import ReadPlan, ReadRequest, plan_requests
from drivers.modbus.profile import Profile, builtin_profiles, find_profile, load_profile

__all__ = [
    "FIELDS",
    "BlockDecoder",
    "ModbusConfig",
    "Profile",
    "ReadPlan",
    "ReadRequest",
    "RegisterSpec",
    "assistant_json",
    "bench_decode",
    "builtin_profiles",
    "configure",
    "decode_value",
    "find_profile",
    "format_assistant",
    "load_profile",
    "plan_requests",
]
