"""Hardware simulators for citygate: an independent oracle for its drivers.

``hwsim.modbus``: Modbus TCP energy meters. Run them with ``citygate-sim`` (or
``python -m hwsim``); see hardware-sim/README.md.
"""

__version__ = "0.1.0"
