"""``python -m hwsim``: the same as the ``citygate-sim`` command."""

import sys

from hwsim.cli import main

sys.exit(main())
