"""`python -m qft_core.cli`: the `qft` command without its installed script."""

import sys

from qft_core.cli import main

sys.exit(main())
