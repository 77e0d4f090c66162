"""The ``modbus`` driver: energy meters over Modbus TCP or RTU (a shared serial line).

Sans-I/O parts (the driver depends on no Modbus library):

* :mod:`.decode` — register specs and the compiled per-request decoder;
* :mod:`.plan` — coalescing registers into read requests (and splitting them at gaps);
* :mod:`.profile` — register tables and meter profile files;
* :mod:`.config` — the driver's config keys and checks;
* :mod:`.frame` — Modbus TCP framing: requests, the MBAP stream decoder, reply checks;
* :mod:`.rtu` — Modbus RTU framing: CRC, requests, the reply framers;
* :mod:`.pdu` — the write requests (FC 05/06/15/16) and their echo checks;
* :mod:`.write` — remote writes: checks, raw value, request, read-back;
* :mod:`.assistant` — the byte-order assistant of ``citygate scan modbus``.

The I/O shell and the entry point (``factory``, ``read_raw``, ``read_raw_serial``)
live in :mod:`citygate.drivers.modbus.driver`; unit discovery on a serial line in
:mod:`citygate.drivers.modbus.scan`.
"""

from citygate.drivers.modbus.assistant import assistant_json, format_assistant
from citygate.drivers.modbus.config import FIELDS, ModbusConfig, configure
from citygate.drivers.modbus.decode import (
    BlockDecoder,
    RegisterSpec,
    bench_decode,
    decode_value,
    encode_value,
)
from citygate.drivers.modbus.plan import ReadPlan, ReadRequest, plan_requests, split_at_gaps
from citygate.drivers.modbus.profile import Profile, builtin_profiles, find_profile, load_profile
from citygate.drivers.modbus.write import plan_write, read_back

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
    "encode_value",
    "find_profile",
    "format_assistant",
    "load_profile",
    "plan_requests",
    "plan_write",
    "read_back",
    "split_at_gaps",
]
