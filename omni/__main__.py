"""`python -m omni ...`: the `omni` command (omni.commands)."""

import sys

from omni.commands import main

sys.exit(main())
