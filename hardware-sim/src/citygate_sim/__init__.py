"""Hardware simulators for citygate: an independent oracle for its drivers.

``citygate_sim.modbus``: Modbus TCP energy meters. Run them with ``citygate-sim`` (or
``python -m citygate_sim``); see hardware-sim/README.md.
"""

__version__ = "0.1.0"
