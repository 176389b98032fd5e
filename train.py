"""Train the unified Transformer with Lightning on code shards.

    python train.py fit --config configs/shapes/model.yaml   (--help: every option)

The same command as `omni train` (its code: omni/commands/train.py).
"""

import sys

from omni.commands.train import main
from omni.errors import run_command

if __name__ == "__main__":
    sys.exit(run_command(main))
