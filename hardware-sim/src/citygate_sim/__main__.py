"""``python -m citygate_sim``: the same as the ``citygate-sim`` command."""

import sys

from citygate_sim.cli import main

sys.exit(main())
